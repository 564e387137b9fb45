"""CREATE_/FILL_SECURE_ALLOCATION: secure-call parameters as hostile input (vbs-internals §2.3,
§6 A8, A9), and the legacy switches that bring the historical bugs back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vbsim.boot.chain import System
from vbsim.hw import code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import GuestTermination
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import kdp
from vbsim.nt.kernel import NtKernel
from vbsim.ntstatus import NtStatus
from vbsim.sk.layouts import HandleTable, Hvci, ObjectType
from vbsim.sk.objects import index_of
from vbsim.sk.services import allocation
from vbsim.sk.services.allocation import (
    MDL_BYTECOUNT_OFFSET,
    NORMAL_GET_PHYSICAL_PAGES,
    mdl_bytes,
)
from vbsim.sk.sscn import Service

from .kit import (
    ATTACK,
    allocation_bytes,
    allocation_fields,
    booted,
    events,
    handles,
    kernel_page,
    legacy,
    parts,
    sk_gpa,
    sk_of,
    space_of,
    trustlet_pfn,
)


def behind(sk: Any) -> bytes:
    """The 16 bytes right behind the arena: the header of HVCI's hash records (host view)."""
    return bytes(space_of(sk).ram.read(sk.hvci.hashes_gpa, 16))


def untouched(sk: Any) -> bool:
    """The records' capacity is what the loader wrote (no overflow reached it)."""
    return int.from_bytes(behind(sk)[4:8], "little") == Hvci.HASH_MAX


HARDENED = ["vbs", "vbs-hvci", "hardened"]


def _setup(system: Any, size: int = PAGE_SIZE) -> tuple[Any, Any, Any, Any, int]:
    machine, nt, vp = parts(system)
    status, handle = kdp.create_secure_allocation(nt, vp.cpu, size)
    assert status == NtStatus.SUCCESS
    return machine, nt, vp, sk_of(system), handle


def _fill(nt: NtKernel, vp: Any, handle: int, offset: int, mdl: bytes, at: int = 0) -> int:
    mdl_va, mdl_pfn = kernel_page(nt, vp, bytes(at) + mdl)
    return kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, offset, mdl_va + at, mdl_pfn)


@pytest.mark.parametrize("name", [*HARDENED, "legacy-2019"])
def test_create_and_fill(name: str) -> None:
    system = booted(name)
    machine, nt, vp, sk, handle = _setup(system, 6000)
    data = bytes(range(256)) * 20  # spans two source pages
    assert kdp.fill_secure_allocation(nt, vp.cpu, handle, 100, data[:5000]) == NtStatus.SUCCESS
    assert allocation_bytes(sk, handle, 5100)[100:] == data[:5000]
    va, _, pages = allocation_fields(sk, handle)
    assert handles(sk)[handle][0] == allocation.KIND and pages == 2
    # The buffer is SK memory: VTL0 has no access to it.
    assert machine.slat is not None
    assert machine.slat.rights(0, sk_gpa(sk, va) >> PAGE_SHIFT) == 0
    requests = [e for e in events(system, "normalcall", "request")]
    assert requests and requests[-1].detail["number"] == NORMAL_GET_PHYSICAL_PAGES


def test_create_refuses_bad_sizes() -> None:
    system = booted("hardened")
    _machine, nt, vp = parts(system)
    for size in (0, 1 << 40, (1 << 64) - 1):
        assert kdp.create_secure_allocation(nt, vp.cpu, size)[0] == NtStatus.INVALID_PARAMETER
    while (
        status := kdp.create_secure_allocation(nt, vp.cpu, 3 * PAGE_SIZE)[0]
    ) == NtStatus.SUCCESS:
        pass
    assert status == NtStatus.NO_MEMORY


@pytest.mark.parametrize("name", HARDENED)
def test_handles_are_looked_up_and_type_checked(name: str) -> None:
    system = booted(name)
    _machine, nt, vp, sk, handle = _setup(system)
    mdl_va, mdl_pfn = kdp.build_mdl(nt, vp.cpu, kdp.stage_buffer(nt, vp.cpu, b"x" * 8), 8)
    assert kdp.fill_secure_allocation_raw(nt, vp.cpu, 0x7777, 0, mdl_va, mdl_pfn) == (
        NtStatus.INVALID_HANDLE
    )
    foreign = next((h for h, (k, _) in handles(sk).items() if k != allocation.KIND), None)
    if foreign is None:  # no trustlet on this preset: retype the allocation's entry in RAM
        entry = sk.handles_gpa + HandleTable.ENTRIES + index_of(handle) * HandleTable.ENTRY
        space_of(sk).ram.write(entry + HandleTable.TYPE.offset, bytes([ObjectType.SECURE_POOL]))
        foreign = handle
    assert kdp.fill_secure_allocation_raw(nt, vp.cpu, foreign, 0, mdl_va, mdl_pfn) == (
        NtStatus.OBJECT_TYPE_MISMATCH
    )
    assert events(system, "securecall", "securecall.handle")[-1].outcome == "type-mismatch"


