"""The conformance cases: each mirrors a named upstream test, and says where its expectation comes
from.  Sources (read, not copied):

- kvm-unit-tests ``x86/hyperv_vsm.c`` (vianpl/kvm-unit-tests), abbreviated ``kut``;
- OpenVMM OpenTMK ``opentmk/src/tests/hyperv/*.rs`` and ``vm/hv1/hv1_hypercall``;
- the TLFS markdown (MicrosoftDocs/Virtualization-Documentation,
  ``virtualization/hyper-v-on-windows/tlfs/``).

A case raises :class:`CaseFailure` with what it saw when the model disagrees.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vbsim.conformance.harness import Partition, as_vtl, partition
from vbsim.guest import hvcall
from vbsim.guest.bare import MON_NULL, MON_PROTECT, SINT0_VECTOR, enable_hypercalls, monitor_call
from vbsim.hv import defs
from vbsim.hv.defs import HvCallCode, HvRegisterName, HvStatus
from vbsim.hv.defs import HvTranslateGvaControlFlags as Xlate
from vbsim.hw import code
from vbsim.hw.faults import GuestTermination
from vbsim.hw.x86 import PAGE_SHIFT, Cr0, Efer, Pte, Vector

SELF = defs.HV_PARTITION_ID_SELF
VP_SELF = defs.HV_VP_INDEX_SELF
KUT = "kvm-unit-tests x86/hyperv_vsm.c"
TMK = "OpenVMM opentmk tests/hyperv"
TLFS = "TLFS"


class CaseFailure(AssertionError):
    """The model's behaviour differs from the upstream expectation."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CaseFailure(what)


def status(result: hvcall.HypercallResult) -> str:
    return result.status_name


def expect_status(result: hvcall.HypercallResult, wanted: HvStatus, what: str) -> None:
    expect(result.status == wanted, f"{what}: {status(result)}, expected {wanted.name}")


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    area: str
    source: str  # the upstream test this case mirrors
    run: Callable[[], None]


CASES: list[Case] = []


def case(
    case_id: str, area: str, source: str
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        CASES.append(Case(case_id, area, source, fn))
        return fn

    return register


def _get(env: Partition, name: int, vp_index: int = VP_SELF) -> int:
    result, values = hvcall.get_vp_registers(
        env.vp.cpu, env.kernel.params, [name], vp_index=vp_index
    )
    expect(result.ok, f"GetVpRegisters(0x{name:x}): {status(result)}")
    return values[0]


# -- initial VSM status ---------------------------------------------------------------------------
@case("initial-status", "vsm status", f"{KUT} test_vsm_initial_status")
def initial_status() -> None:
    env = partition(vsm=False)
    try:
        caps = _get(env, HvRegisterName.VSM_CAPABILITIES)
        pstatus = _get(env, HvRegisterName.VSM_PARTITION_STATUS)
        expect(defs.PSTATUS_ENABLED_VTL_SET.extract(pstatus) == 0b1, "only VTL0 enabled")
        expect(defs.PSTATUS_MAXIMUM_VTL.extract(pstatus) >= 1, "MaximumVtl >= 1")
        mbec_set = defs.PSTATUS_MBEC_ENABLED_VTL_SET.extract(pstatus)
        expect(mbec_set & ~defs.CAP_MBEC_VTL_MASK.extract(caps) == 0, "MBEC set within mask")
        for vp in env.machine.vps:
            result, (vpstatus,) = hvcall.get_vp_registers(
                vp.cpu, env.kernel.params, [HvRegisterName.VSM_VP_STATUS]
            )
            expect(result.ok, f"VP{vp.index} VsmVpStatus: {status(result)}")
            expect(defs.VPSTATUS_ACTIVE_VTL.extract(vpstatus) == 0, f"VP{vp.index} in VTL0")
            expect(defs.VPSTATUS_ENABLED_VTL_SET.extract(vpstatus) == 0b1, "VTL0 only on VP")
    finally:
        env.close()


@case("capabilities", "vsm status", "OpenVMM hardware_cvm/mod.rs VsmCapabilities")
def capabilities() -> None:
    env = partition(vsm=False)
    try:
        caps = _get(env, HvRegisterName.VSM_CAPABILITIES)
        expect(defs.CAP_MBEC_VTL_MASK.extract(caps) == 0b1, "MbecVtlMask is the VTL0 bit")
        expect(bool(defs.CAP_DENY_LOWER_VTL_STARTUP.extract(caps)), "DenyLowerVtlStartup")
        eax, ebx, _, _ = env.hv.cpuid(0x4000_0003)
        privileges = eax | ebx << 32
        for need in (
            defs.HvPartitionPrivilege.ACCESS_VSM,
            defs.HvPartitionPrivilege.ACCESS_VP_REGISTERS,
        ):
            expect(bool(privileges & need), f"CPUID 0x40000003 reports {need.name}")
    finally:
        env.close()


@case("mbec-status", "vsm status", "OpenVMM hardware_cvm/mod.rs VsmPartitionStatus/VpStatus")
def mbec_status() -> None:
    env = partition()
    try:
        pstatus = _get(env, HvRegisterName.VSM_PARTITION_STATUS)
        expect(
            defs.PSTATUS_MBEC_ENABLED_VTL_SET.extract(pstatus) == 0b11,
            "MbecEnabledVtlSet lists every enabled VTL once VTL1 enabled MBEC",
        )
        with as_vtl(env.vp, 1) as vp:
            pages = env.monitor.params
            config = defs.SECCFG_MBEC_ENABLED.mask
            result = hvcall.set_vp_registers(
                vp.cpu, pages, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, config)]
            )
            expect(result.ok, f"SecureConfigVtl0.MbecEnabled: {status(result)}")
            result, (vpstatus,) = hvcall.get_vp_registers(
                vp.cpu, pages, [HvRegisterName.VSM_VP_STATUS]
            )
            expect(bool(defs.VPSTATUS_ACTIVE_MBEC_ENABLED.extract(vpstatus)), "ActiveMbec (VTL1)")
    finally:
        env.close()


