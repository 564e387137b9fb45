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


def test_the_flush_path_follows_the_recommendation_nt_read_from_cpuid() -> None:
    """Phase 0 keeps CPUID 0x40000004's recommendations in .data; NT decides from that word, so
    clearing UseHypercallForRemoteFlush in RAM sends the next shootdown through IPIs."""
    from vbsim.nt.kernel import ENLIGHTENMENTS, HV_PRESENT, USE_HYPERCALL_FOR_REMOTE_FLUSH

    system = boot(preset("vbs"))
    assert system.machine is not None and system.nt is not None
    ram = system.machine.ram
    gpa = system.nt.variables[ENLIGHTENMENTS].gpa
    word = int.from_bytes(ram.read(gpa, 8), "little")
    assert word & HV_PRESENT and word & USE_HYPERCALL_FOR_REMOTE_FLUSH
    ram.write(gpa, (word & ~USE_HYPERCALL_FOR_REMOTE_FLUSH).to_bytes(8, "little"))
    ap = system.machine.vps[1]
    user = spawn(system, "app.exe", USER)
    before = ap.tlbs[0].flushes
    mark = len(system.trace.events)
    call = (NUMBERS["NtProtectVirtualMemory"], [user.process.pid, user.scratch.base, 4096, 2])
    assert user.returned("tests.nt.syscalls", [call]) == [NtStatus.SUCCESS]
    assert ap.tlbs[0].flushes > before
    events = system.trace.events[mark:]
    assert any(e.mechanism == "x2apic.icr" for e in events)
    assert not any(e.kind == "hypercall" and "FLUSH" in str(e.detail) for e in events)


def test_bare_metal_nt_records_no_hypervisor() -> None:
    from vbsim.nt.kernel import ENLIGHTENMENTS

    system = boot(preset("vbs-off"))
    assert system.machine is not None and system.nt is not None
    gpa = system.nt.variables[ENLIGHTENMENTS].gpa
    assert system.machine.ram.read(gpa, 8) == bytes(8)
