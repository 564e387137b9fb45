"""The hypercall ABI and the VSM hypercalls, driven from guest code through ``vmcall``."""

from __future__ import annotations

import pytest
from tests.conftest import Bare, as_vtl, make_bare

from vbsim.guest import hvcall
from vbsim.guest.bare import GUEST_OS_ID, MON_PROTECT, monitor_call
from vbsim.hv import defs
from vbsim.hv.defs import HvCallCode, HvMapGpaFlags, HvRegisterName, HvStatus
from vbsim.hv.profile import OPENHCL
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.x86 import Vector
from vbsim.machine import Machine

SELF = defs.HV_PARTITION_ID_SELF


def status_of(result: hvcall.HypercallResult) -> HvStatus:
    return HvStatus(result.status)


def test_unknown_call_code(bare: Bare) -> None:
    result = hvcall.hypercall(bare.vp, bare.kernel.params, 0x7777)
    assert status_of(result) is HvStatus.INVALID_HYPERCALL_CODE


@pytest.mark.parametrize(
    ("rep_count", "rep_start", "code"),
    [
        (1, 0, HvCallCode.ENABLE_PARTITION_VTL),  # rep count on a simple call
        (0, 0, HvCallCode.GET_VP_REGISTERS),  # zero rep count on a rep call
        (2, 2, HvCallCode.GET_VP_REGISTERS),  # start index >= count
    ],
)
def test_rep_misuse_is_invalid_input(bare: Bare, rep_count: int, rep_start: int, code: int) -> None:
    result = hvcall.hypercall(
        bare.vp, bare.kernel.params, code, bytes(16), rep_count=rep_count, rep_start=rep_start
    )
    assert status_of(result) is HvStatus.INVALID_HYPERCALL_INPUT


@pytest.mark.parametrize("bit", [27, 30, 44, 47, 60, 63])
def test_reserved_input_bits_are_invalid_input(bare: Bare, bit: int) -> None:
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1) | (1 << bit)
    result = hvcall.raw_hypercall(
        bare.vp, control, bare.kernel.params.in_gpa, bare.kernel.params.out_gpa
    )
    assert status_of(result) is HvStatus.INVALID_HYPERCALL_INPUT


def test_misaligned_and_page_crossing_blocks(bare: Bare) -> None:
    pages = bare.kernel.params
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
    misaligned = hvcall.raw_hypercall(bare.vp, control, pages.in_gpa + 4, pages.out_gpa)
    assert status_of(misaligned) is HvStatus.INVALID_ALIGNMENT
    crossing = hvcall.raw_hypercall(bare.vp, control, pages.in_gpa + 4096 - 8, pages.out_gpa)
    assert status_of(crossing) is HvStatus.INVALID_ALIGNMENT


def test_parameter_block_in_vtl1_memory_raises_a_memory_intercept(bare: Bare) -> None:
    """TLFS hypercall-interface.md "Alignment Requirements": a parameter GPA the caller may not
    read (or, for output, write) makes the hypervisor generate a memory intercept; it never reads
    or writes that page on the caller's behalf.  The bare monitor answers with #GP."""
    vtl1_gpa = bare.monitor.params.in_gpa
    before = bare.machine.ram.read(bare.monitor.params.out_gpa, 64)
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
    with pytest.raises(ThreadTerminated):
        hvcall.raw_hypercall(bare.vp, control, vtl1_gpa, bare.kernel.params.out_gpa)
    kind, access, vtl, gpa, gva, _ = bare.monitor.log(bare.vp)[-1]
    assert (kind, access, vtl, gpa, gva) == (defs.HvMessageType.GPA_INTERCEPT, 0, 0, vtl1_gpa, 0)
    bare.vp.write(
        bare.kernel.params.in_va,
        defs.GET_SET_VP_REGISTERS_HEADER.pack(SELF, defs.HV_VP_INDEX_SELF, 0)
        + int(HvRegisterName.VSM_VP_STATUS).to_bytes(4, "little"),
    )
    with pytest.raises(ThreadTerminated):
        hvcall.raw_hypercall(
            bare.vp, control, bare.kernel.params.in_gpa, bare.monitor.params.out_gpa
        )
    kind, access, _, gpa, _, _ = bare.monitor.log(bare.vp)[-1]
    assert (kind, access, gpa) == (defs.HvMessageType.GPA_INTERCEPT, 1, bare.monitor.params.out_gpa)
    assert bare.machine.ram.read(bare.monitor.params.out_gpa, 64) == before