@case("hvpt-surface", "vsm status", "OpenVMM vm/hv1/hvdef HVPT fields; hardware_cvm/mod.rs")
def hvpt_surface() -> None:
    """HVPT goes through hvdef's published surface (issue 11 item 8): the capability bits, the
    EnablePartitionVtl flag, and HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled, which the
    hypervisor refuses for a VTL enabled without the flag (as OpenHCL does) — and without which
    the model's HLAT-root register is refused too (the bit is the switch, the register only says
    where the tables are)."""
    from vbsim.hw import hlat

    env = partition()  # VTL1 enabled with EnableMbec only
    try:
        caps = _get(env, HvRegisterName.VSM_CAPABILITIES)
        expect(bool(defs.CAP_HW_HVPT_AVAILABLE.extract(caps)), "HardwareHvptAvailable reported")
        expect(defs.CAP_HW_HVPT_RANGE_BITS.extract(caps) > 0, "HardwareHvptRangeBits non-zero")
        with as_vtl(env.vp, 1) as vp:
            pages = env.monitor.params
            config = defs.SECCFG_HW_HVPT_ENABLED.mask
            result = hvcall.set_vp_registers(
                vp.cpu, pages, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, config)]
            )
            expect_status(
                result, HvStatus.INVALID_REGISTER_VALUE, "HardwareHvptEnabled without the flag"
            )
            control = hlat.CONTROL_ENABLE | 1 << hlat.CONTROL_PREFIX_SHIFT | pages.in_gpa
            result = hvcall.set_vp_registers(
                vp.cpu, pages, [(hlat.HV_REGISTER_MODEL_HLAT_CONTROL, control)], target_vtl=0
            )
            expect_status(result, HvStatus.INVALID_VTL_STATE, "HLAT root without HVPT enabled")
            layer = env.vp.layers[0]
            expect(layer is not None and layer.hlat is None, "VTL0 translates without HLAT")
    finally:
        env.close()


# -- EnablePartitionVtl / EnableVpVtl negative cases --------------------------------------------
@case("enable-partition-vtl-neg", "enable", f"{KUT} test_vsm_enable_partition_vtl_negative")
def enable_partition_vtl_negative() -> None:
    env = partition(vsm=False)
    try:
        pages = env.kernel.params
        maximum = defs.PSTATUS_MAXIMUM_VTL.extract(_get(env, HvRegisterName.VSM_PARTITION_STATUS))

        def call(partition_id: int, vtl: int, flags: int = 0) -> hvcall.HypercallResult:
            data = defs.ENABLE_PARTITION_VTL_INPUT.pack(partition_id, vtl, flags)
            return hvcall.hypercall(env.vp.cpu, pages, HvCallCode.ENABLE_PARTITION_VTL, data)

        expect_status(call(42, 1), HvStatus.INVALID_PARTITION_ID, "bad partition ID")
        expect_status(call(SELF, 0), HvStatus.INVALID_PARAMETER, "VTL0 already enabled")
        expect_status(call(SELF, maximum + 1), HvStatus.INVALID_PARAMETER, "maximum VTL")
        env.hv.mbec_available = False  # the capability then has no VTL in MbecVtlMask
        expect(defs.CAP_MBEC_VTL_MASK.extract(env.hv.capabilities) == 0, "no MBEC capability")
        expect_status(call(SELF, 1, 1), HvStatus.INVALID_PARAMETER, "MBEC not allowed")
    finally:
        env.close()


