"""NtQueryVirtualMemory(MemoryBasicInformation) answers from the VAD tree and the page tables in
RAM (issue 10): what a memory scanner sees, and what a VAD unlink hides from it."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System, boot
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.layouts import EPROCESS, Protection
from vbsim.nt.syscalls import (
    MEM_COMMIT,
    MEM_FREE,
    MEM_PRIVATE,
    MEMORY_BASIC_INFORMATION,
    PAGE_EXECUTE_READ,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
)
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .userland import ADMIN_DEBUG, NUMBERS, SCRATCH_SIZE, USER, User, spawn

QUERY = NUMBERS["NtQueryVirtualMemory"]
PROTECT = NUMBERS["NtProtectVirtualMemory"]
#: Where the answer goes: the last page of the caller's scratch region.
ANSWER = SCRATCH_SIZE - PAGE_SIZE


@pytest.fixture(scope="module")
def system() -> System:
    return boot(preset("vbs"))


def _query(
    user: User, address: int, pid: int | None = None, length: int = 0x30
) -> tuple[int, tuple[int, ...]]:
    out = user.scratch.base + ANSWER
    call = (QUERY, [user.process.pid if pid is None else pid, address, out, length])
    status = user.returned("tests.nt.syscalls", [call])[0]
    raw = user.returned("tests.nt.read", out, MEMORY_BASIC_INFORMATION.size)
    return status, MEMORY_BASIC_INFORMATION.unpack(raw)


def test_a_private_allocation_reads_as_committed_read_write(system: System) -> None:
    user = spawn(system, "query.exe", USER)
    base = user.scratch.base
    status, info = _query(user, base + 0x123)
    assert status == NtStatus.SUCCESS
    assert info == (
        base,
        base,
        PAGE_READWRITE,
        0,
        SCRATCH_SIZE,
        MEM_COMMIT,
        PAGE_READWRITE,
        MEM_PRIVATE,
    )


def test_regions_split_where_the_page_protection_changes(system: System) -> None:
    user = spawn(system, "split.exe", USER)
    base = user.scratch.base
    call = (PROTECT, [user.process.pid, base, PAGE_SIZE, PAGE_READONLY])
    assert user.returned("tests.nt.syscalls", [call])[0] == NtStatus.SUCCESS
    _, first = _query(user, base)
    _, rest = _query(user, base + PAGE_SIZE)
    assert (first[4], first[6], first[2]) == (PAGE_SIZE, PAGE_READONLY, PAGE_READWRITE)
    assert (rest[0], rest[4], rest[6]) == (base + PAGE_SIZE, SCRATCH_SIZE - PAGE_SIZE, 0x04)


def test_code_pages_and_free_ranges(system: System) -> None:
    user = spawn(system, "code.exe", USER)
    entry = user.entries["tests.nt.read"]
    _, code = _query(user, entry)
    assert (code[5], code[6], code[2]) == (MEM_COMMIT, PAGE_EXECUTE_READ, PAGE_EXECUTE_READ)
    end = user.scratch.base + SCRATCH_SIZE
    _, free = _query(user, end)
    assert (free[1], free[5], free[6], free[7]) == (0, MEM_FREE, PAGE_NOACCESS, 0)
    assert free[0] == end and free[4] > 0


def test_an_unlinked_vad_reads_as_free_memory_though_its_pages_stay_mapped(system: System) -> None:
    """BBHideVAD: with the node out of the tree, a scanner walking the address space sees free
    memory where the process still reads and writes its data."""
    assert system.machine is not None
    user = spawn(system, "hidden.exe", USER)
    user.returned("tests.nt.write", user.scratch.base, b"payload")
    cpu = system.machine.bsp.cpu
    root_field = user.process.eprocess + EPROCESS.VadRoot.offset
    saved = cpu.read_u64(root_field)
    cpu.write_u64(root_field, 0)
    try:
        _, info = _query(user, user.scratch.base)
        assert info[5] == MEM_FREE and info[6] == PAGE_NOACCESS
        assert user.returned("tests.nt.read", user.scratch.base, 7) == b"payload"
    finally:
        cpu.write_u64(root_field, saved)


def test_bad_arguments_and_a_protected_target(system: System) -> None:
    user = spawn(system, "args.exe", USER)
    assert _query(user, user.scratch.base, length=0x2F)[0] == NtStatus.INFO_LENGTH_MISMATCH
    assert _query(user, 0x8000_0000_0000)[0] == NtStatus.INVALID_PARAMETER
    assert _query(user, user.scratch.base, pid=0x7FF0)[0] == NtStatus.INVALID_HANDLE
    victim = spawn(system, "ppl.exe", USER)
    admin = spawn(system, "scanner.exe", ADMIN_DEBUG)
    assert _query(admin, victim.scratch.base, pid=victim.process.pid)[0] == NtStatus.SUCCESS
    assert system.machine is not None
    cpu = system.machine.bsp.cpu
    cpu.write(victim.process.eprocess + EPROCESS.Protection.offset, bytes([Protection.PPL]))
    status, _ = _query(admin, victim.scratch.base, pid=victim.process.pid)
    assert status == NtStatus.ACCESS_DENIED
