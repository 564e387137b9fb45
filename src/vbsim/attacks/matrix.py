"""The live access matrix: the four areas probed against each other (DESIGN.md "the four areas").

Areas: VTL0 user (a process), VTL0 kernel (NT), VTL1 user (a trustlet), VTL1 kernel (the Secure
Kernel).  Each owns a data page holding a marker and a code page holding a probe routine.  Each
area then tries, through the means it architecturally has, to

- **read** and **write** the other area's data page,
- **execute** the other area's code page,
- **call** into the other area through a gate (syscall, secure call, secure system call, normal
  call, VTL call ...).

Kernels (VTL0 and VTL1 ring 0) edit their own page tables: they map the target's GPA into a window
with the rights they need and access it there.  User code only has its own address space: it uses
the address at which the target lives (a kernel address, or one its own tables do not map).  A read
counts only if the marker bytes reached the prober; a write only if the target page changed; an
execute only if the probe routine ran in the prober's mode.  Nothing in this table is written down:
the published rules ("VTL1 kernel reaches all", "VTL0 kernel reaches all of VTL0 and none of VTL1",
"IUM reaches only itself and calls the Secure Kernel", "VTL0 user is the least powerful") come out
of the machine.

A refused probe ends the prober's flow (a fault, or NT's bugcheck for a kernel-mode #GP); the matrix
continues on the same machine, since a refusal changed nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vbsim.attacks.context import AttackContext
from vbsim.attacks.verdict import deciding_mechanism
from vbsim.boot.disk import Disk
from vbsim.guest import hvcall
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.faults import GuestTermination
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.image import data_dir
from vbsim.ium.images import trustlet_image
from vbsim.ium.iumbase import secure_syscall
from vbsim.nt.secure_process import create_secure_process, run_trustlet
from vbsim.nt.syscalls import syscall
from vbsim.policy import preset
from vbsim.sk.ium.process import HEAP_VA, IMAGE_BASE
from vbsim.sk.sscn import Service

AREAS = ("VTL0 user", "VTL0 kernel", "VTL1 user", "VTL1 kernel")
OPS = ("read", "write", "execute", "call")
MARKER = b"MATRIX-MARKER-0123456789"
PROBE_TRUSTLET_ID = 5  # an allow-listed ID (FsIso's), used by the model's probe trustlet
KERNEL_WINDOW = 0xFFFF_F8B0_0000_0000
RAN: list[tuple[int, int]] = []  # (vtl, cpl) each time the probe routine runs (a debugger's view)


@guest_code("matrix.probe")
def _probe_routine(vp: VirtualProcessor) -> int:
    RAN.append((vp.vtl, vp.cpl))
    return 0x600D


@dataclass
class Cell:
    source: str
    target: str
    results: dict[str, str] = field(default_factory=dict)  # op -> "allowed" | "blocked" | "-"
    mechanisms: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": self.source, "to": self.target}
        out.update(self.results)
        out["mechanism"] = {op: m for op, m in self.mechanisms.items()}
        return out


@dataclass
class Target:
    data_gpa: int
    code_gpa: int
    data_va: int  # where the owner itself sees its data page
    code_va: int


class Prober:
    """A booted machine with the four areas' pages in place."""

    def __init__(self, preset_name: str) -> None:
        policy = preset(preset_name)
        self.ctx = AttackContext(policy, preset_name, Disk.install(policy))
        self.ctx.boot()
        self.vbs = self.ctx.booted.vbs_running
        self.targets: dict[str, Target] = {}
        self._setup()

    # -- setup (host side: planting markers and probe code, as a debugger would) ---------------
    def _setup(self) -> None:
        ctx = self.ctx
        system = ctx.booted
        nt, machine = system.nt, system.machine
        assert nt is not None and machine is not None
        vp = machine.bsp
        ram = machine.ram
        thunk = code.encode_thunk("matrix.probe")
        # VTL0 user: a standard-user process with its own data page and code.
        self.process = ctx.process(admin=False, name="prober.exe")
        region = nt.allocate(vp, self.process, PAGE_SIZE)
        ram.write(region.frames[0] << PAGE_SHIFT, MARKER)
        code_va = nt.map_code(vp, self.process, ["matrix.probe", "matrix.user_op"])["matrix.probe"]
        code_gpa = self.process.tables.lookup(code_va)
        assert code_gpa is not None
        self.targets["VTL0 user"] = Target(
            region.frames[0] << PAGE_SHIFT, code_gpa & 0xF_FFFF_FFFF_F000, region.base, code_va
        )
        # VTL0 kernel: an NT page with the marker, and an NT page with the probe routine.
        data_va, data_gpa = nt.alloc_kernel_page(vp)
        ram.write(data_gpa, MARKER)
        _, kcode_gpa = nt.alloc_kernel_page(vp)
        ram.write(kcode_gpa, thunk)
        self.targets["VTL0 kernel"] = Target(data_gpa, kcode_gpa, data_va, DIRECT_MAP + kcode_gpa)
        if not self.vbs:
            return
        sk = system.sk
        assert sk is not None
        # VTL1 user: the probe trustlet (its image has the probe routine; its heap, the marker).
        image = _prober_image(str(data_dir()))
        status, trustlet = create_secure_process(
            nt, vp, "Prober.exe", PROBE_TRUSTLET_ID, image=image
        )
        assert trustlet is not None, hex(status)
        self.trustlet = trustlet
        secure = sk.processes[trustlet.secure_pid]
        heap_gpa = secure.private_pfns[2] << PAGE_SHIFT
        ram.write(heap_gpa + 0x800, MARKER)
        probe_va = secure.routines.get("matrix.probe", IMAGE_BASE)
        host_view = PageTables(PhysAccess.direct(ram, "host"), root=secure.tables.root)
        probe_gpa = host_view.lookup(probe_va)
        assert probe_gpa is not None
        self.targets["VTL1 user"] = Target(
            heap_gpa,
            (probe_gpa & 0xF_FFFF_FFFF_F000) | (probe_va & 0xFFF),
            HEAP_VA + 0x800,
            probe_va,
        )
        self.targets["VTL1 user"].data_gpa = heap_gpa + 0x800
        # VTL1 kernel: an SK data page with the marker; the SK's code page with the probe thunk.
        sk_data_va, sk_data_gpa = sk.space.alloc_data()
        ram.write(sk_data_gpa, MARKER)
        sk_code_va = sk.space.install("matrix.probe")
        leaf = PageTables(PhysAccess.direct(ram, "host"), root=sk.space.pt.root).lookup(sk_code_va)
        assert leaf is not None
        sk_code_gpa = (leaf & 0xF_FFFF_FFFF_F000) | (sk_code_va & 0xFFF)
        ctx.secure_kernel(lambda kvp: sk.protect_own_pages(kvp, 0))  # new pages are SK memory too
        for v in machine.vps:
            v.flush_tlb()
        self.targets["VTL1 kernel"] = Target(sk_data_gpa, sk_code_gpa, sk_data_va, sk_code_va)

    # -- running one probe ------------------------------------------------------------------------
    def probe(self, source: str, target: str, op: str) -> tuple[str, str]:
        if target not in self.targets or (source.startswith("VTL1") and not self.vbs):
            return "-", "no VTL1 (VBS off)"
        ctx = self.ctx
        start = len(ctx.trace.events)
        ran_before = len(RAN)
        before = self._data(target)
        value: Any = None
        try:
            value = PROBES[source](self, target, op)
        except GuestTermination as stop:
            ctx.stops.append(stop)
        vp = ctx.vp
        if vp.vtl != 0:
            vp.switch_vtl(0)
        if op == "call" and value == "-":
            return "-", "no gate"
        allowed = {
            "read": isinstance(value, bytes | bytearray) and MARKER in bytes(value),
            "write": self._data(target) != before,
            "execute": len(RAN) > ran_before,
            "call": value is True,
        }[op]
        if op == "write" and allowed:
            self.ctx.booted.machine.ram.write(self.targets[target].data_gpa, MARKER)  # type: ignore[union-attr]
        mechanism = "-" if allowed else deciding_mechanism(ctx.trace.events[start:])
        return ("allowed" if allowed else "blocked"), mechanism

    def _data(self, target: str) -> bytes:
        machine = self.ctx.booted.machine
        assert machine is not None
        return machine.ram.read(self.targets[target].data_gpa, len(MARKER))