@case("enable-vp-vtl-neg", "enable", f"{KUT} test_vsm_enable_vp_vtl_negative")
def enable_vp_vtl_negative() -> None:
    env = partition(vsm=False)
    try:
        pages = env.kernel.params
        context = bytes(defs.INITIAL_VP_CONTEXT.size)

        def call(partition_id: int, vp_index: int, vtl: int) -> hvcall.HypercallResult:
            data = defs.ENABLE_VP_VTL_HEADER.pack(partition_id, vp_index, vtl) + context
            return hvcall.hypercall(env.vp.cpu, pages, HvCallCode.ENABLE_VP_VTL, data)

        expect_status(call(42, VP_SELF, 1), HvStatus.INVALID_PARTITION_ID, "bad partition ID")
        expect_status(call(SELF, 0xFFFF_FFFF, 1), HvStatus.INVALID_VP_INDEX, "bad VP index")
        expect_status(call(SELF, VP_SELF, 0), HvStatus.INVALID_PARAMETER, "VTL0 already enabled")
    finally:
        env.close()


@case("enable-vp-vtl-other-vp", "enable", f"{KUT} init_vsm (other VPs cannot self-enable)")
def enable_vp_vtl_other_vp() -> None:
    env = partition(vps=2)
    try:
        ap = env.machine.vps[1]
        _, gpa = env.kernel.space.alloc_data()
        enable_hypercalls(ap.cpu, gpa)
        result = hvcall.enable_vp_vtl(ap.cpu, env.kernel.params, 1, env.monitor.context())
        expect(not result.ok, f"VP1's VTL0 enabled VTL1 on itself: {status(result)}")
        with as_vtl(env.vp, 1) as vp:  # VTL1 orchestrates its own enablement
            result = hvcall.enable_vp_vtl(
                vp.cpu, env.monitor.params, 1, env.monitor.context(), vp_index=1
            )
        expect(result.ok, f"VTL1 enabling VTL1 on VP1: {status(result)}")
        vpstatus = _get(env, HvRegisterName.VSM_VP_STATUS, vp_index=1)
        expect(defs.VPSTATUS_ENABLED_VTL_SET.extract(vpstatus) == 0b11, "VP1 has VTL0 and VTL1")
    finally:
        env.close()


@case("disable-vtl-from-vtl0", "enable", f"{TLFS} HvCallEnableVpVtl restrictions (mirrored)")
def disable_vtl_from_vtl0() -> None:
    env = partition()
    try:
        pages = env.kernel.params
        data = defs.DISABLE_PARTITION_VTL_INPUT.pack(SELF, 1)
        result = hvcall.hypercall(env.vp.cpu, pages, HvCallCode.DISABLE_PARTITION_VTL, data)
        expect_status(result, HvStatus.ACCESS_DENIED, "DisablePartitionVtl(1) from VTL0")
        data = defs.DISABLE_VP_VTL_INPUT.pack(SELF, VP_SELF, 1)
        result = hvcall.hypercall(env.vp.cpu, pages, HvCallCode.DISABLE_VP_VTL, data)
        expect_status(result, HvStatus.ACCESS_DENIED, "DisableVpVtl(1) from VTL0")
    finally:
        env.close()


