"""The guest crash enlightenment (TLFS partition-properties.md) and the goals that read it.

A kernel that bugchecks writes HV_X64_MSR_CRASH_P0..P4 and CrashNotify into HV_X64_MSR_CRASH_CTL;
the hypervisor records which VP and VTL executed that write.  A10's goal ("the Secure Kernel
stopped the machine") reads those records, so VTL0 code cannot claim a VTL1 crash: it can only
notify from VTL0, and an exception it raises itself reaches no record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import as_vtl, make_bare

from vbsim.attacks.catalogue import a01_a04_vtl1_boundary as boundary
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Outcome
from vbsim.attacks.runner import run
from vbsim.guest import crash as guest_crash
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hv import defs
from vbsim.hv.defs import HvMsr
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck
from vbsim.machine import Machine
from vbsim.ntstatus import BugCheck

_NOTIFY = defs.CRASH_CTL_CRASH_NOTIFY.mask
_MESSAGE = defs.CRASH_CTL_CRASH_MESSAGE.mask


def _cpuid(cpu: Cpu, leaf: int) -> tuple[int, int, int, int]:
    cpu.cpuid(leaf)
    return cpu.rax, cpu.rbx, cpu.rcx, cpu.rdx


def test_cpuid_names_the_hypervisor_and_its_crash_msrs(ctx: AttackContext) -> None:
    leaves = ctx.kernel(lambda cpu: [_cpuid(cpu, leaf) for leaf in (1, 0x4000_0000, 0x4000_0001)])
    one, vendor, interface = leaves
    assert one[2] & 1 << 31  # TLFS: CPUID.01h:ECX bit 31, the hypervisor present bit
    signature = b"".join(v.to_bytes(4, "little") for v in vendor[1:])
    assert signature == b"Microsoft Hv" and vendor[0] >= 0x4000_0005  # Hv#1 gives 2..5 at least
    assert interface[0].to_bytes(4, "little") == b"Hv#1"
    features = ctx.kernel(lambda cpu: _cpuid(cpu, 0x4000_0003))
    assert features[3] & defs.CPUID_EDX_GUEST_CRASH_MSRS


def test_bare_metal_has_no_hypervisor_and_no_crash_msrs() -> None:
    machine = Machine(ram_size=16 << 20, vps=1, hypervisor=False)
    try:
        cpu = machine.bsp.cpu
        assert _cpuid(cpu, 1)[2] & 1 << 31 == 0
        assert _cpuid(cpu, 0x4000_0000) == (0, 0, 0, 0)
        assert not guest_crash.crash_msrs_available(cpu)  # NT tells no one
        assert machine.bsp.exits.synthetic_msr(machine.bsp, HvMsr.CRASH_CTL, _NOTIFY) is None
    finally:
        machine.close()


def test_reading_crash_ctl_reports_the_supported_actions(ctx: AttackContext) -> None:
    assert ctx.kernel(lambda cpu: cpu.rdmsr(HvMsr.CRASH_CTL)) == _NOTIFY | _MESSAGE


def _notify(cpu: Cpu, control: int) -> None:
    for i, msr in enumerate(range(HvMsr.CRASH_P0, HvMsr.CRASH_P4 + 1)):
        cpu.wrmsr(msr, 0x18B if i == 0 else i)
    cpu.wrmsr(HvMsr.CRASH_CTL, control)


def test_a_notify_is_recorded_with_the_vtl_that_wrote_it(ctx: AttackContext) -> None:
    ctx.kernel(_notify, _NOTIFY)
    [record] = ctx.crashes
    assert (record.vp, record.vtl, record.parameters) == (0, 0, (0x18B, 1, 2, 3, 4))
    assert record.message == b""


def test_without_crash_notify_nothing_is_logged(ctx: AttackContext) -> None:
    ctx.kernel(_notify, 0)
    assert ctx.crashes == [] and not ctx.bugchecked


def test_crash_msrs_are_ring_0_only(ctx: AttackContext) -> None:
    ctx.user(_notify, _NOTIFY)
    assert ctx.crashes == []


def _message(cpu: Cpu, gpa: int, length: int) -> None:
    cpu.wrmsr(HvMsr.CRASH_P3, gpa)
    cpu.wrmsr(HvMsr.CRASH_P4, length)
    cpu.wrmsr(HvMsr.CRASH_CTL, _NOTIFY | _MESSAGE)


def test_a_crash_message_is_read_where_the_notifier_may_read(ctx: AttackContext) -> None:
    va, gpa = ctx.kernel_page()
    text = b"IRQL_NOT_LESS_OR_EQUAL in mydriver.sys"
    ctx.kernel(lambda cpu: cpu.write(va, text))
    ctx.kernel(_message, gpa, len(text))
    assert ctx.crashes[-1].message == text
    ctx.kernel(_message, gpa, 1 << 20)  # the TLFS caps a message at 4096 bytes
    assert len(ctx.crashes[-1].message) == defs.CRASH_MESSAGE_MAX


def test_vtl0_cannot_have_vtl1_memory_copied_into_the_log(ctx: AttackContext) -> None:
    sk = ctx.booted.sk
    assert sk is not None
    ctx.kernel(_message, sk.allow_gpa, 64)  # the SK's allow-list page: no VTL0 read right
    assert ctx.crashes[-1].message == b"" and ctx.crashes[-1].vtl == 0


def test_the_secure_kernels_bugcheck_is_recorded_from_vtl1() -> None:
    result, ctx = run(boundary.A10, "vbs")
    assert result.outcome is Outcome.SUCCEEDED
    [record] = ctx.crashes
    assert record.vtl == 1 and record.code == BugCheck.SECURE_KERNEL_ERROR
    assert record.parameters[2] == 0x7777  # the unknown SSCN, as the SK reported it


def _forge_vtl1_bugcheck(cpu: Cpu) -> None:
    """K0: notify a crash with the SK's code, then end the flow claiming VTL1."""
    _notify(cpu, _NOTIFY)
    raise Bugcheck(int(BugCheck.SECURE_KERNEL_ERROR), "SECURE_KERNEL_ERROR", 1)


