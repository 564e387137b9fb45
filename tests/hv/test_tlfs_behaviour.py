"""Issue 11's hypervisor items, each against its primary source (TLFS markdown, OpenVMM)."""

from __future__ import annotations

import contextlib

import pytest
from tests.conftest import Bare, as_vtl

from vbsim.guest import hvcall
from vbsim.guest.bare import MON_NULL, SINT0_VECTOR, monitor_call
from vbsim.hv import defs
from vbsim.hv.calls.context import decode_context, encode_context
from vbsim.hv.calls.registers import valid_protection_mask
from vbsim.hv.defs import HvCallCode, HvMsr, HvRegisterName, HvStatus
from vbsim.hv.hypervisor import Hypervisor
from vbsim.hv.profile import MODEL_PARTITION_ID, OPENHCL
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.x86 import Cr0, Efer, Msr, Vector


def hv_of(bare: Bare) -> Hypervisor:
    hv = bare.machine.hv
    assert hv is not None
    return hv


# -- item 3: VtlCall / VtlReturn with control bits → #UD -----------------------------------------
@pytest.mark.parametrize("rcx", [0x10011, 0x11 | 1 << 32, 0x10012, 0x12 | 1 << 48])
def test_vtl_call_or_return_with_control_bits_is_ud(bare: Bare, rcx: int) -> None:
    """TLFS vsm.md: "A VTL call with an invalid control input value" → #UD; OpenVMM
    hv1_hypercall: "Control must be 0 except for the opcode"."""
    vp = bare.vp
    vp.rcx, vp.rax = rcx, 0
    with pytest.raises(ThreadTerminated):
        vp.vmcall()
    assert bare.kernel.exceptions[-1].vector == Vector.UD
    assert vp.vtl == 0


# -- item 4: TPR decides the switch; re-evaluation on VTL return ---------------------------------
def test_tpr_masked_interrupt_for_vtl1_stays_pending_without_a_switch(bare: Bare) -> None:
    hv, vp = hv_of(bare), bare.vp
    bank1 = vp.banks[1]
    assert bank1 is not None
    bank1.cr8 = SINT0_VECTOR >> 4  # class 3 is not above TPR 3
    hv.assert_interrupt(vp, 1, SINT0_VECTOR)
    assert vp.vtl == 0
    assert list(hv.states[vp.index][1].pending_interrupts) == [SINT0_VECTOR]
    assert bare.trace.find(kind="interrupt", mechanism="tpr")
    # RFLAGS.IF of VTL1 does not matter (TLFS "Interrupt Masking and VTL Switches"): with TPR 0
    # and IF clear the next interrupt switches at once.
    bank1.cr8 = 0
    bank1.rflags &= ~0x200
    with pytest.raises(ThreadTerminated):  # the monitor's handler injects #GP into VTL0
        hv.assert_interrupt(vp, 1, SINT0_VECTOR)
    assert not hv.states[vp.index][1].pending_interrupts


def test_pending_interrupt_is_taken_at_vtl_return(bare: Bare) -> None:
    """ "the VTL returns (to a lower VTL), the hypervisor will reevaluate any pending interrupts.
    This will cause an immediate call back to the higher VTL" (TLFS vsm.md)."""
    hv, vp = hv_of(bare), bare.vp
    bank1 = vp.banks[1]
    assert bank1 is not None
    with as_vtl(vp, 1):
        bank1.cr8 = 0xF
        hv.assert_interrupt(vp, 1, SINT0_VECTOR)  # VTL1's own interrupt, masked by its TPR
        assert list(hv.states[vp.index][1].pending_interrupts) == [SINT0_VECTOR]
        bank1.cr8 = 0
    # VTL0 calls VTL1; VTL1's pending interrupt is taken first, then at its VtlReturn nothing is
    # left; the monitor's SINT0 handler logs a (stale) message and injects #GP into VTL0.
    with pytest.raises(ThreadTerminated):
        monitor_call(vp, MON_NULL)
    assert not hv.states[vp.index][1].pending_interrupts
    # Now the return path itself: pending while VTL1 runs, unmasked before VtlReturn.
    bare.kernel.exceptions.clear()
    with as_vtl(vp, 1):
        bank1.cr8 = 0xF
        hv.assert_interrupt(vp, 1, SINT0_VECTOR)
        bank1.cr8 = 0
        start = len(bare.trace.events)
        vp.rcx, vp.rax = int(HvCallCode.VTL_RETURN), 0
        with contextlib.suppress(ThreadTerminated):  # the monitor answers with #GP
            vp.vmcall()
        callbacks = bare.trace.find(kind="interrupt", mechanism="vtl-return")
        assert callbacks and bare.trace.events.index(callbacks[-1]) >= start
        assert not hv.states[vp.index][1].pending_interrupts


