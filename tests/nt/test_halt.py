"""HLT on the guest surface: an AP idles halted with interrupts enabled and resumes for an IPI;
KeBugCheckEx leaves its processor halted with interrupts off, so IPIs no longer reach it; HLT,
CLI and STI are ring-0 instructions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.boot.chain import boot
from vbsim.hw import code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import Rflags
from vbsim.nt.kernel import IPI_VECTOR, bugcheck
from vbsim.nt.syscalls import PAGE_READONLY
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.policy import preset

from .userland import NUMBERS, USER, spawn

#: x2APIC ICR (SDM Vol. 3A §10.12.9): fixed delivery, destination in bits 63:32.
X2APIC_ICR = 0x830


@pytest.mark.parametrize("name", ["vbs-off", "vbs", "hardened"])
def test_an_ap_idles_halted_with_interrupts_enabled(name: str) -> None:
    system = boot(preset(name))
    assert system.machine is not None and len(system.machine.vps) > 1
    ap = system.machine.vps[1]
    assert ap.halted and ap.banks[0] is not None and ap.banks[0].rflags & Rflags.IF
    assert any(e.mechanism == "hlt" and e.outcome == "entered" and e.vp == 1 for e in system.trace)


def test_an_ipi_resumes_a_halted_ap_which_halts_again() -> None:
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    ap = system.machine.vps[1]
    user = spawn(system, "app.exe", USER)
    mark = len(system.trace.events)
    call = (NUMBERS["NtProtectVirtualMemory"], [user.process.pid, user.scratch.base, 4096, 2])
    assert PAGE_READONLY == 2
    assert user.returned("tests.nt.syscalls", [call]) == [NtStatus.SUCCESS]
    events = [e for e in system.trace.events[mark:] if e.vp == 1]
    outcomes = [(e.mechanism, e.outcome) for e in events if e.kind == "interrupt"]
    assert ("hlt", "resumed") in outcomes and ("idt", "delivered") in outcomes
    assert ap.halted  # back in the idle loop


def test_a_bugchecked_processor_is_halted_with_interrupts_off_and_holds_ipis() -> None:
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    bsp, ap = system.machine.vps
    with pytest.raises(Bugcheck):
        bugcheck(ap.cpu, BugCheck.KERNEL_SECURITY_CHECK_FAILURE, 1)
    assert ap.halted and ap.banks[0] is not None and not ap.banks[0].rflags & Rflags.IF
    mark = len(system.trace.events)
    bsp.wrmsr(X2APIC_ICR, (1 << 32) | IPI_VECTOR)  # an IPI to the stopped processor
    events = [e for e in system.trace.events[mark:] if e.vp == 1]
    assert [(e.mechanism, e.outcome) for e in events] == [("hlt", "held")]
    assert ap.held_interrupts == [IPI_VECTOR]


def _user_routine(instruction: str) -> Callable[[Cpu], None]:
    def routine(cpu: Cpu) -> None:
        getattr(cpu, instruction)()

    return routine


for _instruction in ("hlt", "cli", "sti"):
    code.register(f"tests.nt.user_{_instruction}", _user_routine(_instruction))


@pytest.mark.parametrize("instruction", ["hlt", "cli", "sti"])
def test_hlt_cli_and_sti_are_ring0_instructions(instruction: str) -> None:
    system = boot(preset("vbs"))
    assert system.machine is not None and system.nt is not None
    vp = system.machine.bsp
    user = spawn(system, "app.exe", USER)
    routine = f"tests.nt.user_{instruction}"
    entries = system.nt.map_code(vp.cpu, user.process, [routine])
    flags = vp.p.rflags
    mark = len(system.trace.events)
    outcome = system.nt.run_user(vp.cpu, user.process, entries[routine])
    faults = [e for e in system.trace.events[mark:] if e.kind == "exception"]
    assert faults and faults[0].detail["vector"] == 13  # #GP(0)
    assert outcome.terminated is not None  # NT ends the thread for a user-mode #GP
    assert not vp.halted and vp.p.rflags == flags


#: ICR destination shorthand "self" (bits 19:18 = 01, SDM Vol. 3A §10.6.1).
SELF = 0b01 << 18


def _ipi_deliveries(system: object, since: int) -> list[str]:
    events = system.trace.events[since:]  # type: ignore[attr-defined]
    return [
        f"{e.mechanism} {e.outcome}"
        for e in events
        if e.kind == "interrupt"
        and e.detail.get("vector") == IPI_VECTOR
        and e.mechanism != "x2apic.icr"
    ]


def test_a_running_processor_holds_an_interrupt_while_if_is_clear() -> None:
    """NT's boot processor runs with IF set (KiInitializeKernel enables interrupts): a self-IPI
    is taken at once.  After CLI it stays pending; STI releases it through the IDT."""
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    bsp = system.machine.bsp
    cpu = bsp.cpu
    assert bsp.p.rflags & Rflags.IF
    mark = len(system.trace.events)
    cpu.wrmsr(X2APIC_ICR, SELF | IPI_VECTOR)
    assert _ipi_deliveries(system, mark) == ["idt delivered"]
    mark = len(system.trace.events)
    cpu.cli()
    cpu.wrmsr(X2APIC_ICR, SELF | IPI_VECTOR)
    cpu.wrmsr(X2APIC_ICR, SELF | IPI_VECTOR)
    assert _ipi_deliveries(system, mark) == ["rflags.if held", "rflags.if held"]
    assert bsp.held_interrupts == [IPI_VECTOR, IPI_VECTOR]
    mark = len(system.trace.events)
    cpu.sti()
    # One at a time: the gate clears IF, and the handler's IRET re-enables the next.
    assert _ipi_deliveries(system, mark) == ["rflags.if released", "idt delivered"] * 2
    assert bsp.held_interrupts == [] and bsp.p.rflags & Rflags.IF


def test_a_held_interrupt_is_taken_when_the_processor_enters_user_mode() -> None:
    """Entering user mode sets IF (SYSRET with the user's RFLAGS): an interrupt NT held with
    interrupts off is taken then, interrupting the user thread, and the thread runs on."""
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    bsp = system.machine.bsp
    user = spawn(system, "app.exe", USER)
    bsp.cpu.cli()
    bsp.cpu.wrmsr(X2APIC_ICR, SELF | IPI_VECTOR)
    assert bsp.held_interrupts == [IPI_VECTOR]
    mark = len(system.trace.events)
    assert user.returned("tests.nt.read", user.scratch.base, 1) == b"\0"
    assert _ipi_deliveries(system, mark) == ["rflags.if released", "idt delivered"]
    entered = [e for e in system.trace.events[mark:] if e.outcome == "user-callback"]
    delivered = [e for e in system.trace.events[mark:] if e.mechanism == "idt"]
    assert entered and delivered and entered[0].seq < delivered[0].seq
    assert bsp.held_interrupts == []
    bsp.cpu.sti()