def test_a10_cannot_be_claimed_by_vtl0_code() -> None:
    forged = replace(boundary.A10, steps=lambda ctx: ctx.kernel(_forge_vtl1_bugcheck))
    result, ctx = run(forged, "vbs")
    assert [c.vtl for c in ctx.crashes] == [0]
    assert result.outcome is not Outcome.SUCCEEDED


def test_nt_bugchecks_reach_the_hypervisor_too(ctx: AttackContext) -> None:
    """A kernel-mode #GP in NT (here: a CPL0 write to a VTL1 page) bugchecks VTL0; the record
    says VTL0."""
    sk = ctx.booted.sk
    assert sk is not None
    ctx.kernel(lambda cpu: cpu.write_u64(DIRECT_MAP + sk.allow_gpa, 0))
    assert [c.vtl for c in ctx.crashes] == [0] and ctx.bugchecked


_MACHINE_FOR_FUZZ: list[object] = []


@given(
    writes=st.lists(
        st.tuples(
            st.integers(int(HvMsr.CRASH_P0) - 2, int(HvMsr.CRASH_CTL) + 2),
            st.one_of(
                st.integers(0, (1 << 64) - 1),
                st.sampled_from([_NOTIFY, _NOTIFY | _MESSAGE, _MESSAGE, 1 << 61, 0]),
            ),
            st.sampled_from([0, 1]),
        ),
        max_size=12,
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_crash_msr_traffic_gets_an_architectural_answer(
    writes: list[tuple[int, int, int]],
) -> None:
    """Random values into the crash MSRs (and their neighbours) from VTL0 and VTL1: each is a
    write, a #GP for an MSR that does not exist, or a logged crash with the writer's VTL; never a
    Python exception, and the message read stays within the TLFS's 4096 bytes."""
    if not _MACHINE_FOR_FUZZ:
        _MACHINE_FOR_FUZZ.append(make_bare())
    env: Any = _MACHINE_FOR_FUZZ[0]
    hv = env.machine.hv
    before = len(hv.crashes)
    for msr, value, vtl in writes:
        with as_vtl(env.vp, vtl) as vp:
            result = hv.synthetic_msr(vp, msr, value)
            known = int(HvMsr.CRASH_P0) <= msr <= int(HvMsr.CRASH_CTL)
            assert (result is None) == (not known)  # no such MSR: the caller's #GP
            if msr == HvMsr.CRASH_CTL and value & _NOTIFY:
                record = hv.crashes[-1]
                assert record.vtl == vtl and len(record.message) <= defs.CRASH_MESSAGE_MAX
    assert len(hv.crashes) >= before
