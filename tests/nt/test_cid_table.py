"""PspCidTable in RAM (issue 10 part 1): PIDs are handle values of NT's client-ID table, and
PsLookupProcessByProcessId reads that table, not the process list and not a Python map.  So
an unlinked process is still found by PID (as on Windows), a K0 write to an entry changes
which object a PID names, and a write to the free list moves the next PID."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.boot.chain import System, boot
from vbsim.nt import cid
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import (
    EPROCESS,
    HANDLE_TABLE,
    HANDLE_TABLE_ENTRY,
    LIST_ENTRY,
    LOWLEVEL_COUNT,
    HostKernelView,
    handle_entry_object,
    handle_entry_value,
)
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .userland import ADMIN_DEBUG, USER, spawn


@pytest.fixture(scope="module")
def system() -> System:
    return boot(preset("vbs"))


def _nt(system: System) -> NtKernel:
    assert system.nt is not None
    return system.nt


def _kernel(system: System) -> HostKernelView:
    assert system.machine is not None
    return HostKernelView(system.machine.ram, _nt(system).space.root)


def _table(system: System) -> int:
    return _kernel(system).read_u64(_nt(system).cid_table_pointer)


def _entry(system: System, pid: int) -> int:
    """The entry for ``pid`` in a one-leaf table (the VA a K0 writer would compute)."""
    code = _kernel(system).read_u64(_table(system) + HANDLE_TABLE.TableCode.offset)
    assert code & 3 == 0 and pid < LOWLEVEL_COUNT * 4
    return code + pid // 4 * HANDLE_TABLE_ENTRY.SIZE


def _poke(system: System, va: int, value: int) -> None:
    """A K0 write primitive's 8-byte store at kernel VA ``va`` (host side, as in the DKOM
    tests: the write, not how it was obtained, is under test)."""
    assert system.machine is not None
    gpa = _kernel(system).translate(va)
    assert gpa is not None
    leaf, size = gpa
    frame = leaf & 0x000F_FFFF_FFFF_F000 & ~(size - 1)
    system.machine.ram.write(frame | (va & (size - 1)), value.to_bytes(8, "little"))


def test_the_layouts_are_vergilius_19041() -> None:
    assert HANDLE_TABLE.NextHandleNeedingPool.offset == 0 and HANDLE_TABLE.TableCode.offset == 8
    assert HANDLE_TABLE.FirstFreeHandleEntry.offset == 0x48 and HANDLE_TABLE.SIZE == 0x80
    assert HANDLE_TABLE_ENTRY.SIZE == 0x10 and EPROCESS.Type.offset == 0
    eprocess = 0xFFFF_8000_0123_4000
    value = handle_entry_value(eprocess)
    assert value & 1 and value >> 20 == (eprocess & 0xFFFF_FFFF_FFFF) >> 4  # ObjectPointerBits
    assert handle_entry_object(value) == eprocess and handle_entry_object(0) == 0


def test_every_pid_is_the_handle_of_an_entry_naming_its_eprocess(system: System) -> None:
    kernel = _kernel(system)
    table = _table(system)
    views = system.process_views()
    assert views[0].pid == 4 and views[0].name == "System"  # the first handle a table gives
    for view in views:
        assert cid.lookup(kernel, table, view.pid) == view.eprocess
    # NextHandleNeedingPool bounds the one leaf page; HandleCount counts the processes.
    assert kernel.read_u32(table + HANDLE_TABLE.NextHandleNeedingPool.offset) == 1024
    assert kernel.read_u32(table + HANDLE_TABLE.HandleCount.offset) == len(views)


def test_a_lookup_clears_the_tag_bits_and_refuses_what_no_entry_backs(system: System) -> None:
    kernel, table = _kernel(system), _table(system)
    system_eprocess = system.process(4).eprocess
    assert [cid.lookup(kernel, table, 4 | tag) for tag in range(4)] == [system_eprocess] * 4
    assert cid.lookup(kernel, table, 0) == 0  # entry 0 of a leaf is never handed out
    assert cid.lookup(kernel, table, 1024) == 0  # beyond NextHandleNeedingPool
    assert cid.lookup(kernel, table, 1 << 63) == 0
    assert system.lookup_process(1020) is None  # a free entry


def test_an_unlinked_process_is_still_found_by_pid(system: System) -> None:
    """DKOM hides a process from list walkers only: PsLookupProcessByProcessId reads the CID
    table, so OpenProcess by PID (here: NtReadVirtualMemory) still reaches it."""
    hidden = spawn(system, "hidden.exe", USER)
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    hidden.returned("tests.nt.write", hidden.scratch.base, b"still here")
    links = hidden.process.eprocess + EPROCESS.ActiveProcessLinks.offset
    kernel = _kernel(system)
    flink = kernel.read_u64(links + LIST_ENTRY.Flink.offset)
    blink = kernel.read_u64(links + LIST_ENTRY.Blink.offset)
    _poke(system, blink + LIST_ENTRY.Flink.offset, flink)
    _poke(system, flink + LIST_ENTRY.Blink.offset, blink)
    try:
        assert hidden.process.pid not in {v.pid for v in system.process_views()}
        assert system.lookup_process(hidden.process.pid) == hidden.process
        args = (hidden.process.pid, hidden.scratch.base, 10, admin.scratch.base)
        assert admin.returned("tests.nt.read_process", *args) == (NtStatus.SUCCESS, b"still here")
    finally:
        _poke(system, blink + LIST_ENTRY.Flink.offset, links)
        _poke(system, flink + LIST_ENTRY.Blink.offset, links)


def test_a_redirected_entry_names_the_object_it_now_points_at(system: System) -> None:
    """A K0 write to the victim's CID entry: the PID now names System's EPROCESS; pointed at
    something that is not a process (its token), the PID names nothing."""
    victim = spawn(system, "victim.exe", USER)
    nt = _nt(system)
    assert system.machine is not None
    cpu = system.machine.bsp.cpu
    entry = _entry(system, victim.process.pid)
    original = _kernel(system).read_u64(entry)
    system_process = system.process(4)
    try:
        _poke(system, entry, handle_entry_value(system_process.eprocess))
        assert nt.lookup_process(cpu, victim.process.pid) == system_process
        token = _kernel(system).read_u64(victim.process.eprocess + EPROCESS.Token.offset) & ~0xF
        _poke(system, entry, handle_entry_value(token))
        assert nt.lookup_process(cpu, victim.process.pid) is None  # the type check
    finally:
        _poke(system, entry, original)
    assert nt.lookup_process(cpu, victim.process.pid) == victim.process


def test_a_write_to_the_free_list_moves_the_next_pid(system: System) -> None:
    table = _table(system)
    first_free = _kernel(system).read_u64(table + HANDLE_TABLE.FirstFreeHandleEntry.offset)
    assert first_free
    _poke(system, table + HANDLE_TABLE.FirstFreeHandleEntry.offset, _entry(system, 0x230))
    after = spawn(system, "second.exe", USER)
    assert after.process.pid == 0x230
    assert system.lookup_process(0x230) == after.process


def test_the_table_grows_a_level_past_one_leaf_page() -> None:
    system = boot(preset("vbs-off"))
    nt = _nt(system)
    assert system.machine is not None
    cpu = system.machine.bsp.cpu
    before = len(system.process_views())
    created = [nt.create_process(cpu, f"p{i}.exe") for i in range(LOWLEVEL_COUNT + 4 - before)]
    table = _table(system)
    code = _kernel(system).read_u64(table + HANDLE_TABLE.TableCode.offset)
    assert code & 3 == 1  # a mid-level page of leaf pointers now
    assert _kernel(system).read_u32(table + HANDLE_TABLE.NextHandleNeedingPool.offset) == 2048
    assert created[-1].pid > 1024 and 1024 not in {p.pid for p in created}
    for process in (system.process(4), *created[::50], created[-1]):
        assert nt.lookup_process(cpu, process.pid) == process


@settings(max_examples=200, deadline=None)
@given(handle=st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_any_handle_names_nothing_or_the_process_with_that_pid(system: System, handle: int) -> None:
    found = system.lookup_process(handle)
    assert found is None or found.pid == handle & ~3