# -- Get/SetVpRegisters negative cases -------------------------------------------------------------
def _get_set_negative(fast: bool) -> None:
    env = partition()
    try:
        vp, pages = env.vp, env.kernel.params
        names = [int(HvRegisterName.CR0), int(HvRegisterName.CR3), int(HvRegisterName.CR4)]

        def both(vp_index: int, vtl: int, regs: list[int]) -> tuple[int, int]:
            header = defs.GET_SET_VP_REGISTERS_HEADER.pack(SELF, vp_index, vtl)
            got = _registers_call(env, HvCallCode.GET_VP_REGISTERS, header, regs, fast)
            put = _registers_call(env, HvCallCode.SET_VP_REGISTERS, header, regs, fast)
            return got, put

        vtl0 = defs.INPUT_VTL_USE_TARGET.mask | 0
        vtl1 = defs.INPUT_VTL_USE_TARGET.mask | 1
        bad_vtl = defs.INPUT_VTL_USE_TARGET.mask | 0xF
        got, put = both(0xACAC_ACAC, vtl0, names)
        expect(got == put == HvStatus.INVALID_VP_INDEX, f"bad VP index: {got:#x}/{put:#x}")
        got, put = both(VP_SELF, bad_vtl, names)
        expect(got != 0 and put != 0, "bad VTL index must fail")
        got, put = both(VP_SELF, vtl1, names)
        expect(got == put == HvStatus.ACCESS_DENIED, f"VTL1 from VTL0: {got:#x}/{put:#x}")
        got, put = both(VP_SELF, vtl0, [0xACAC_ACAC, *names[1:]])
        expect(got == put == HvStatus.INVALID_PARAMETER, f"bad register: {got:#x}/{put:#x}")
        del vp, pages
    finally:
        env.close()