def test_parameter_block_outside_the_gpa_space_is_invalid_alignment(bare: Bare) -> None:
    """TLFS common status table: "The input or output GPA pointer is not within the bounds of
    the GPA space" → HV_STATUS_INVALID_ALIGNMENT."""
    control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
    beyond = bare.machine.ram.size + 4096
    result = hvcall.raw_hypercall(bare.vp, control, beyond, bare.kernel.params.out_gpa)
    assert status_of(result) is HvStatus.INVALID_ALIGNMENT


def test_hypercall_from_cpl3_raises_ud(bare: Bare) -> None:
    vp = bare.vp
    vp.set_cpl(3)
    with pytest.raises(ThreadTerminated):
        hvcall.hypercall(vp, bare.kernel.params, HvCallCode.GET_VP_REGISTERS, b"", rep_count=1)
    assert bare.kernel.exceptions[-1].vector == Vector.UD
    assert bare.trace.find(kind="hypercall", mechanism="cpl")


def test_hypercalls_need_guest_os_id_and_hypercall_page() -> None:
    machine = Machine(ram_size=16 << 20)
    from vbsim.guest.bare import BareKernel

    kernel = BareKernel.load(machine)
    vp = machine.bsp
    # Enabling the hypercall page before the guest OS ID is set does not take.
    vp.wrmsr(defs.HvMsr.HYPERCALL, kernel.params.in_gpa | 1)
    assert vp.rdmsr(defs.HvMsr.HYPERCALL) & 1 == 0
    with pytest.raises(ThreadTerminated):
        hvcall.hypercall(vp, kernel.params, HvCallCode.GET_VP_REGISTERS, b"", rep_count=1)
    assert kernel.exceptions[-1].vector == Vector.UD
    vp.wrmsr(defs.HvMsr.GUEST_OS_ID, GUEST_OS_ID)
    _, page_gpa = kernel.space.alloc_data()
    vp.wrmsr(defs.HvMsr.HYPERCALL, page_gpa | 1)
    assert vp.rdmsr(defs.HvMsr.HYPERCALL) & 1 == 1
    # The hypervisor placed its stubs: vmcall at offset 0 and the 64-bit VTL call at 0x0F.
    assert machine.ram.read(page_gpa, 3) == defs.X86_VMCALL
    assert machine.ram.read(page_gpa + 0x0F, 12) == bytes.fromhex("4889c8b9110000000f01c1c3")
    result, values = hvcall.get_vp_registers(
        vp, kernel.params, [HvRegisterName.VSM_PARTITION_STATUS]
    )
    assert result.ok and defs.PSTATUS_MAXIMUM_VTL.extract(values[0]) == 1


def test_vtl0_cannot_modify_its_own_protections(bare: Bare) -> None:
    _, gpa = bare.kernel.space.alloc_data()
    own = hvcall.modify_vtl_protection_mask(bare.vp, bare.kernel.params, [gpa >> 12], 0)
    assert status_of(own) is HvStatus.INVALID_PARAMETER
    higher = hvcall.modify_vtl_protection_mask(
        bare.vp, bare.kernel.params, [gpa >> 12], 0, target_vtl=1
    )
    assert status_of(higher) is HvStatus.ACCESS_DENIED
    assert bare.machine.slat is not None
    assert bare.machine.slat.rights(0, gpa >> 12) == 0xF


def test_vtl1_protection_flag_validation(bare: Bare) -> None:
    _, gpa = bare.kernel.space.alloc_data()
    with as_vtl(bare.vp, 1) as vp:
        pages = bare.monitor.params
        kx_only = hvcall.modify_vtl_protection_mask(
            vp, pages, [gpa >> 12], int(HvMapGpaFlags.READABLE | HvMapGpaFlags.KERNEL_EXECUTABLE)
        )
        assert status_of(kx_only) is HvStatus.INVALID_REGISTER_VALUE  # KX && !UX
        write_no_read = hvcall.modify_vtl_protection_mask(
            vp, pages, [gpa >> 12], int(HvMapGpaFlags.WRITABLE)
        )
        assert status_of(write_no_read) is HvStatus.INVALID_REGISTER_VALUE
        adjustable = hvcall.modify_vtl_protection_mask(vp, pages, [gpa >> 12], 0x8001)
        assert status_of(adjustable) is HvStatus.INVALID_REGISTER_VALUE
        beyond = hvcall.modify_vtl_protection_mask(vp, pages, [gpa >> 12, 1 << 40], 1)
        assert status_of(beyond) is HvStatus.INVALID_PARAMETER and beyond.reps == 1
    assert bare.machine.slat is not None
    assert bare.machine.slat.rights(0, gpa >> 12) == 1  # the first rep took effect