@pytest.mark.parametrize("name", HARDENED)
def test_pfns_must_be_vtl0_pages(name: str) -> None:
    system = booted(name)
    machine, nt, vp, sk, handle = _setup(system)
    behind_pfn = sk.hvci.hashes_gpa >> PAGE_SHIFT
    others = [behind_pfn, 0, machine.ram.pages, (1 << 64) - 1]
    if (pfn := trustlet_pfn(sk)) is not None:
        others.append(pfn)
    data_pfns = kdp.stage_buffer(nt, vp.cpu, b"y" * 64)
    for bad in others:
        # As the MDL's own page ...
        got = kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, 0, 0, bad)
        assert got == NtStatus.INVALID_PARAMETER, bad
        # ... and in its PFN array.
        assert _fill(nt, vp, handle, 0, mdl_bytes([data_pfns[0], bad], 5000)) == (
            NtStatus.INVALID_PARAMETER
        )
    assert events(system, "securecall", "securecall.pfn")[-1].outcome == "refused"
    assert allocation_bytes(sk, handle, 64) == bytes(64)


@pytest.mark.parametrize(
    ("offset", "count", "byte_offset", "size", "at", "reason"),
    [
        (0, PAGE_SIZE + 1, 0, -1, 0, "byte-count"),  # larger than the allocation
        (PAGE_SIZE - 8, 16, 0, -1, 0, "offset"),  # runs past its end
        ((1 << 64) - 8, 16, 0, -1, 0, "offset"),  # wraps
        (0, 0, 0, -1, 0, "byte-count"),
        (0, 16, PAGE_SIZE, -1, 0, "byte-offset"),
        (0, 16, PAGE_SIZE - 8, 0x30 + 8, 0, "pfn-array"),  # spans 2 pages, lists 1
        (0, 16, 0, 0x10, 0, "size"),  # Size smaller than the header
        (0, 16, 0, 0xFFFF, 0, "size"),  # Size beyond the captured page
        (0, 16, 0, 0x1000, 0x100, "size"),  # Size running off the MDL page
        (0, 16, 0, -1, PAGE_SIZE - 0x20, "header"),  # the header crosses the page
    ],
)
def test_mdl_fields_are_bounded(
    offset: int, count: int, byte_offset: int, size: int, at: int, reason: str
) -> None:
    system = booted("hardened")
    _machine, nt, vp, sk, handle = _setup(system)
    data_pfns = kdp.stage_buffer(nt, vp.cpu, b"z" * PAGE_SIZE)
    mdl = mdl_bytes(data_pfns, count, byte_offset, size=size)
    assert _fill(nt, vp, handle, offset, mdl, at) == NtStatus.INVALID_PARAMETER
    refused = [e for e in events(system, "securecall") if e.outcome == "refused"]
    assert refused[-1].detail["reason"] == reason
    assert untouched(sk)
    assert allocation_bytes(sk, handle, 16) == bytes(16)


def test_the_mdl_is_captured_before_it_is_checked() -> None:
    system = booted("hardened")
    _machine, nt, vp, _sk, handle = _setup(system)
    assert kdp.fill_secure_allocation(nt, vp.cpu, handle, 0, b"abc") == NtStatus.SUCCESS
    kinds = [
        (e.mechanism, e.outcome)
        for e in system.trace.events
        if e.kind == "securecall" and e.mechanism.startswith("securecall.")
    ]
    assert kinds.index(("securecall.capture", "captured")) < kinds.index(
        ("securecall.mdl", "validated")
    )


# -- A9: a VTL0 change between the check and the use --------------------------------------------
#: The attacker's routine for the normal-call hook (its behaviour per test: a closure over the
#: values its code would carry as immediates).
HOOK = "test.kdp_hvpt.a9-toctou"


def _toctou(system: System, mdl_va: int, swap_to: int | None) -> Callable[[], int]:
    """The attacker (K0) hooks NT's normal-call dispatch: its routine (planted in NT's code pages,
    as a debugger plants code) goes into VslpNormalCallTable's "get physical pages" slot with a
    kernel write; while the SK waits for the pages to be made resident, it enlarges ByteCount and
    (optionally) swaps the first data PFN, then lets NT's routine answer.  Returns how many times
    the routine ran (the platform's breakpoint on it)."""
    _machine, nt, vp = parts(system)
    assert nt.vsl is not None and system.nt_space is not None
    slot = nt.vsl.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES)
    original = vp.cpu.read_u64(slot)

    def hooked(cpu: Cpu, block: int) -> int:
        cpu.write_u32(mdl_va + MDL_BYTECOUNT_OFFSET, PAGE_SIZE + 16)
        if swap_to is not None:
            cpu.write_u64(mdl_va + 0x30, swap_to)
        result = cpu.call(original, block)
        return result if isinstance(result, int) else int(NtStatus.UNSUCCESSFUL)

    with code.linking():  # the test links its hook as a debugger would, after boot
        code.register(HOOK, hooked, breakpoint=True)
    vp.cpu.write_u64(slot, system.nt_space.install(HOOK))
    since = system.trace.executions[-1].seq if system.trace.executions else 0
    return lambda: len(system.trace.ran(HOOK, since))


