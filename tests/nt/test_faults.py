"""Faults: a user-mode fault ends the thread; a kernel-mode fault bugchecks the machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.boot.chain import System
from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import Vector
from vbsim.nt import lsass
from vbsim.nt.process import Protection, host_view
from vbsim.nt.vad import region_at
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.policy import preset

from .userland import ADMIN_DEBUG, NUMBERS, USER, spawn


@pytest.mark.parametrize(
    "va",
    [DIRECT_MAP, DIRECT_MAP + 0x10_0000, CODE_BASE, 0xFFFF_F880_0000_0000],
    ids=["direct-map", "direct-map+1M", "kernel-code", "kernel-data"],
)
def test_user_access_to_a_kernel_address_ends_the_thread(system: System, va: int) -> None:
    user = spawn(system, "app.exe", USER)
    outcome = user.run("tests.nt.read", va, 8)
    assert outcome.terminated is not None
    assert outcome.terminated.vector == Vector.PF
    assert outcome.terminated.error_code & 0x4  # U/S: the access came from user mode
    assert user.view.exit_status == NtStatus.ACCESS_VIOLATION
    assert not system.trace.find("bugcheck")
    denied = [e for e in system.trace.find("access") if e.outcome == "denied"][-1]
    assert denied.mechanism.startswith("paging") and denied.cpl == 3
    # The machine goes on: the same process's next thread, and others, still run.
    assert user.returned("tests.nt.read", user.scratch.base, 4) == bytes(4)


def test_user_access_to_an_unmapped_user_address_ends_the_thread(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    outcome = user.run("tests.nt.write", 0x1000, b"x")
    assert outcome.terminated is not None and outcome.terminated.vector == Vector.PF
    assert "0x1000" in outcome.terminated.reason


def test_non_canonical_user_access_ends_the_thread_with_gp(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    outcome = user.run("tests.nt.read", 0x0000_8000_0000_0000, 8)
    assert outcome.terminated is not None and outcome.terminated.vector == Vector.GP


@pytest.mark.parametrize(
    ("va", "code"),
    [
        (0xFFFF_F000_0000_0000, BugCheck.PAGE_FAULT_IN_NONPAGED_AREA),  # unmapped kernel VA
        (0x0000_8000_0000_0000, BugCheck.KMODE_EXCEPTION_NOT_HANDLED),  # non-canonical: #GP
    ],
)
def test_kernel_mode_fault_bugchecks(system: System, va: int, code: BugCheck) -> None:
    assert system.machine is not None
    vp = system.machine.bsp
    assert (vp.vtl, vp.cpl) == (0, 0)
    with pytest.raises(Bugcheck) as stop:
        vp.read(va, 8)
    assert stop.value.code == code and stop.value.vtl == 0
    assert system.trace.find("bugcheck")[-1].outcome == code.name


def test_kernel_touching_user_memory_without_stac_bugchecks(system: System) -> None:
    """SMAP: NT must bracket user accesses with STAC/CLAC; a bare access is a kernel #PF."""
    assert system.nt is not None and system.machine is not None
    user = spawn(system, "app.exe", USER)
    vp = system.machine.bsp
    vp.mov_to_cr(3, user.process.tables.root)
    with pytest.raises(Bugcheck) as stop:
        vp.read(user.scratch.base, 8)
    assert stop.value.code == BugCheck.PAGE_FAULT_IN_NONPAGED_AREA
    assert any(e.mechanism == "smap" for e in system.trace.find("access"))


def test_lsass_process_is_a_vtl0_user_process(system: System) -> None:
    assert system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    process = system.process(pid)
    assert process.name == "lsass.exe"
    assert system.machine is not None
    view = host_view(system.machine.ram, process.eprocess)
    assert view.name == "lsass.exe" and view.pid == pid
    assert view.user == "SYSTEM" and view.admin
    assert view.protection == Protection.NONE  # RunAsPPL has no policy switch yet
    assert process.secure_pid == 0 and process.trustlet_id is None
    region = region_at(system.machine.ram, process, va)
    assert region is not None and region.writable and va + length <= region.base + region.size
    assert va < 1 << 47
    event = system.trace.find("nt", "lsass")[-1]
    assert event.vtl == 0 and event.detail["pid"] == pid
    cg = system.policy.credential_guard and system.vbs_running
    assert event.outcome == ("credential-guard" if cg else "credentials-in-vtl0")


# -- bugs found in files this suite does not own ------------------------------------------------
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("NtAllocateVirtualMemory", [0, 4096, 0x04]),  # NULL out pointer
        ("NtQueryValueKey", [0x1000, 8, 0]),  # unmapped key pointer
        ("NtSetValueKey", [0x1000, 8, 1]),
    ],
)
def test_bad_user_pointer_fails_the_call_not_the_machine(
    system: System, name: str, args: list[int]
) -> None:
    user = spawn(system, "app.exe", ADMIN_DEBUG)
    outcome = user.run("tests.nt.syscalls", [(NUMBERS[name], args)])
    assert outcome.terminated is None
    assert outcome.returned == [NtStatus.ACCESS_VIOLATION]


def test_out_pointer_to_read_only_user_page_fails_the_call(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    code_page = user.entries["tests.nt.syscalls"] & ~0xFFF
    outcome = user.run(
        "tests.nt.syscalls", [(NUMBERS["NtAllocateVirtualMemory"], [code_page, 4096, 0x04])]
    )
    assert outcome.terminated is None
    assert outcome.returned == [NtStatus.ACCESS_VIOLATION]


def test_allocation_beyond_physical_memory_is_no_memory(
    make_system: Callable[..., System],
) -> None:
    system = make_system(preset("vbs-off").with_changes(ram_mib=32))
    user = spawn(system, "app.exe", USER)
    out = user.scratch.base
    calls = [(NUMBERS["NtAllocateVirtualMemory"], [out, 16 << 20, 0x04])] * 3
    outcome = user.run("tests.nt.syscalls", calls)
    assert outcome.terminated is None
    assert outcome.returned[-1] == NtStatus.NO_MEMORY


def test_write_virtual_memory_respects_read_only_pages(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    code_va = user.entries["tests.nt.read"]
    before = user.returned("tests.nt.read", code_va, 32)
    status = user.returned(
        "tests.nt.write_process", user.process.pid, code_va, b"\xcc" * 32, user.scratch.base
    )
    assert status != NtStatus.SUCCESS
    assert user.returned("tests.nt.read", code_va, 32) == before