def test_enable_twice(bare: Bare) -> None:
    again = hvcall.enable_partition_vtl(bare.vp, bare.kernel.params, 1)
    assert status_of(again) is HvStatus.INVALID_VTL_STATE
    vp_again = hvcall.enable_vp_vtl(bare.vp, bare.kernel.params, 1, bare.monitor.context())
    assert status_of(vp_again) is HvStatus.VTL_ALREADY_ENABLED
    bad_vtl = hvcall.enable_partition_vtl(bare.vp, bare.kernel.params, 5)
    assert status_of(bad_vtl) is HvStatus.INVALID_PARAMETER  # kvm-unit-tests' expectation
    hv = bare.machine.hv
    assert hv is not None
    hv.profile = OPENHCL  # OpenHCL maps an invalid target VTL to AccessDenied
    bad_vtl = hvcall.enable_partition_vtl(bare.vp, bare.kernel.params, 5)
    assert status_of(bad_vtl) is HvStatus.ACCESS_DENIED


def test_vtl_call_and_return_rules() -> None:
    machine = Machine(ram_size=16 << 20)
    from vbsim.guest.bare import BareKernel, enable_hypercalls

    kernel = BareKernel.load(machine)
    vp = machine.bsp
    _, page = kernel.space.alloc_data()
    enable_hypercalls(vp.cpu, page)
    with pytest.raises(ThreadTerminated):
        hvcall.vtl_call(vp)  # no higher VTL enabled: #UD
    assert kernel.exceptions[-1].vector == Vector.UD
    with pytest.raises(ThreadTerminated):
        hvcall.vtl_return(vp)  # return from the lowest VTL: #UD
    assert kernel.exceptions[-1].vector == Vector.UD


def test_vtl_call_with_nonzero_control_is_ud(bare: Bare) -> None:
    with pytest.raises(ThreadTerminated):
        hvcall.vtl_call(bare.vp, control=1)
    assert bare.kernel.exceptions[-1].vector == Vector.UD
    assert bare.vp.vtl == 0


def test_vsm_registers(bare: Bare) -> None:
    vp = bare.vp
    names = [
        HvRegisterName.VSM_CODE_PAGE_OFFSETS,
        HvRegisterName.VSM_VP_STATUS,
        HvRegisterName.VSM_PARTITION_STATUS,
        HvRegisterName.VSM_CAPABILITIES,
    ]
    result, values = hvcall.get_vp_registers(vp, bare.kernel.params, names)
    assert result.ok and result.reps == 4
    assert defs.CPO_VTL_CALL_OFFSET.extract(values[0]) == 0x0F
    assert defs.CPO_VTL_RETURN_OFFSET.extract(values[0]) == 0x26
    assert defs.VPSTATUS_ACTIVE_VTL.extract(values[1]) == 0
    assert defs.VPSTATUS_ENABLED_VTL_SET.extract(values[1]) == 0b11
    assert defs.PSTATUS_ENABLED_VTL_SET.extract(values[2]) == 0b11
    assert defs.CAP_DENY_LOWER_VTL_STARTUP.extract(values[3]) == 1


def test_vtl0_register_access_rules(bare: Bare) -> None:
    vp = bare.vp
    own, _ = hvcall.get_vp_registers(vp, bare.kernel.params, [HvRegisterName.RIP])
    assert status_of(own) is HvStatus.ACCESS_DENIED  # own architectural registers
    higher, _ = hvcall.get_vp_registers(vp, bare.kernel.params, [HvRegisterName.RIP], target_vtl=1)
    assert status_of(higher) is HvStatus.ACCESS_DENIED
    config = hvcall.set_vp_registers(
        vp, bare.kernel.params, [(HvRegisterName.VSM_PARTITION_CONFIG, 0)], target_vtl=1
    )
    assert status_of(config) is HvStatus.ACCESS_DENIED
    unknown, _ = hvcall.get_vp_registers(vp, bare.kernel.params, [0x0BAD_0BAD])
    assert status_of(unknown) is HvStatus.INVALID_PARAMETER  # kvm-unit-tests' expectation
    hv = bare.machine.hv
    assert hv is not None
    hv.profile = OPENHCL  # hvdef's UnknownRegisterName
    unknown, _ = hvcall.get_vp_registers(vp, bare.kernel.params, [0x0BAD_0BAD])
    assert status_of(unknown) is HvStatus.UNKNOWN_REGISTER_NAME
    bank1 = vp.banks[1]
    assert bank1 is not None
    with as_vtl(vp, 1):
        result, values = hvcall.get_vp_registers(
            vp, bare.monitor.params, [HvRegisterName.CR3, HvRegisterName.RIP], target_vtl=0
        )
        assert result.ok
    bank0 = vp.banks[0]
    assert bank0 is not None
    assert values == [bank0.cr3, bank0.rip]
    assert values[0] != bank1.cr3