# -- item 5: write-once bits and the default mask -------------------------------------------------
@pytest.mark.parametrize(
    ("mask", "mbec", "valid"),
    [
        (0xF, False, True),  # RWX
        (0x3, False, True),  # RW, no execute
        (0x7, False, False),  # KX without UX: never (OpenHCL validate_vtl_gpa_flags)
        (0x7, True, False),
        (0xB, False, False),  # UX without KX needs MBEC
        (0xB, True, True),
        (0xE, False, False),  # W and X without R
    ],
)
def test_default_protection_mask_validation(mask: int, mbec: bool, valid: bool) -> None:
    assert valid_protection_mask(mask, mbec) is valid


def test_zero_memory_on_reset_can_be_cleared_protection_cannot(bare: Bare) -> None:
    with as_vtl(bare.vp, 1) as vp:
        pages = bare.monitor.params
        _, (config,) = hvcall.get_vp_registers(vp, pages, [HvRegisterName.VSM_PARTITION_CONFIG])
        for bit in (
            defs.PCONFIG_ZERO_MEMORY_ON_RESET,
            defs.PCONFIG_DENY_LOWER_VTL_STARTUP,
            defs.PCONFIG_INTERCEPT_VP_STARTUP,
        ):
            set_ = hvcall.set_vp_registers(
                vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, config | bit.mask)]
            )
            clear = hvcall.set_vp_registers(
                vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, config & ~bit.mask)]
            )
            assert set_.ok and clear.ok, bit
        kx_only = defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(config, 0x7)
        refused = hvcall.set_vp_registers(
            vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, kx_only)]
        )
        assert refused.status == HvStatus.INVALID_REGISTER_VALUE


# -- item 6: 32-bit initial contexts --------------------------------------------------------------
def test_32_bit_initial_context_is_accepted_real_mode_is_not(bare: Bare) -> None:
    state = bare.monitor.space.initial_state(bare.monitor.entry_va)
    state.efer &= ~int(Efer.LMA | Efer.LME)
    assert decode_context(encode_context(state)) is not None  # 32-bit paged protected mode
    state.cr0 &= ~int(Cr0.PG)
    assert decode_context(encode_context(state)) is not None  # 32-bit unpaged protected mode
    state.cr0 &= ~int(Cr0.PE)
    assert decode_context(encode_context(state)) is None  # real mode
    impossible = bare.monitor.space.initial_state(bare.monitor.entry_va)
    impossible.cr0 &= ~int(Cr0.PG)
    assert decode_context(encode_context(impossible)) is None  # LMA without paging


# -- item 8 (hypervisor half): HVPT through the hvdef control surface -----------------------------
def test_hvpt_capability_flag_and_secure_config_bit(bare: Bare) -> None:
    hv = hv_of(bare)
    caps = hv.capabilities
    assert defs.CAP_HW_HVPT_AVAILABLE.extract(caps) == 1
    assert defs.CAP_HW_HVPT_RANGE_BITS.extract(caps) == 47
    with as_vtl(bare.vp, 1) as vp:
        pages = bare.monitor.params
        value = defs.SECCFG_MBEC_ENABLED.mask | defs.SECCFG_HW_HVPT_ENABLED.mask
        before = hvcall.set_vp_registers(
            vp, pages, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, value)]
        )
        assert before.status == HvStatus.INVALID_REGISTER_VALUE  # VTL1 enabled without HVPT
        hv.partition.hvpt_vtls |= 0b10  # as EnablePartitionVtl(enable_hardware_hvpt) records
        after = hvcall.set_vp_registers(
            vp, pages, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, value)]
        )
        assert after.ok
    hv.hvpt_available = False
    assert defs.CAP_HW_HVPT_AVAILABLE.extract(hv.capabilities) == 0


def test_enable_partition_vtl_with_hardware_hvpt_flag() -> None:
    from tests.conftest import make_bare

    from vbsim.guest.bare import BareKernel, Monitor, enable_hypercalls
    from vbsim.machine import Machine

    del make_bare
    for available, wanted in ((False, HvStatus.INVALID_PARAMETER), (True, HvStatus.SUCCESS)):
        machine = Machine(ram_size=16 << 20)
        hv = machine.hv
        assert hv is not None
        hv.hvpt_available = available
        kernel = BareKernel.load(machine)
        Monitor.load(machine)
        _, gpa = kernel.space.alloc_data()
        enable_hypercalls(machine.bsp.cpu, gpa)
        flags = int(defs.HvEnablePartitionVtlFlags.ENABLE_HARDWARE_HVPT)
        result = hvcall.enable_partition_vtl(machine.bsp, kernel.params, 1, flags)
        assert result.status == wanted
        assert bool(hv.partition.hvpt_vtls) is available
        machine.close()