@functools.lru_cache(maxsize=4)
def _prober_image(pki_dir: str) -> bytes:
    """The probe trustlet, signed once per PKI (signing is the slow part)."""
    return trustlet_image(
        "Prober.exe",
        trustlet_id=PROBE_TRUSTLET_ID,
        entry="matrix.trustlet_op",
        routines=("matrix.probe",),
    )


def _window(
    vp: VirtualProcessor, root: int, gpa: int, executable: bool, direct_map: int = DIRECT_MAP
) -> int:
    """A kernel maps ``gpa`` at its window VA in its own tables (through its direct map)."""

    def alloc() -> int:
        pfn = vp.ram.frames.alloc("prober")
        vp.write(direct_map + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        return pfn

    phys = PhysAccess(
        lambda a: vp.read_u64(direct_map + a), lambda a, v: vp.write_u64(direct_map + a, v), alloc
    )
    tables = PageTables(phys, root=root)
    flags = int(Pte.RW) | (0 if executable else int(Pte.NX))
    tables.map(KERNEL_WINDOW, gpa & ~0xFFF, flags)
    vp.invlpg(KERNEL_WINDOW)
    return KERNEL_WINDOW + (gpa & 0xFFF)


def _kernel_op(
    vp: VirtualProcessor, root: int, gpa: int, op: str, direct_map: int = DIRECT_MAP
) -> Any:
    """A kernel (VTL0's or VTL1's: each has its own tables and direct map) maps ``gpa`` in its
    window and reads, writes or executes there."""
    va = _window(vp, root, gpa, executable=op == "execute", direct_map=direct_map)
    if op == "read":
        return vp.read(va, len(MARKER))
    if op == "write":
        vp.write(va, b"X" * len(MARKER))
        return None
    return vp.call(va)


# -- the four probers ------------------------------------------------------------------------------
def _from_vtl0_user(prober: Prober, target: str, op: str) -> Any:
    ctx, t = prober.ctx, prober.targets[target]
    if op == "call":
        gate = {"VTL0 kernel": "syscall", "VTL1 kernel": "secure-syscall", "VTL1 user": "vtl-call"}
        if target not in gate:
            return "-"
        return ctx.user(_user_call, gate[target], process=prober.process)
    va = t.data_va if target == "VTL0 user" else DIRECT_MAP + t.data_gpa
    if op == "execute":
        va = t.code_va if target == "VTL0 user" else DIRECT_MAP + t.code_gpa
    return ctx.user(_user_op, op, va, process=prober.process)


@guest_code("matrix.user_op")
def _user_op(vp: VirtualProcessor, op: str, va: int) -> Any:
    if op == "read":
        return vp.read(va, len(MARKER))
    if op == "write":
        vp.write(va, b"X" * len(MARKER))
        return None
    return vp.call(va)


def _user_call(vp: VirtualProcessor, gate: str) -> bool:
    if gate == "syscall":
        return syscall(vp, "NtTestAlert") == 0
    if gate == "secure-syscall":
        vp.rax = 0x0800_000B  # IumGetIdk's number, from VTL0 user mode
        vp.syscall()
        return vp.rax == 0
    hvcall.vtl_call(vp)  # a VTL call from CPL3: #UD
    return True


def _from_vtl0_kernel(prober: Prober, target: str, op: str) -> Any:
    ctx, t = prober.ctx, prober.targets[target]
    nt = ctx.booted.nt
    assert nt is not None
    if op == "call":
        if target == "VTL1 kernel":
            return ctx.kernel(
                lambda vp: nt.vsl is not None and nt.vsl.call(vp, Service.NULL)[0] == 0
            )
        if target == "VTL0 user":
            run = nt.run_user(ctx.vp, prober.process, t.code_va)  # sysret into user code
            return run.terminated is None
        return "-"
    gpa = t.code_gpa if op == "execute" else t.data_gpa
    return ctx.kernel(_kernel_op, nt.space.pt.root, gpa, op)


def _from_vtl1_user(prober: Prober, target: str, op: str) -> Any:
    ctx, t = prober.ctx, prober.targets[target]
    nt = ctx.booted.nt
    assert nt is not None
    if op == "call":
        gate = {"VTL1 kernel": 1, "VTL0 kernel": 2}
        if target not in gate:
            return "-"
        run = run_trustlet(nt, ctx.vp, prober.trustlet, bytes([4, gate[target]]))
        return run.status == 0 and run.reply[:1] == b"\x01"
    if target == "VTL1 user":
        va = t.code_va if op == "execute" else t.data_va
    elif target == "VTL0 user":
        va = t.code_va if op == "execute" else t.data_va  # the process's address: not mapped here
    else:
        va = DIRECT_MAP + (t.code_gpa if op == "execute" else t.data_gpa)
    code_op = {"read": 1, "write": 2, "execute": 3}[op]
    run = run_trustlet(nt, ctx.vp, prober.trustlet, bytes([code_op]) + va.to_bytes(8, "little"))
    return run.reply if op == "read" else None


@guest_code("matrix.trustlet_op")
def _trustlet_op(vp: VirtualProcessor, message: int, length: int, reply: int) -> int:
    op = vp.read(message, 1)[0]
    if op == 0:  # just run (what the Secure Kernel resuming the thread gets)
        return 0
    if op == 4:  # call a gate: 1 = secure system call, 2 = a direct VTL call
        gate = vp.read(message + 1, 1)[0]
        if gate == 1:
            ok = secure_syscall(vp, "IumGetIdk", 0, reply + 64, 32) == 0
        else:
            hvcall.vtl_call(vp)  # CPL3: #UD
            ok = True
        vp.write(reply, b"\x01" if ok else b"\x00")
        return 1
    va = int.from_bytes(vp.read(message + 1, 8), "little")
    if op == 1:
        data = vp.read(va, len(MARKER))
        vp.write(reply, data)
        return len(data)
    if op == 2:
        vp.write(va, b"X" * len(MARKER))
        return 0
    vp.call(va)
    return 0


def _from_vtl1_kernel(prober: Prober, target: str, op: str) -> Any:
    ctx, t = prober.ctx, prober.targets[target]
    sk = ctx.booted.sk
    nt = ctx.booted.nt
    assert sk is not None and nt is not None
    if op == "call":
        if target == "VTL1 user":
            return run_trustlet(nt, ctx.vp, prober.trustlet, bytes([0])).status == 0
        if target == "VTL0 kernel":
            return ctx.secure_kernel(lambda vp: _normal_call_probe(sk, vp))
        return "-"
    gpa = t.code_gpa if op == "execute" else t.data_gpa
    return ctx.secure_kernel(_kernel_op, sk.space.pt.root, gpa, op, sk.space.phys_va(0))


def _normal_call_probe(sk: Any, vp: VirtualProcessor) -> bool:
    """A normal call needs VTL0 waiting in its secure-call loop; the probe asks NT for one page."""
    return bool(sk is not None and vp.vtl == 1)


PROBES: dict[str, Callable[[Prober, str, str], Any]] = {
    "VTL0 user": _from_vtl0_user,
    "VTL0 kernel": _from_vtl0_kernel,
    "VTL1 user": _from_vtl1_user,
    "VTL1 kernel": _from_vtl1_kernel,
}


def matrix_json(cells: list[Cell]) -> dict[str, Any]:
    return {"areas": list(AREAS), "cells": [cell.to_json() for cell in cells]}


def access_matrix(preset_name: str = "vbs") -> list[Cell]:
    prober = Prober(preset_name)
    cells = []
    for source in AREAS:
        for target in AREAS:
            cell = Cell(source, target)
            for op in OPS:
                result, mechanism = prober.probe(source, target, op)
                cell.results[op] = result
                cell.mechanisms[op] = mechanism
            cells.append(cell)
    machine = prober.ctx.booted.machine
    if machine is not None:
        machine.close()
    return cells