def _registers_call(env: Partition, code_: int, header: bytes, names: list[int], fast: bool) -> int:
    vp = env.vp
    count = len(names)
    if fast:
        # XMM fast input: the 16-byte header in RDX:R8, names packed four to an XMM register,
        # then (Set) one value per XMM register (TLFS "XMM Fast Hypercall Input").
        vp.rdx, vp.r8 = struct.unpack("<QQ", header)
        raw = b"".join(n.to_bytes(4, "little") for n in names).ljust(16 * ((count + 3) // 4), b"\0")
        if code_ == HvCallCode.SET_VP_REGISTERS:
            # Set elements are 32 bytes each (name, padding, value): two XMM registers.
            raw = b"".join(defs.SET_VP_REGISTERS_ELEMENT.pack(n, bytes(16)) for n in names)
        xmm = [int.from_bytes(raw[i : i + 16], "little") for i in range(0, len(raw), 16)]
        vp.xmm[: len(xmm)] = xmm
        vp.rcx = hvcall.input_value(code_, rep_count=count, fast=True)
        vp.vmcall()
        return vp.rax & 0xFFFF
    if code_ == HvCallCode.SET_VP_REGISTERS:
        data = header + b"".join(defs.SET_VP_REGISTERS_ELEMENT.pack(n, bytes(16)) for n in names)
    else:
        data = header + b"".join(n.to_bytes(4, "little") for n in names)
    result = hvcall.hypercall(vp.cpu, env.kernel.params, code_, data, rep_count=count)
    return result.status


@case("get-set-registers-neg", "registers", f"{KUT} test_get_set_vp_registers_negative(false)")
def get_set_negative_slow() -> None:
    _get_set_negative(fast=False)


@case("get-set-registers-neg-fast", "registers", f"{KUT} test_get_set_vp_registers_negative(true)")
def get_set_negative_fast() -> None:
    _get_set_negative(fast=True)


@case("get-registers-xmm-overflow", "registers", f"{KUT} GetRegisters: XMM count overflow")
def xmm_overflow() -> None:
    env = partition()
    try:
        vp = env.vp
        for code_ in (HvCallCode.GET_VP_REGISTERS, HvCallCode.SET_VP_REGISTERS):
            vp.rdx, vp.r8 = SELF, VP_SELF
            vp.rcx = hvcall.input_value(code_, rep_count=5, fast=True)
            vp.vmcall()
            expect(vp.rax & 0xFFFF != 0, f"{code_.name} with 5 XMM registers must fail")
    finally:
        env.close()


@case("rep-rcx-update", "abi", f"{TLFS} hypercall-interface Volatile Registers; hv1_hypercall")
def rep_rcx_update() -> None:
    env = partition()
    try:
        names = [int(HvRegisterName.VSM_VP_STATUS), int(HvRegisterName.VSM_CAPABILITIES)]
        result, _ = hvcall.get_vp_registers(env.vp.cpu, env.kernel.params, names)
        expect(result.ok and result.reps == 2, f"two reps: {status(result)} {result.reps}")
        expect(defs.INPUT_REP_START.extract(result.control) == 2, "RCX: rep start index 2")
        expect(defs.INPUT_REP_COUNT.extract(result.control) == 2, "RCX keeps the rep count")
    finally:
        env.close()


@case("vtl-call-bad-control", "abi", "OpenVMM hv1_hypercall HvVtlCall/HvVtlReturn; TLFS vsm.md")
def vtl_call_bad_control() -> None:
    env = partition()
    try:
        vp = env.vp
        for control in (HvCallCode.VTL_CALL | 0x10000, HvCallCode.VTL_RETURN | 1 << 32):
            before = len(env.kernel.exceptions)
            vp.rcx, vp.rax = int(control), 0
            with contextlib.suppress(GuestTermination):
                vp.vmcall()
            got = env.kernel.exceptions[before:]
            expect(
                bool(got) and got[-1].vector == Vector.UD,
                f"RCX=0x{int(control):x}: #UD expected, got status 0x{vp.rax & 0xFFFF:x}",
            )
    finally:
        env.close()


@case("privileges", "abi", f"{TLFS} hv_partition_privilege_mask AccessVSM/AccessVpRegisters")
def privileges() -> None:
    env = partition(vsm=False)
    try:
        env.hv.privileges &= ~int(defs.HvPartitionPrivilege.ACCESS_VP_REGISTERS)
        result, _ = hvcall.get_vp_registers(
            env.vp.cpu, env.kernel.params, [HvRegisterName.VSM_VP_STATUS]
        )
        expect_status(result, HvStatus.ACCESS_DENIED, "GetVpRegisters without AccessVpRegisters")
        env.hv.privileges &= ~int(defs.HvPartitionPrivilege.ACCESS_VSM)
        result = hvcall.enable_partition_vtl(env.vp.cpu, env.kernel.params, 1)
        expect_status(result, HvStatus.ACCESS_DENIED, "EnablePartitionVtl without AccessVSM")
    finally:
        env.close()


@case("param-page-intercept", "abi", f"{TLFS} hypercall-interface Alignment Requirements")
def param_page_intercept() -> None:
    env = partition()
    try:
        control = hvcall.input_value(HvCallCode.GET_VP_REGISTERS, rep_count=1)
        gpa = env.monitor.params.in_gpa
        with contextlib.suppress(GuestTermination):
            hvcall.raw_hypercall(env.vp.cpu, control, gpa, env.kernel.params.out_gpa)
        log = env.monitor.log(env.vp)
        expect(bool(log) and log[-1][0] == defs.HvMessageType.GPA_INTERCEPT, "GPA intercept")
        expect(log[-1][3] == gpa, f"intercept GPA 0x{log[-1][3]:x}, expected 0x{gpa:x}")
        beyond = env.machine.ram.size + (1 << PAGE_SHIFT)
        result = hvcall.raw_hypercall(env.vp.cpu, control, beyond, env.kernel.params.out_gpa)
        expect_status(result, HvStatus.INVALID_ALIGNMENT, "GPA outside the GPA space")
    finally:
        env.close()


# -- VP isolation across VTLs -------------------------------------------------------------------
@case("vp-isolation", "isolation", f"{KUT} test_vtl_vp_isolation (rflags, paging, fs, tpr)")
def vp_isolation() -> None:
    env = partition()
    try:
        vp = env.vp
        b0, b1 = vp.banks[0], vp.banks[1]
        assert b0 is not None and b1 is not None
        b0.rflags |= 1 << 16  # RF
        vp.mov_to_cr(8, 1)
        vp.wrmsr(0xC000_0100, 0x1234_5000)  # IA32_FS_BASE
        with as_vtl(vp, 1):
            expect(not vp.p.rflags & 1 << 16, "VTL1 RFLAGS.RF isolated")
            expect(vp.p.cr3 != b0.cr3, "VTL1 CR3 differs")
            expect(vp.rdmsr(0xC000_0100) != 0x1234_5000, "VTL1 FS base isolated")
            expect(vp.cpu.read_cr(8) == 0, "VTL1 TPR isolated")
            vp.mov_to_cr(8, 2)
        expect(vp.cpu.read_cr(8) == 1, "VTL0 TPR isolated from VTL1's write")
        vp.xmm[0] = 0xFEED
        with as_vtl(vp, 1):
            expect(vp.xmm[0] == 0xFEED, "XMM is shared")
    finally:
        env.close()


# -- TLB locking -----------------------------------------------------------------------------------
@case("tlb-locking", "tlb", f"{KUT} test_vtl_tlb_locking")
def tlb_locking() -> None:
    env = partition()
    try:
        vp = env.vp
        va, gpa = env.kernel.space.alloc_data()
        vp.read_u64(va)  # cache the translation
        with as_vtl(vp, 1) as v1:
            locked = defs.SECCFG_TLB_LOCKED.mask | defs.SECCFG_MBEC_ENABLED.mask
            result = hvcall.set_vp_registers(
                v1.cpu, env.monitor.params, [(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0, locked)]
            )
            expect(result.ok, f"lock VTL0's TLB: {status(result)}")
        space = vp.p.cr3
        data = defs.FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT.pack(space, 0, 1)
        result = hvcall.hypercall(
            vp.cpu, env.kernel.params, HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, data
        )
        expect(result.ok, f"flush while locked: {status(result)}")
        state = env.hv.states[vp.index][0]
        expect(state.deferred_flush, "the flush waits for the lock")
        monitor_call(vp.cpu, MON_NULL)  # VTL1's VtlReturn releases the lock
        expect(not state.deferred_flush, "the deferred flush ran at the VTL return")
        del gpa
    finally:
        env.close()


# -- Cross-VTL interrupts --------------------------------------------------------------------------
@case("vtl0-irq-waits", "interrupts", f"{KUT} test_vtl0_to_vtl1_ipi / vtl0_timer_test")
def vtl0_irq_waits() -> None:
    env = partition()
    try:
        vp = env.vp
        with as_vtl(vp, 1):
            env.hv.assert_interrupt(vp, 0, 0x40)
            expect(env.kernel.exceptions == [], "VTL0 interrupt did not preempt VTL1")
        with contextlib.suppress(GuestTermination):
            monitor_call(vp.cpu, MON_NULL)
        expect(
            bool(env.kernel.exceptions) and env.kernel.exceptions[-1].vector == 0x40,
            "delivered on return to VTL0",
        )
    finally:
        env.close()


@case("vtl1-irq-preempts", "interrupts", f"{KUT} test_vtl1_to_vtl0_ipi / vtl1_timer_test")
def vtl1_irq_preempts() -> None:
    env = partition()
    try:
        vp = env.vp
        start = len(env.trace.events)
        with contextlib.suppress(GuestTermination):  # the monitor's SINT0 handler injects #GP
            env.hv.assert_interrupt(vp, 1, SINT0_VECTOR)
        entered = [e for e in env.trace.events[start:] if e.mechanism == "vtl-entry"]
        expect(bool(entered) and entered[0].detail["to_vtl"] == 1, "immediate switch to VTL1")
    finally:
        env.close()


@case("vtl1-irq-tpr-masked", "interrupts", f"{TLFS} vsm.md Interrupts (TPR/CR8 holds pending)")
def vtl1_irq_tpr_masked() -> None:
    env = partition()
    try:
        vp = env.vp
        bank1 = vp.banks[1]
        assert bank1 is not None
        bank1.cr8 = SINT0_VECTOR >> 4  # VTL1's TPR masks the SINT0 priority class
        start = len(env.trace.events)
        env.hv.assert_interrupt(vp, 1, SINT0_VECTOR)
        switched = [e for e in env.trace.events[start:] if e.mechanism == "vtl-entry"]
        expect(vp.vtl == 0 and not switched, "no VTL switch while VTL1's TPR masks it")
        pending = env.hv.states[vp.index][1].pending_interrupts
        expect(list(pending) == [SINT0_VECTOR], "the interrupt stays pending for VTL1")
    finally:
        env.close()


# -- TranslateVirtualAddress -----------------------------------------------------------------------
@case("translate-va", "translate", f"{KUT} test_vtl_translate_va")
def translate_va() -> None:
    env = partition()
    try:
        vp = env.vp
        va, gpa = env.kernel.space.alloc_data()
        flags = int(Xlate.VALIDATE_READ | Xlate.VALIDATE_WRITE | Xlate.PRIVILEGE_EXEMPT)
        result, code_, page = hvcall.translate_virtual_address(
            vp.cpu, env.kernel.params, va, flags, 0
        )
        expect(result.ok and code_ == 0, f"VTL0->VTL0: {status(result)} code {code_}")
        expect(page == gpa >> PAGE_SHIFT, "VTL0->VTL0 GPA page")
        raw = int.from_bytes(vp.read(env.kernel.params.out_va, 8), "little")
        expect(defs.TRANSLATE_RESULT_CACHE_TYPE.extract(raw) == 6, "cache type write-back")
        expect(not defs.TRANSLATE_RESULT_OVERLAY_PAGE.extract(raw), "not an overlay page")
        result, code_, _ = hvcall.translate_virtual_address(
            vp.cpu, env.kernel.params, 0x80_0000_0000, flags, 0
        )
        expect(result.ok and code_ == defs.HvTranslateGvaResultCode.PAGE_NOT_PRESENT, "unmapped")
        with as_vtl(vp, 1) as v1:
            result, code_, page = hvcall.translate_virtual_address(
                v1.cpu, env.monitor.params, va, flags, 0
            )
            expect(result.ok and code_ == 0 and page == gpa >> PAGE_SHIFT, "VTL1->VTL0")
    finally:
        env.close()


@case("translate-va-overlay", "translate", f"{KUT} Translate GVA VTL1->VTL0 overlay")
def translate_va_overlay() -> None:
    env = partition()
    try:
        vp = env.vp
        st = env.hv.states[vp.index][0]
        hypercall_page = defs.HYPERCALL_MSR_GPFN.extract(st.hypercall_msr)
        va = env.kernel.space.phys_va(hypercall_page << PAGE_SHIFT)  # VTL0's direct map
        flags = int(Xlate.VALIDATE_READ | Xlate.PRIVILEGE_EXEMPT)
        with as_vtl(vp, 1) as v1:
            result, code_, page = hvcall.translate_virtual_address(
                v1.cpu, env.monitor.params, va, flags, 0
            )
            raw = int.from_bytes(v1.read(env.monitor.params.out_va, 8), "little")
        expect(result.ok and code_ == 0 and page == hypercall_page, f"translate: {code_}")
        expect(bool(defs.TRANSLATE_RESULT_OVERLAY_PAGE.extract(raw)), "OverlayPage = 1")
    finally:
        env.close()


# -- memory protection: byte-exact intercept messages ---------------------------------------------
def _expected_memory_message(
    env: Partition, access: int, gva: int, gpa: int, insn: bytes, length: int, rip: int
) -> bytes:
    """HV_X64_MEMORY_INTERCEPT_MESSAGE built field by field from its published offsets (hvdef
    ``HvX64MemoryInterceptMessage``, 0x50 bytes), independently of the model's struct."""
    vp = env.vp
    bank = vp.banks[0]
    assert bank is not None
    cs = bank.segments["cs"]
    msg = bytearray(0x50)
    struct.pack_into("<I", msg, 0, vp.index)  # VpIndex
    msg[4] = length | (bank.cr8 & 0xF) << 4  # InstructionLength 3:0, Cr8 7:4
    msg[5] = access  # InterceptAccessType
    state = (bank.cpl & 3) | (bool(bank.cr0 & Cr0.PE) << 2) | (bool(bank.cr0 & Cr0.AM) << 3)
    state |= bool(bank.efer & Efer.LMA) << 4  # Vtl (bits 10:7) is 0: the access came from VTL0
    struct.pack_into("<H", msg, 6, state)  # ExecutionState
    struct.pack_into("<QIHH", msg, 8, cs.base, cs.limit, cs.selector, cs.attributes)
    struct.pack_into("<QQ", msg, 24, rip, bank.rflags)
    struct.pack_into("<I", msg, 40, 6)  # CacheType: write-back
    msg[44] = len(insn)  # InstructionByteCount
    msg[45] = 0b11  # MemoryAccessInfo: GvaValid | GvaGpaValid
    struct.pack_into("<QQ", msg, 48, gva, gpa)
    msg[64 : 64 + len(insn)] = insn
    return bytes(msg)


def _posted_message(env: Partition) -> tuple[int, bytes]:
    """The payload size and the first 0x50 payload bytes left in the monitor's SINT0 slot (the
    handler clears only MessageType)."""
    slot = env.monitor.sim_gpa
    size = env.machine.ram.read(slot + 4, 1)[0]
    return size, env.machine.ram.read(slot + 16, 0x50)


def _protection_probe(access: int) -> None:
    env = partition()
    try:
        vp = env.vp
        va, gpa = env.kernel.space.alloc_data()
        if access == 2:  # execute: make the page executable in VTL0's paging, with a routine
            env.kernel.space.pt.map(va, gpa, int(Pte.G))
            env.machine.ram.write(gpa, code.encode_thunk("conformance.ret"))
            vp.flush_tlb()
        flags = {0: 0, 1: 1, 2: 3}[access]  # remove R / W / X for VTL0
        expect(monitor_call(vp.cpu, MON_PROTECT, gpa, flags) == 0, "monitor protected the page")
        rip = vp.p.rip
        try:
            if access == 0:
                vp.read_u64(va)
            elif access == 1:
                vp.write_u64(va, 0x5A5A)
            else:
                vp.call(va)
        except GuestTermination:
            pass  # the monitor injects #GP after logging the intercept
        insn, length = {
            0: (bytes((0x48, 0x8B, 0x00)), 3),  # mov rax, [rax]
            1: (bytes((0x48, 0x89, 0x00)), 3),  # mov [rax], rax
            2: (b"", 2),  # call rax: no instruction bytes for an execute fault (kut)
        }[access]
        size, payload = _posted_message(env)
        expected = _expected_memory_message(env, access, va, gpa, insn, length, rip)
        expect(size == 0x50, f"payload size 0x{size:x}, expected 0x50")
        if payload != expected:
            diff = [i for i in range(0x50) if payload[i] != expected[i]]
            raise CaseFailure(f"message differs at offsets {diff[:8]}")
        expect(env.kernel.exceptions[-1].vector == Vector.GP, "VTL0 got the monitor's #GP")
    finally:
        env.close()


@case(
    "protect-read-message",
    "protection",
    f"{KUT} test_gpa_protection_mask; {TMK} hv_memory_protect_read",
)
def protect_read() -> None:
    _protection_probe(0)


@case(
    "protect-write-message",
    "protection",
    f"{KUT} test_gpa_protection_mask; {TMK} hv_memory_protect_write",
)
def protect_write() -> None:
    _protection_probe(1)


@case("protect-exec-message", "protection", f"{KUT} test_gpa_protection_mask (execute)")
def protect_exec() -> None:
    _protection_probe(2)


@case("default-protection-mask", "protection", f"{KUT} test_default_protection_mask")
def default_protection_mask() -> None:
    env = partition()
    try:
        with as_vtl(env.vp, 1) as v1:
            pages = env.monitor.params
            result, (config,) = hvcall.get_vp_registers(
                v1.cpu, pages, [HvRegisterName.VSM_PARTITION_CONFIG]
            )
            mask = defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.extract(config)
            expect(result.ok and mask == 0xF, f"default mask 0x{mask:x}")
            changed = defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(config, 0)
            result = hvcall.set_vp_registers(
                v1.cpu, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, changed)]
            )
            expect(not result.ok, "the default mask cannot change once set")
            _, (after,) = hvcall.get_vp_registers(
                v1.cpu, pages, [HvRegisterName.VSM_PARTITION_CONFIG]
            )
            expect(defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.extract(after) == 0xF, "unchanged")
            cleared = config & ~defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask
            result = hvcall.set_vp_registers(
                v1.cpu, pages, [(HvRegisterName.VSM_PARTITION_CONFIG, cleared)]
            )
            expect(result.ok, f"ZeroMemoryOnReset is not write-once: {status(result)}")
        va, _ = env.kernel.space.alloc_data()
        env.vp.read_u64(va)  # VTL0 still reads an ordinary page
    finally:
        env.close()


