"""HLT exits to the hypervisor, and HvRegisterInternalActivityState reports a VP's suspend state
(OpenVMM hvdef ``HvInternalActivityRegister``: startup_suspend, halt_suspend, idle_suspend).
NT's AP idles in HLT, so the hypervisor has taken its HLT exit and the register says halted."""

from __future__ import annotations

from tests.conftest import as_vtl, make_bare

from vbsim.attacks.context import AttackContext
from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hv.defs import HvRegisterName, HvStatus
from vbsim.hv.hypervisor import Hypervisor
from vbsim.hw.cpu import Cpu
from vbsim.sk.kernel import SecureKernel

ACTIVITY = int(HvRegisterName.INTERNAL_ACTIVITY_STATE)


def _read_ap(cpu: Cpu) -> list[int]:
    """K1: HvCallGetVpRegisters(InternalActivityState) of VP 1's VTL0."""
    sk = cpu.kernel()
    assert isinstance(sk, SecureKernel)
    result, values = hvcall.get_vp_registers(cpu, sk.params, [ACTIVITY], 0, vp_index=1)
    return [int(result.status), *values]


def _write_ap(cpu: Cpu, value: int) -> int:
    sk = cpu.kernel()
    assert isinstance(sk, SecureKernel)
    return int(hvcall.set_vp_registers(cpu, sk.params, [(ACTIVITY, value)], 0, vp_index=1).status)


def _hv(ctx: AttackContext) -> Hypervisor:
    machine = ctx.booted.machine
    assert machine is not None and isinstance(machine.hv, Hypervisor)
    return machine.hv


def test_an_idle_ap_took_a_hlt_exit_and_reads_as_halt_suspended(ctx: AttackContext) -> None:
    assert _hv(ctx).hlt_exits.get(1, 0) >= 1
    assert any(e.mechanism == "hlt-exit" and e.vp == 1 for e in ctx.trace)
    status, value = ctx.secure_kernel(_read_ap)
    assert status == HvStatus.SUCCESS
    assert value == defs.ACTIVITY_HALT_SUSPEND


def test_clearing_halt_suspend_wakes_the_ap_and_bad_values_are_refused(
    ctx: AttackContext,
) -> None:
    machine = ctx.booted.machine
    assert machine is not None
    ap = machine.vps[1]
    for bad in (1 << 3, defs.ACTIVITY_IDLE_SUSPEND, defs.ACTIVITY_STARTUP_SUSPEND):
        assert ctx.secure_kernel(_write_ap, bad) == HvStatus.INVALID_PARAMETER
        assert ap.halted
    assert ctx.secure_kernel(_write_ap, 0) == HvStatus.SUCCESS
    assert not ap.halted
    status, value = ctx.secure_kernel(_read_ap)
    assert (status, value) == (HvStatus.SUCCESS, 0)
    assert ctx.secure_kernel(_write_ap, defs.ACTIVITY_HALT_SUSPEND) == HvStatus.SUCCESS
    assert ap.halted


def test_an_ap_never_started_reads_as_startup_suspended() -> None:
    bare = make_bare(vps=2)
    try:
        assert not bare.machine.vps[1].started
        with as_vtl(bare.vp, 1) as vp:
            result, values = hvcall.get_vp_registers(
                vp, bare.monitor.params, [ACTIVITY], 0, vp_index=1
            )
        assert result.status == HvStatus.SUCCESS
        assert values == [defs.ACTIVITY_STARTUP_SUSPEND]
        hv = bare.machine.hv
        assert isinstance(hv, Hypervisor) and 1 not in hv.hlt_exits
    finally:
        bare.machine.close()
