"""The live-dump secure services (vbsim.sk.services.livedump): numbers per build, the checks the
fixed Secure Kernel makes on LIVEDUMP_ADD_BUFFER, and what the unfixed one does without them."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System, boot
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import kdp as ntkdp
from vbsim.nt.layouts import mdl_bytes
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.policy import preset
from vbsim.sk.layouts import LiveDump
from vbsim.sk.sscn import Service, ServiceTable


def _boot(name: str) -> System:
    system = boot(preset(name))
    assert system.booted and system.nt is not None and system.nt.vsl is not None
    return system


def _call(system: System, service: Service, *fields: int) -> tuple[int, list[int]]:
    assert system.nt is not None and system.nt.vsl is not None and system.machine is not None
    return system.nt.vsl.call(system.machine.bsp.cpu, service, *fields)


def _mdl(system: System, pfns: list[int], byte_count: int, start_va: int = 0) -> tuple[int, int]:
    """An MDL in a fresh VTL0 kernel page: (its VA, its PFN)."""
    assert system.nt is not None and system.machine is not None
    cpu = system.machine.bsp.cpu
    va, gpa = system.nt.alloc_kernel_page(cpu)
    cpu.write(va, mdl_bytes(pfns, byte_count, 0, start_va))
    return va, gpa >> PAGE_SHIFT


def _buffer(system: System) -> int:
    assert system.nt is not None and system.machine is not None
    return system.nt.alloc_kernel_page(system.machine.bsp.cpu)[1] >> PAGE_SHIFT


def _sk_pfn(system: System) -> int:
    assert system.sk_space is not None
    return sorted(system.sk_space.frames)[10]


def _events(system: System, mechanism: str) -> list[str]:
    return [e.outcome for e in system.trace.events if e.mechanism == mechanism]


def test_numbers_follow_the_build_tables() -> None:
    a, b = ServiceTable("A"), ServiceTable("B")
    assert [a.number[s] for s in (Service.LIVEDUMP_START, Service.LIVEDUMP_ADD_BUFFER)] == [48, 49]
    assert [b.number[s] for s in (Service.LIVEDUMP_START, Service.LIVEDUMP_ADD_BUFFER)] == [54, 55]
    assert (a.number[Service.LIVEDUMP_ABORT], b.number[Service.LIVEDUMP_ABORT]) == (52, 58)


@pytest.fixture(scope="module")
def fixed() -> System:
    return _boot("vbs")


def test_a_context_takes_buffers_in_its_slots_and_abort_frees_it(fixed: System) -> None:
    status, out = _call(fixed, Service.LIVEDUMP_START)
    assert status == NtStatus.SUCCESS
    context = out[0]
    mdl_va, mdl_pfn = _mdl(fixed, [_buffer(fixed)], 64)
    for slot in range(LiveDump.SLOTS):
        assert _call(fixed, Service.LIVEDUMP_ADD_BUFFER, context, slot, mdl_va, mdl_pfn)[0] == 0
    assert _call(fixed, Service.LIVEDUMP_ABORT, context)[0] == NtStatus.SUCCESS
    status, _ = _call(fixed, Service.LIVEDUMP_ADD_BUFFER, context, 0, mdl_va, mdl_pfn)
    assert status == NtStatus.INVALID_HANDLE  # the handle went with the context


@pytest.mark.parametrize("case", ["slot", "mdl-pfn", "data-pfn", "byte-count", "pfn-array"])
def test_the_fixed_sk_refuses_a_bad_buffer(fixed: System, case: str) -> None:
    _, out = _call(fixed, Service.LIVEDUMP_START)
    context, slot = out[0], 0
    pfns, count = [_buffer(fixed)], 64
    if case == "slot":
        slot = LiveDump.SLOTS
    elif case == "data-pfn":
        pfns = [_sk_pfn(fixed)]
    elif case == "byte-count":
        count = 0
    elif case == "pfn-array":
        count = 2 * PAGE_SIZE
    mdl_va, mdl_pfn = _mdl(fixed, pfns, count)
    if case == "mdl-pfn":
        mdl_pfn = _sk_pfn(fixed)
    status, _ = _call(fixed, Service.LIVEDUMP_ADD_BUFFER, context, slot, mdl_va, mdl_pfn)
    assert status == NtStatus.INVALID_PARAMETER
    refusals = [e.detail.get("reason") for e in fixed.trace.events if e.outcome == "refused"]
    assert refusals[-1] == case
    _call(fixed, Service.LIVEDUMP_ABORT, context)


def test_another_objects_handle_is_a_type_mismatch(fixed: System) -> None:
    assert fixed.nt is not None and fixed.machine is not None
    status, allocation = ntkdp.create_secure_allocation(fixed.nt, fixed.machine.bsp.cpu, 64)
    assert status == NtStatus.SUCCESS
    mdl_va, mdl_pfn = _mdl(fixed, [_buffer(fixed)], 64)
    status, _ = _call(fixed, Service.LIVEDUMP_ADD_BUFFER, allocation, 0, mdl_va, mdl_pfn)
    assert status == NtStatus.OBJECT_TYPE_MISMATCH
    assert _call(fixed, Service.LIVEDUMP_ABORT, allocation)[0] == NtStatus.OBJECT_TYPE_MISMATCH


def test_the_unfixed_sk_writes_past_the_context_and_faults_far_past_it() -> None:
    """legacy-2019: the slot one past the end is accepted and written (the next pool block); a
    slot far past it is a store to an SK address nothing maps, a page fault in VTL1 ring 0,
    which stops the machine with SECURE_KERNEL_ERROR."""
    system = _boot("legacy-2019")
    _, out = _call(system, Service.LIVEDUMP_START)
    mdl_va, mdl_pfn = _mdl(system, [], 0x1234, start_va=0x4141_4141)
    status, _ = _call(system, Service.LIVEDUMP_ADD_BUFFER, out[0], LiveDump.SLOTS, mdl_va, mdl_pfn)
    assert status == NtStatus.SUCCESS
    assert _events(system, "securecall.legacy")[-1] == "unchecked"
    with pytest.raises(Bugcheck) as stop:
        _call(system, Service.LIVEDUMP_ADD_BUFFER, out[0], 0xFFFF_FFFF, mdl_va, mdl_pfn)
    assert stop.value.code == BugCheck.SECURE_KERNEL_ERROR
