"""The system-call path: CPL3 → ``syscall`` → LSTAR (nt!KiSystemCall64) at CPL0 → ``sysret``."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System
from vbsim.hw.x86 import Msr
from vbsim.ntstatus import NtStatus

from .userland import NUMBERS, USER, spawn


def test_syscall_enters_lstar_at_cpl0_and_returns_at_cpl3(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    vp = user.vp
    lstar = vp.rdmsr(Msr.LSTAR)
    assert lstar == user.nt.syscall_entry
    mark = len(system.trace.events)
    before, status, after = user.returned(
        "tests.nt.probe_syscall", NUMBERS["NtTestAlert"], [0, 0, 0, 0]
    )
    assert (before, status, after) == (3, NtStatus.SUCCESS, 3)
    events = [e for e in system.trace.events[mark:] if e.kind == "syscall"]
    # The thread itself enters and leaves user mode through the gates too (run_user).
    assert next((e.mechanism, e.outcome, e.cpl) for e in events) == ("sysret", "user-callback", 3)
    assert [(e.mechanism, e.outcome, e.cpl) for e in events][-1] == (
        "lstar",
        "callback-return",
        0,
    )
    events = events[1:-1]
    assert [(e.mechanism, e.cpl) for e in events] == [
        ("lstar", 0),
        ("nt-dispatch", 0),
        ("sysret", 3),
    ]
    assert events[0].detail["lstar"] == lstar
    assert events[1].detail["service"] == "NtTestAlert"
    # Back in the kernel after the thread ran: CPL0, kernel CR3.
    assert vp.cpl == 0 and vp.p.cr3 == user.nt.space.root


@pytest.mark.parametrize("number", [0x0, 0x2, 0x1FF, 0x7777, 0xFFFF_FFFF, 1 << 63])
def test_unknown_service_number_is_invalid_system_service(system: System, number: int) -> None:
    user = spawn(system, "app.exe", USER)
    before, status, after = user.returned("tests.nt.probe_syscall", number, [1, 2, 3, 4])
    assert status == NtStatus.INVALID_SYSTEM_SERVICE == 0xC000_001C
    assert (before, after) == (3, 3)
    dispatch = system.trace.find("syscall", "nt-dispatch")[-1]
    assert dispatch.outcome == "STATUS_INVALID_SYSTEM_SERVICE"
    assert dispatch.detail["number"] == number


def test_every_number_in_the_table_has_a_service(system: System) -> None:
    """The build's table names only services this NT implements; anything else is unknown."""
    user = spawn(system, "app.exe", USER)
    assert all(user.nt.service_routine(user.vp.cpu, number) for number in NUMBERS.values())
    unknown = max(NUMBERS.values()) + 1
    assert user.returned("tests.nt.syscalls", [(unknown, [0, 0, 0, 0])]) == [
        NtStatus.INVALID_SYSTEM_SERVICE
    ]


def test_syscall_from_kernel_mode_is_refused(system: System) -> None:
    """``syscall`` at CPL0 is #UD in the model; NT bugchecks on a kernel-mode #UD."""
    from vbsim.hw.faults import Bugcheck

    assert system.machine is not None
    vp = system.machine.bsp
    vp.rax = NUMBERS["NtTestAlert"]
    with pytest.raises(Bugcheck) as stop:
        vp.syscall()
    assert stop.value.code == 0x1E and stop.value.params[0] == 0xC000_001D


def test_query_value_key_round_trip_and_not_found(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    status, _ = user.returned("tests.nt.query_value", r"HKLM\SOFTWARE\Nothing", user.scratch.base)
    assert status == NtStatus.OBJECT_NAME_NOT_FOUND