def _overflow_source(nt: NtKernel, vp: Any) -> list[int]:
    return kdp.stage_buffer(nt, vp.cpu, b"\x41" * (2 * PAGE_SIZE))


@pytest.mark.parametrize("name", HARDENED)
def test_a9_toctou_defeated_by_capture(name: str) -> None:
    system = booted(name)
    _machine, nt, vp, sk, handle = _setup(system)
    before = behind(sk)
    pfns = _overflow_source(nt, vp)
    mdl_va, mdl_pfn = kernel_page(nt, vp, mdl_bytes(pfns, 64))
    runs = _toctou(system, mdl_va, None)
    assert (
        kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, 0, mdl_va, mdl_pfn) == NtStatus.SUCCESS
    )
    assert runs() == 1  # the attacker's code really ran between check and use
    assert allocation_bytes(sk, handle, 65) == b"\x41" * 64 + b"\0"
    assert behind(sk) == before and untouched(sk)


def test_a9_double_fetch_overflows_into_hvci_records() -> None:
    system = legacy("hardened", securecall_double_fetch=True)
    _machine, nt, vp, sk, handle = _setup(system)
    assert untouched(sk)
    pfns = _overflow_source(nt, vp)
    mdl_va, mdl_pfn = kernel_page(nt, vp, mdl_bytes(pfns, 64))
    _toctou(system, mdl_va, None)
    assert (
        kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, 0, mdl_va, mdl_pfn) == NtStatus.SUCCESS
    )
    # The 16 bytes past the allocation: the header of HVCI's validated-hash records.
    assert behind(sk) == ATTACK.to_bytes(8, "little") * 2
    assert events(system, "securecall", "securecall.legacy")[-1].outcome == "refetched"


def test_a9_double_fetch_pfn_swap_reads_sk_memory() -> None:
    system = legacy("vbs", securecall_double_fetch=True)
    _machine, nt, vp, sk, handle = _setup(system)
    secret = behind(sk)
    behind_pfn = sk.hvci.hashes_gpa >> PAGE_SHIFT
    pfns = _overflow_source(nt, vp)
    mdl_va, mdl_pfn = kernel_page(nt, vp, mdl_bytes(pfns, 16))
    _toctou(system, mdl_va, behind_pfn)
    status = kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, 0, mdl_va, mdl_pfn)
    assert status == NtStatus.SUCCESS
    assert allocation_bytes(sk, handle, 16) == secret  # SK bytes the attacker named


# -- A8: the CVE-2020-0917 class, back under the legacy switch ----------------------------------
@pytest.mark.parametrize("system_factory", [
    lambda: booted("legacy-2019"),
    lambda: legacy("hardened", unchecked_securecall_params=True),
])  # fmt: skip
def test_a8_unchecked_bytecount_overwrites_adjacent_sk_data(
    system_factory: Callable[[], Any],
) -> None:
    system = system_factory()
    _machine, nt, vp, sk, handle = _setup(system)
    pfns = _overflow_source(nt, vp)
    status = _fill(nt, vp, handle, PAGE_SIZE - 8, mdl_bytes(pfns, 24))
    assert status == NtStatus.SUCCESS
    assert behind(sk) == ATTACK.to_bytes(8, "little") * 2
    outcomes = [e.outcome for e in events(system, "securecall", "securecall.legacy")]
    assert "unchecked" in outcomes  # (and "refetched" where the double-fetch switch is on too)


def test_a8_same_call_refused_when_checked() -> None:
    system = booted("hardened")
    _machine, nt, vp, sk, handle = _setup(system)
    pfns = _overflow_source(nt, vp)
    assert _fill(nt, vp, handle, PAGE_SIZE - 8, mdl_bytes(pfns, 24)) == NtStatus.INVALID_PARAMETER
    assert untouched(sk)


def test_a8_unchecked_pfn_copies_sk_memory() -> None:
    system = booted("legacy-2019")
    _machine, nt, vp, sk, handle = _setup(system)
    behind_pfn = sk.hvci.hashes_gpa >> PAGE_SHIFT
    secret = behind(sk)
    assert _fill(nt, vp, handle, 0, mdl_bytes([behind_pfn], 16)) == NtStatus.SUCCESS
    assert allocation_bytes(sk, handle, 16) == secret


def test_a8_unchecked_huge_bytecount_ends_in_a_guest_event() -> None:
    """With no bound, the copy runs until the SK faults on an unmapped page: a Secure Kernel
    bugcheck (a guest event), never a Python error."""
    system = booted("legacy-2019")
    _machine, nt, vp, _sk, handle = _setup(system)
    pfns = kdp.stage_buffer(nt, vp.cpu, b"\x42" * PAGE_SIZE) * 400
    with pytest.raises(GuestTermination):
        _fill(nt, vp, handle, 0, mdl_bytes(pfns, 0xFFFF_FFFF))


def test_build_numbers_differ_but_services_match() -> None:
    for name, expected in (("hardened", 23), ("legacy-2019", 22)):
        system = booted(name)
        _machine, nt, _vp = parts(system)
        assert nt.vsl is not None
        assert nt.vsl.table.number[Service.FILL_SECURE_ALLOCATION] == expected