@case("register-intercept", "protection", f"{TMK} hv_register_intercept")
def register_intercept() -> None:
    env = partition()
    try:
        vp = env.vp
        control = int(defs.HvCrInterceptControl.CR4_WRITE)
        with as_vtl(vp, 1) as v1:
            pages = env.monitor.params
            result = hvcall.set_vp_registers(
                v1.cpu,
                pages,
                [
                    (HvRegisterName.CR_INTERCEPT_CR4_MASK, 1 << 20),
                    (HvRegisterName.CR_INTERCEPT_CONTROL, control),
                ],
            )
            expect(result.ok, f"install CR4 intercept: {status(result)}")
            result, (back,) = hvcall.get_vp_registers(
                v1.cpu, pages, [HvRegisterName.CR_INTERCEPT_CONTROL]
            )
            expect(result.ok and back == control, f"control reads back 0x{back:x}")
        cr4 = vp.cpu.read_cr(4)
        with contextlib.suppress(GuestTermination):
            vp.mov_to_cr(4, cr4 ^ 1 << 20)  # flip SMEP
        log = env.monitor.log(vp)
        expect(
            bool(log) and log[-1][0] == defs.HvMessageType.REGISTER_INTERCEPT,
            "secure register intercept received",
        )
        expect(vp.cpu.read_cr(4) == cr4, "CR4 unchanged")
    finally:
        env.close()


@case("initial-context-32bit", "enable", f"{TLFS} vsm.md Real Mode (x64 only)")
def initial_context_32bit() -> None:
    from vbsim.hv.calls.context import decode_context, encode_context

    env = partition(vsm=False)
    try:
        state = env.monitor.space.initial_state(env.monitor.entry_va)
        state.efer &= ~int(Efer.LMA | Efer.LME)
        expect(decode_context(encode_context(state)) is not None, "32-bit context accepted")
        state.cr0 &= ~int(Cr0.PE | Cr0.PG)
        expect(decode_context(encode_context(state)) is None, "real mode refused")
    finally:
        env.close()