def test_partition_config_write_once(bare: Bare) -> None:
    with as_vtl(bare.vp, 1) as vp:
        pages = bare.monitor.params
        result, (config,) = hvcall.get_vp_registers(
            vp, pages, [HvRegisterName.VSM_PARTITION_CONFIG]
        )
        assert result.ok and defs.PCONFIG_ENABLE_VTL_PROTECTION.extract(config) == 1
        cleared = config & ~defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
        assert (
            status_of(
                hvcall.set_vp_registers(vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, cleared)])
            )
            is HvStatus.INVALID_REGISTER_VALUE
        )
        # Only EnableVtlProtection is write-once (TLFS vsm.md): VTL1 may clear
        # ZeroMemoryOnReset and DenyLowerVtlStartup again, and set them back.
        for bit in (defs.PCONFIG_DENY_LOWER_VTL_STARTUP, defs.PCONFIG_ZERO_MEMORY_ON_RESET):
            assert (
                status_of(
                    hvcall.set_vp_registers(
                        vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, config & ~bit.mask)]
                    )
                )
                is HvStatus.SUCCESS
            )
            assert hvcall.set_vp_registers(
                vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, config)]
            ).ok
        other_mask = defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(config, 0x3)
        assert (
            status_of(
                hvcall.set_vp_registers(
                    vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, other_mask)]
                )
            )
            is HvStatus.INVALID_REGISTER_VALUE
        )
        reserved = config | (1 << 40)
        assert (
            status_of(
                hvcall.set_vp_registers(
                    vp, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, reserved)]
                )
            )
            is HvStatus.INVALID_REGISTER_VALUE
        )


def test_default_mask_must_include_read_write() -> None:
    env = make_bare()
    # A fresh VTL2-less partition: re-enable protection on a machine whose VTL1 never set it.
    from vbsim.hv.calls.registers import Access, _set_partition_config

    hv = env.machine.hv
    assert hv is not None
    hv.partition.config[1] = 0
    status = _set_partition_config(
        Access(hv, env.vp, 1, 1),
        defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
        | defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(0, 0x1),
    )
    assert status is HvStatus.INVALID_REGISTER_VALUE


def test_translate_virtual_address(bare: Bare) -> None:
    vp = bare.vp
    va, gpa = bare.kernel.space.alloc_data()
    flags = int(defs.HvTranslateGvaControlFlags.VALIDATE_READ)
    result, code, gpa_page = hvcall.translate_virtual_address(vp, bare.kernel.params, va, flags)
    assert result.ok and code == 0 and gpa_page == gpa >> 12
    result, code, _ = hvcall.translate_virtual_address(vp, bare.kernel.params, 0x1234_0000, flags)
    assert result.ok and code == defs.HvTranslateGvaResultCode.PAGE_NOT_PRESENT
    result, _, _ = hvcall.translate_virtual_address(vp, bare.kernel.params, va, flags, target_vtl=1)
    assert status_of(result) is HvStatus.ACCESS_DENIED
    assert monitor_call(vp, MON_PROTECT, gpa, 0) == 0
    result, code, _ = hvcall.translate_virtual_address(vp, bare.kernel.params, va, flags)
    assert result.ok and code == defs.HvTranslateGvaResultCode.INTERCEPT


def test_start_vp_denied_to_vtl0() -> None:
    env = make_bare(vps=2)
    context = env.kernel.space.initial_state(env.kernel.space.install("bare0.exception"))
    from vbsim.hv.calls.context import encode_context

    result = hvcall.start_virtual_processor(
        env.vp, env.kernel.params, 1, 0, encode_context(context)
    )
    assert status_of(result) is HvStatus.ACCESS_DENIED  # DenyLowerVtlStartup
    assert not env.machine.vps[1].started
    assert env.trace.find(mechanism="deny-lower-vtl-startup")


def test_cpl3_msr_and_cr_access_is_gp(bare: Bare) -> None:
    vp = bare.vp
    vp.set_cpl(3)
    with pytest.raises(ThreadTerminated):
        vp.wrmsr(defs.HvMsr.GUEST_OS_ID, 0)
    assert bare.kernel.exceptions[-1].vector == Vector.GP
