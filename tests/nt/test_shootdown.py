"""TLB shootdown goes through the architecture: the flush hypercall with a hypervisor, an IPI
through the x2APIC ICR without one (never another processor's TLB touched directly)."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import boot
from vbsim.nt.kernel import IPI_VECTOR
from vbsim.nt.syscalls import PAGE_READONLY
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .userland import NUMBERS, USER, spawn


@pytest.mark.parametrize("name", ["vbs-off", "vbs"])
def test_protect_shoots_down_the_other_processors_tlb(name: str) -> None:
    system = boot(preset(name))
    assert system.machine is not None and len(system.machine.vps) > 1
    ap = system.machine.vps[1]
    user = spawn(system, "app.exe", USER)
    before = ap.tlbs[0].flushes
    mark = len(system.trace.events)
    call = (NUMBERS["NtProtectVirtualMemory"], [user.process.pid, user.scratch.base, 4096, 2])
    assert PAGE_READONLY == 2
    assert user.returned("tests.nt.syscalls", [call]) == [NtStatus.SUCCESS]
    assert ap.tlbs[0].flushes > before
    events = system.trace.events[mark:]
    icr = [e for e in events if e.mechanism == "x2apic.icr"]
    taken = [
        e
        for e in events
        if e.kind == "interrupt" and e.vp == 1 and e.detail["vector"] == IPI_VECTOR
    ]
    if name == "vbs-off":
        assert icr and icr[0].vp == 0 and taken  # the IPI reached the AP through its IDT
    else:
        assert not icr and not taken  # the hypervisor flushed it (HvCallFlushVirtualAddressSpace)


def test_an_unsupported_icr_write_is_a_general_protection_fault() -> None:
    system = boot(preset("vbs-off"))
    assert system.machine is not None
    vp = system.machine.bsp
    mark = len(system.trace.events)
    from vbsim.hw.faults import Bugcheck

    with pytest.raises(Bugcheck):
        vp.wrmsr(0x830, (5 << 8) | 0x30)  # INIT delivery mode: not modelled → #GP in ring 0
    assert any(e.detail.get("vector") == 13 for e in system.trace.events[mark:])
