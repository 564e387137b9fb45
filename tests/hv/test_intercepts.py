"""Secure intercepts: memory, control registers and MSRs reach VTL1, which decides."""

from __future__ import annotations

import pytest
from tests.conftest import Bare

from vbsim.guest.bare import MON_LOCK_CRS, MON_PROTECT, monitor_call
from vbsim.hv import defs
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.x86 import Cr4, Msr, Vector

SECRET = b"only-vtl1-may-see-this"


def test_read_of_protected_page_is_an_intercept_not_data(bare: Bare) -> None:
    vp = bare.vp
    va, gpa = bare.kernel.space.alloc_data()
    vp.write(va, SECRET)
    assert monitor_call(vp, MON_PROTECT, gpa, 0) == 0
    vp.rax = vp.rbx = 0
    with pytest.raises(ThreadTerminated) as stop:
        vp.read(va, len(SECRET))
    assert stop.value.vector == Vector.GP
    log = bare.monitor.log(vp)
    assert log[-1][0] == defs.HvMessageType.GPA_INTERCEPT
    assert log[-1][1] == defs.HvInterceptAccessType.READ
    assert log[-1][3] == gpa and log[-1][4] == va
    posted = bare.trace.find(kind="intercept", mechanism="secure-intercept")
    assert posted and posted[-1].detail["gpa"] == gpa
    # No register the VTL0 flow can see holds the secret.
    shared = b"".join(v.to_bytes(8, "little") for v in bare.vp.shared_gprs().values())
    assert SECRET[:8] not in shared


def test_write_to_read_only_page_leaves_memory_unchanged(bare: Bare) -> None:
    vp = bare.vp
    va, gpa = bare.kernel.space.alloc_data()
    vp.write(va, SECRET)
    assert monitor_call(vp, MON_PROTECT, gpa, int(defs.HvMapGpaFlags.READABLE)) == 0
    assert vp.read(va, len(SECRET)) == SECRET  # reading is still allowed
    with pytest.raises(ThreadTerminated):
        vp.write(va, b"X" * len(SECRET))
    assert bare.machine.ram.read(gpa, len(SECRET)) == SECRET
    assert bare.monitor.log(vp)[-1][1] == defs.HvInterceptAccessType.WRITE


def test_cr4_write_intercepted_only_for_masked_bits(bare: Bare) -> None:
    vp = bare.vp
    assert monitor_call(vp, MON_LOCK_CRS, int(Cr4.SMEP | Cr4.SMAP)) == 0
    cr4 = vp.p.cr4
    vp.mov_to_cr(4, cr4 | int(Cr4.PCE))  # an unmasked bit: no intercept, takes effect
    assert vp.p.cr4 & Cr4.PCE
    count = len(bare.monitor.log(vp))
    with pytest.raises(ThreadTerminated) as stop:
        vp.mov_to_cr(4, vp.p.cr4 & ~int(Cr4.SMEP))
    assert stop.value.vector == Vector.GP
    assert vp.p.cr4 & Cr4.SMEP  # the write never took effect
    record = bare.monitor.log(vp)[count]
    assert record[0] == defs.HvMessageType.REGISTER_INTERCEPT
    assert record[5] == (cr4 | int(Cr4.PCE)) & ~int(Cr4.SMEP)


def test_lstar_write_intercepted(bare: Bare) -> None:
    vp = bare.vp
    assert monitor_call(vp, MON_LOCK_CRS, int(Cr4.SMEP)) == 0
    before = vp.p.lstar
    with pytest.raises(ThreadTerminated):
        vp.wrmsr(Msr.LSTAR, 0xFFFF_8000_DEAD_0000)
    assert vp.p.lstar == before
    record = bare.monitor.log(vp)[-1]
    assert record[0] == defs.HvMessageType.MSR_INTERCEPT and record[5] == 0xFFFF_8000_DEAD_0000


def test_vtl0_cannot_configure_intercepts(bare: Bare) -> None:
    from vbsim.guest import hvcall

    result = hvcall.set_vp_registers(
        bare.vp, bare.kernel.params, [(defs.HvRegisterName.CR_INTERCEPT_CONTROL, 0)]
    )
    assert result.status == defs.HvStatus.ACCESS_DENIED


def test_shared_registers_cross_a_vtl_call_private_ones_do_not(bare: Bare) -> None:
    vp = bare.vp
    vp.r12, vp.xmm[3] = 0x1234, 0xABCD << 64
    bank0, bank1 = vp.banks[0], vp.banks[1]
    assert bank0 is not None and bank1 is not None
    assert bank0.cr3 != bank1.cr3 and bank0.idtr_base != bank1.idtr_base
    rip0 = bank0.rip
    assert monitor_call(vp, 0) == 0  # the monitor wrote its status into shared R8
    assert vp.r8 == 0 and vp.rdi == 0  # and cleared RDI (shared) before returning
    assert vp.r12 == 0x1234 and vp.xmm[3] == 0xABCD << 64
    assert vp.vtl == 0 and vp.p is bank0
    assert bank0.rip == rip0 + 3  # VtlCall advanced the caller past its vmcall (§5.3 step 2)


def test_an_intercept_after_a_host_run_vtl_return_enters_vtl1_afresh(bare: Bare) -> None:
    """A VtlReturn issued from the host's own stack (the fuzzer's harness acting as VTL1) leaves
    no VTL1 continuation to resume; the next entry to VTL1 starts it again from its saved RIP
    instead of failing (CI's atheris run found this as a Python AttributeError)."""
    from vbsim.guest import hvcall
    from vbsim.hv.defs import HvCallCode

    vp = bare.vp
    vp.host_entry(1)
    vp.rcx = int(HvCallCode.VTL_RETURN)
    vp.vmcall()
    assert vp.vtl == 0
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
    with pytest.raises(ThreadTerminated) as stop:  # the monitor's page: an intercept, then #GP
        hvcall.raw_hypercall(vp, control, bare.monitor.params.in_gpa, bare.kernel.params.out_gpa)
    assert stop.value.vector == Vector.GP
    assert bare.monitor.log(vp)[-1][0] == defs.HvMessageType.GPA_INTERCEPT
    assert vp.vtl == 0