# -- item 9: MBEC capability values ---------------------------------------------------------------
def test_mbec_values_as_openhcl_reports_them(bare: Bare) -> None:
    hv = hv_of(bare)
    assert defs.CAP_MBEC_VTL_MASK.extract(hv.capabilities) == 0b1
    result, (pstatus,) = hvcall.get_vp_registers(
        bare.vp, bare.kernel.params, [HvRegisterName.VSM_PARTITION_STATUS]
    )
    assert result.ok and defs.PSTATUS_MBEC_ENABLED_VTL_SET.extract(pstatus) == 0b11


# -- item 10: Disable calls, privileges, rep RCX, shared MISC_ENABLE, VINA, instruction bytes -----
def test_disable_calls_are_known_and_refused_from_vtl0(bare: Bare) -> None:
    pages = bare.kernel.params
    data = defs.DISABLE_PARTITION_VTL_INPUT.pack(defs.HV_PARTITION_ID_SELF, 1)
    result = hvcall.hypercall(bare.vp, pages, HvCallCode.DISABLE_PARTITION_VTL, data)
    assert result.status == HvStatus.ACCESS_DENIED
    data = defs.DISABLE_VP_VTL_INPUT.pack(defs.HV_PARTITION_ID_SELF, defs.HV_VP_INDEX_SELF, 0)
    result = hvcall.hypercall(bare.vp, pages, HvCallCode.DISABLE_VP_VTL, data)
    assert result.status == HvStatus.INVALID_PARAMETER  # VTL0 is never disabled
    with as_vtl(bare.vp, 1) as vp:  # VTL1 cannot disable itself either
        data = defs.DISABLE_PARTITION_VTL_INPUT.pack(defs.HV_PARTITION_ID_SELF, 1)
        result = hvcall.hypercall(vp, bare.monitor.params, HvCallCode.DISABLE_PARTITION_VTL, data)
        assert result.status == HvStatus.ACCESS_DENIED
    assert hv_of(bare).partition.vtl_enabled(1)


def test_synic_msrs_need_access_synic_regs(bare: Bare) -> None:
    hv = hv_of(bare)
    eax, ebx, _, edx = hv.cpuid(0x4000_0003)
    assert eax & defs.HvPartitionPrivilege.ACCESS_SYNIC_REGS
    assert (ebx << 32) & defs.HvPartitionPrivilege.ACCESS_VSM
    assert edx & 1 << 15  # XMM fast hypercall output
    hv.privileges &= ~int(defs.HvPartitionPrivilege.ACCESS_SYNIC_REGS)
    with pytest.raises(ThreadTerminated):
        bare.vp.rdmsr(HvMsr.SCONTROL)
    assert bare.kernel.exceptions[-1].vector == Vector.GP
    assert bare.vp.rdmsr(HvMsr.GUEST_OS_ID) != 0  # AccessHypercallMsrs is still held


def test_rep_call_updates_rcx_with_the_rep_start_index(bare: Bare) -> None:
    vp = bare.vp
    names = [int(HvRegisterName.VSM_VP_STATUS), int(HvRegisterName.VSM_PARTITION_STATUS)]
    vp.write(
        bare.kernel.params.in_va,
        defs.GET_SET_VP_REGISTERS_HEADER.pack(defs.HV_PARTITION_ID_SELF, defs.HV_VP_INDEX_SELF, 0)
        + b"".join(n.to_bytes(4, "little") for n in names),
    )
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=2)
    hvcall.raw_hypercall(vp, control, bare.kernel.params.in_gpa, bare.kernel.params.out_gpa)
    assert defs.INPUT_REP_START.extract(vp.rcx) == 2
    assert vp.rcx & ~defs.INPUT_REP_START.mask == control


def test_fast_get_vp_registers_returns_values_in_xmm(bare: Bare) -> None:
    """TLFS "XMM Fast Hypercall Output": output in the registers the input left free."""
    vp = bare.vp
    vp.rdx, vp.r8 = defs.HV_PARTITION_ID_SELF, defs.HV_VP_INDEX_SELF
    vp.xmm[0] = int(HvRegisterName.VSM_VP_STATUS)
    vp.rcx = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1, fast=True)
    vp.vmcall()
    assert vp.rax & 0xFFFF == HvStatus.SUCCESS
    value = vp.xmm[1] & (1 << 64) - 1
    assert defs.VPSTATUS_ENABLED_VTL_SET.extract(value) == 0b11


