"""Fuzz targets: every input surface of the model, as ``bytes -> None`` functions.

Each target swallows exactly the failures its surface may legitimately report and lets anything
else escape — an escaping exception is a finding (a crash, in fuzzer terms):

- ``image`` — the PE/``.tPolicy``/Authenticode parser and verifier: ``parse_image`` (may raise
  :class:`~vbsim.image.ImageFormatError`), ``verify_image`` (never raises on bad input), SKCI's
  trustlet admission and HVCI's image layout (neither may raise).
- ``policy`` — the policy-file loader: the bytes written to a temporary file and
  :func:`vbsim.policy.load` (may raise :class:`~vbsim.policy.PolicyError`), and ``from_dict`` over
  whatever ``tomllib`` makes of them.
- ``hypercall`` — the hypercall input decoder (:mod:`vbsim.hv.abi`) and the dispatcher, through a
  bare partition (no NT, no SK): the input value, parameter registers, input page and XMM
  registers come from the fuzz input, issued from VTL0 or VTL1.  Guest terminations are allowed.
- ``securecall`` — ``SecureCallArgs.unpack`` and the Secure Kernel's dispatch on a booted ``vbs``
  machine, *with the isolation monitor attached*: the block comes from the input (mostly shaped:
  a known operation type and service number, fields drawn from handles, VTL1 and VTL0 PFNs and
  raw values), and the remaining bytes answer the SK's normal calls in NT's place (hostile
  replies).  Guest terminations are allowed (the machine is rebooted); an
  :class:`~vbsim.invariants.InvariantViolation` is a finding.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbsim.hw.faults import GuestTermination

MASK64 = (1 << 64) - 1


@dataclass
class Target:
    name: str
    summary: str
    #: fuzz one input (raises only on a finding)
    one: Callable[[bytes], None]
    #: seed inputs (a corpus to start from)
    seeds: Callable[[], list[bytes]]
    #: inputs larger than this are cut (the surface's own limit, or a speed guard)
    max_len: int = 4096
    close: Callable[[], None] = field(default=lambda: None)


class Reader:
    """Consumes a fuzz input as a stream of small decisions (zeros once it runs out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        value = self.data[self.at]
        self.at += 1
        return value

    def take(self, count: int) -> bytes:
        chunk = self.data[self.at : self.at + count]
        self.at += len(chunk)
        return chunk.ljust(count, b"\0")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def rest(self) -> bytes:
        chunk = self.data[self.at :]
        self.at = len(self.data)
        return chunk


# -- image -----------------------------------------------------------------------------------------
def _image_one(data: bytes) -> None:
    from vbsim.image import (
        ImageFormatError,
        ImageKind,
        SigningRequirement,
        model_pki,
        parse_image,
        requirement_for,
        verify_image,
    )
    from vbsim.image.anchors import Anchor
    from vbsim.sk.ium.skci import admit
    from vbsim.sk.services.hvci import image_layout

    try:
        parsed = parse_image(data)
    except ImageFormatError:
        parsed = None
    trust = model_pki().trust_store()
    verify_image(data, trust, requirement=requirement_for(ImageKind.DRIVER), parsed=parsed)
    if parsed is not None:
        image_layout(data, parsed)
        anchor = Anchor(trust, requirement_for(ImageKind.TRUSTLET) or SigningRequirement())
        admit(data, parsed.policy.application_id if parsed.policy else 1, None, anchor=anchor)


def _image_seeds() -> list[bytes]:
    from vbsim.boot.disk import component_image, driver_store
    from vbsim.invariants.attacker import trustlet_image

    seeds = [trustlet_image("lsaiso"), trustlet_image("vmsp")]
    seeds.extend(driver_store().values())
    seeds.append(component_image("securekernel.exe", "10.0.26100.2314", 7, False))
    return seeds


# -- policy ----------------------------------------------------------------------------------------
_POLICY_DIR: list[str] = []


def _policy_one(data: bytes) -> None:
    import tomllib

    from vbsim.policy import PolicyError, from_dict, load

    if not _POLICY_DIR:
        _POLICY_DIR.append(tempfile.mkdtemp(prefix="vbsim-fuzz-policy-"))
    path = Path(_POLICY_DIR[0]) / "policy.toml"
    path.write_bytes(data)
    with contextlib.suppress(PolicyError):
        load(path)
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return
    with contextlib.suppress(PolicyError):
        from_dict(parsed)


def _policy_close() -> None:
    if _POLICY_DIR:
        directory = Path(_POLICY_DIR.pop())
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


def _policy_seeds() -> list[bytes]:
    return [
        b'preset = "hardened"\n',
        b'preset = "vbs"\nhvci = true\nbuild = "A"\nram_mib = 64\nvps = 1\n',
        b'name = "x"\n[components."securekernel.exe"]\nversion = "10.0.1.2"\nsvn = 3\n'
        b'tampered = true\n[revocation."LsaIso.exe"]\nmin_version = "10.0"\nmin_svn = 2\n'
        b"[legacy]\nunchecked_securecall_params = true\n",
        b'preset = "legacy-2019"\n[legacy]\nsecurecall_double_fetch = false\n',
    ]


# -- hypercall -------------------------------------------------------------------------------------
@dataclass
class _BareRig:
    machine: Any
    kernel: Any
    monitor: Any
    runs: int = 0


_BARE: list[_BareRig] = []
#: Rebuild the bare partition this often (and after every termination): inputs change its state.
_BARE_RUNS = 200


def _bare() -> _BareRig:
    from vbsim.guest.bare import boot_bare
    from vbsim.machine import Machine
    from vbsim.trace import Trace

    if _BARE and _BARE[0].runs < _BARE_RUNS:
        return _BARE[0]
    _bare_close()
    machine = Machine(ram_size=16 << 20, vps=2, trace=Trace())
    kernel, monitor, failures = boot_bare(machine)
    if failures:
        raise RuntimeError(f"bare partition did not boot: {failures}")
    _BARE.append(_BareRig(machine, kernel, monitor))
    return _BARE[0]


def _bare_close() -> None:
    from vbsim.invariants.teardown import release

    while _BARE:
        release(_BARE.pop().machine)


def _hypercall_one(data: bytes) -> None:
    from vbsim.hv import abi
    from vbsim.hv.defs import HvCallCode

    r = Reader(data)
    control = r.u64()
    # The decoder alone, on the raw value (and on an input value with the top bits set).
    call = abi.decode_input(control)
    abi.check_input(call, bool(r.byte() & 1))
    abi.result_value(r.byte() | r.byte() << 8, r.byte())
    abi.decode_input_vtl(r.byte(), r.byte() & 1)
    # Then the dispatcher, as a guest issues it.
    rig = _bare()
    rig.runs += 1
    vp = rig.machine.vps[r.byte() % len(rig.machine.vps)]
    shape = r.byte()
    if shape < 192:  # a known call code, the other control bits from the input
        codes = list(HvCallCode)
        control = (control & ~0xFFFF) | int(codes[shape % len(codes)])
    pages = rig.kernel.params if shape & 1 else rig.monitor.params
    choice = r.byte()
    rdx = pages.in_gpa if choice < 200 else r.u64()
    r8 = pages.out_gpa if r.byte() < 200 else r.u64()
    vtl = 1 if r.byte() >= 128 and vp.vtl_enabled(1) else 0
    block = r.take(r.byte() * 8)
    xmm = r.take(96)
    previous = vp.vtl
    try:
        vp.host_entry(vtl)  # the harness acts as that VTL's kernel (host side, traced)
        if block and vp.ram.backed(rdx, len(block)) and rdx in (pages.in_gpa,):
            vp.ram.write(rdx, block)
        for i in range(6):
            vp.xmm[i] = int.from_bytes(xmm[16 * i : 16 * i + 16], "little")
        vp.rcx, vp.rdx, vp.r8 = control & MASK64, rdx, r8
        vp.vmcall()
    except GuestTermination:
        rig.runs = _BARE_RUNS  # rebuild before the next input
    finally:
        if vp.vtl_enabled(previous):
            vp.host_entry(previous)


def _hypercall_seeds() -> list[bytes]:
    seeds = []
    for code in (0x0C, 0x0D, 0x0F, 0x11, 0x12, 0x50, 0x51, 0x52, 0x99, 0x0002):
        control = struct.pack("<Q", code | (1 << 32))
        seeds.append(control + bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + bytes(16) + bytes(96))
    return seeds


# -- securecall ------------------------------------------------------------------------------------
@dataclass
class _SecureRig:
    session: Any


_SECURE: list[_SecureRig] = []


def _secure() -> _SecureRig:
    from vbsim.invariants.attacker import Session

    if _SECURE and _SECURE[0].session.healthy:
        return _SECURE[0]
    _secure_close()
    _SECURE.append(_SecureRig(Session("vbs", monitor=True, budget=4)))
    return _SECURE[0]


def _secure_close() -> None:
    while _SECURE:
        _SECURE.pop().session.close()


def _securecall_one(data: bytes) -> None:
    from vbsim.guest import hvcall
    from vbsim.invariants.attacker import PFN_POOLS, Ref
    from vbsim.sk import callargs
    from vbsim.sk.callargs import ARGS, SecureCallArgs

    rig = _secure()
    session = rig.session
    nt, vp = session.nt, session.vp
    r = Reader(data)
    mode = r.byte()
    if mode < 64:  # the raw block, exactly as the bytes say
        args = SecureCallArgs.unpack(r.take(ARGS.size))
    else:
        ops = (2, 2, 2, 2, 2, 2, 3, 4, 0x81, r.byte())
        op = ops[r.byte() % len(ops)]
        services = sorted(nt.vsl.table.number.values()) if nt.vsl is not None else [0]
        selector = r.byte()
        code = services[selector % len(services)] if selector < 240 else r.u64() & 0xFFFF
        fields: list[int] = []
        for _ in range(r.byte() % 13):
            kind = r.byte()
            index, offset = r.byte(), r.byte() << 4
            if kind < 40:
                fields.append(session.resolve(Ref("handle", "", index)))
            elif kind < 140:
                pool = PFN_POOLS[index % len(PFN_POOLS)]
                space = ("pfn", "gpa", "dm")[kind % 3]
                fields.append(session.resolve(Ref(space, pool, r.byte(), offset)))
            elif kind < 200:
                fields.append(r.byte() << (8 * (kind % 4)))
            else:
                fields.append(r.u64())
        cookie = session.resolve(Ref("cookie", "", r.byte())) if r.byte() & 1 else 0
        args = SecureCallArgs(op, code, cookie, fields)
    replies = r.rest()
    monitor = session.monitor
    monitor.begin_step(f"fuzz securecall op={args.op} code={args.code}")
    stop: GuestTermination | None = None
    try:
        request = args
        for _ in range(16):
            callargs.to_registers(vp, request.pack())
            hvcall.vtl_call(vp)
            reply = SecureCallArgs.unpack(callargs.from_registers(vp))
            if reply.op != callargs.OP_NORMAL_CALL:
                break
            if replies:  # a hostile NT answers
                chunk, replies = replies[:104], replies[104:]
                outputs = list(struct.unpack("<13Q", chunk.ljust(104, b"\0")))[1:]
            else:  # NT's own dispatcher answers (VslpNormalCallTable, as RAM holds it now)
                assert nt.vsl is not None
                outputs = nt.vsl.dispatch(vp.cpu, reply).fields
            request = SecureCallArgs(callargs.OP_NORMAL_REPLY, args.code, args.cookie, outputs)
    except GuestTermination as termination:
        stop = termination
        session.dead = str(termination)
    monitor.end_step(stop)  # (any other exception is the finding itself: no checks after it)


def _securecall_seeds() -> list[bytes]:
    raw = struct.pack("<BxHI12Q", 2, 190, 0, *([0] * 12))
    seeds = [bytes([0]) + raw]
    for kinds in (b"", b"\x00\x01\x01", b"\x50\x02\x10\x00\x20\x30\x00\x00"):
        seeds.append(bytes([200, 0, 5, 3]) + kinds)
    return seeds


def _close_all() -> None:
    _bare_close()
    _secure_close()


@functools.cache
def targets() -> dict[str, Target]:
    return {
        "image": Target(
            "image",
            "PE/.tPolicy/Authenticode: parse_image, verify_image, SKCI admission, HVCI layout",
            _image_one,
            _image_seeds,
            max_len=64 * 1024,
        ),
        "policy": Target(
            "policy",
            "policy files: vbsim.policy.load on the bytes, from_dict over tomllib",
            _policy_one,
            _policy_seeds,
            max_len=4096,
            close=_policy_close,
        ),
        "hypercall": Target(
            "hypercall",
            "hypercall input decoding (vbsim.hv.abi) and dispatch on a bare partition",
            _hypercall_one,
            _hypercall_seeds,
            max_len=1024,
            close=_bare_close,
        ),
        "securecall": Target(
            "securecall",
            "SecureCallArgs.unpack and SK dispatch on a booted vbs machine, monitor attached",
            _securecall_one,
            _securecall_seeds,
            max_len=1024,
            close=_secure_close,
        ),
    }


def get(name: str) -> Target:
    table = targets()
    if name not in table:
        raise KeyError(f"unknown fuzz target {name!r} (known: {', '.join(table)})")
    return table[name]


def corpus_dir(name: str) -> Path:
    """Where a target's corpus lives (under the vbsim data directory, or VBSIM_FUZZ_DIR)."""
    base = os.environ.get("VBSIM_FUZZ_DIR")
    if base:
        return Path(base) / name
    from vbsim.image import data_dir

    return Path(data_dir()) / "fuzz" / name