def test_misc_enable_is_shared_between_vtls(bare: Bare) -> None:
    vp = bare.vp
    vp.wrmsr(Msr.MISC_ENABLE, 0x851)
    with as_vtl(vp, 1):
        assert vp.rdmsr(Msr.MISC_ENABLE) == 0x851


def test_vina_auto_reset_happens_on_entry(bare: Bare) -> None:
    """TLFS vsm.md VINA: "automatically cleared on the next entry to the VTL"."""
    hv, vp = hv_of(bare), bare.vp
    with as_vtl(vp, 1) as v1:
        vina = defs.VINA_ENABLED.mask | defs.VINA_AUTO_RESET.mask
        vina = defs.VINA_VECTOR.insert(vina, 0x31)
        assert hvcall.set_vp_registers(
            v1, bare.monitor.params, [(HvRegisterName.VSM_VINA, vina)]
        ).ok
    status = bare.monitor.assist_gpa + defs.VP_ASSIST_VINA_STATUS_OFFSET
    bare.machine.ram.write(status, b"\x01")  # asserted
    monitor_call(vp, MON_NULL)  # an entry to VTL1 clears it; its own return does not set it
    assert bare.machine.ram.read(status, 1) == b"\x00"
    assert hv.states[vp.index][1].vina == vina


def test_memory_intercept_message_carries_instruction_bytes(bare: Bare) -> None:
    from vbsim.guest.bare import MON_PROTECT

    vp = bare.vp
    va, gpa = bare.kernel.space.alloc_data()
    assert monitor_call(vp, MON_PROTECT, gpa, 1) == 0  # read-only for VTL0
    with pytest.raises(ThreadTerminated):
        vp.write_u64(va, 1)
    payload = bare.machine.ram.read(bare.monitor.sim_gpa + 16, 0x50)
    fields = defs.MEMORY_INTERCEPT_MESSAGE.unpack(payload)
    assert defs.INTERCEPT_INSTRUCTION_LENGTH.extract(fields[1]) == 3
    assert fields[11] == 3 and fields[-1][:3] == bytes((0x48, 0x89, 0x00))  # mov [rax], rax
    assert fields[-2] == gpa and fields[-3] == va


# -- item 11: configurable statuses, and the partition's own ID -----------------------------------
def test_own_partition_id_is_accepted_under_the_hyperv_profile_only(bare: Bare) -> None:
    hv = hv_of(bare)

    def status_with(partition_id: int) -> int:
        header = defs.GET_SET_VP_REGISTERS_HEADER.pack(partition_id, defs.HV_VP_INDEX_SELF, 0)
        data = header + int(HvRegisterName.VSM_VP_STATUS).to_bytes(4, "little")
        return hvcall.hypercall(
            bare.vp, bare.kernel.params, HvCallCode.GET_VP_REGISTERS, data, rep_count=1
        ).status

    assert status_with(MODEL_PARTITION_ID) == HvStatus.SUCCESS
    assert status_with(42) == HvStatus.INVALID_PARTITION_ID
    hv.profile = OPENHCL
    assert status_with(MODEL_PARTITION_ID) == HvStatus.INVALID_PARTITION_ID


def test_enable_vp_vtl_with_invalid_target_is_invalid_parameter_in_both_profiles(
    bare: Bare,
) -> None:
    for profile in (hv_of(bare).profile, OPENHCL):
        hv_of(bare).profile = profile
        result = hvcall.enable_vp_vtl(bare.vp, bare.kernel.params, 0, bare.monitor.context())
        assert result.status == HvStatus.INVALID_PARAMETER, profile.name


def test_guest_os_ids_are_encoded_as_the_tlfs_says() -> None:
    """Issue 11 item 7: vendor in 62:48 (Microsoft = 1), OS ID in 47:40 (Windows NT = 4), major
    39:32, minor 31:24, service version 23:16, build 15:0 (TLFS "Reporting the Guest OS
    Identity"); the SK's value had the reserved vendor 0."""
    from vbsim.boot.chain import boot
    from vbsim.hv import defs
    from vbsim.policy import preset

    system = boot(preset("vbs"))
    assert system.machine is not None and system.machine.hv is not None
    for vtl in (0, 1):
        value = system.machine.hv.states[0][vtl].guest_os_id
        assert value >> 63 == 0  # a proprietary OS
        assert defs.GUEST_OS_VENDOR.extract(value) == 1
        assert defs.GUEST_OS_OS_ID.extract(value) == 4
        assert defs.GUEST_OS_MAJOR.extract(value) == 10
        assert defs.GUEST_OS_MINOR.extract(value) == 0
        assert defs.GUEST_OS_BUILD.extract(value) == 26100
    system.machine.close()
