"""HvCallGetVpRegisters (0x50) / HvCallSetVpRegisters (0x51), rep — vsm-spec §1.3, §3.3, §4.

Who may touch what:
- a target VTL above the caller → ACCESS_DENIED (OpenHCL, QEMU-PoC);
- architectural registers (GPRs, RIP, CRs, segments, EFER, syscall MSRs, PAT...) of the caller's
  *own* VTL → ACCESS_DENIED: only a higher VTL may reach them this way (OpenHCL);
- HvRegisterVsmPartitionConfig: a VTL edits its own instance and lower ones, never higher ones;
  only EnableVtlProtection is write-once ("This flag is write-once", TLFS vsm.md), and the default
  protection mask with it ("It cannot be changed once it is set"); ZeroMemoryOnReset,
  DenyLowerVtlStartup and InterceptVpStartup stay writable (OpenHCL stores them on every write).
  The mask is validated as OpenHCL's ``validate_vtl_gpa_flags`` does (KX without UX never, UX
  alone only with MBEC, nothing without R) and must include R and W (OpenHCL);
- HvRegisterVsmVpSecureConfigVtlN: only a VTL above N (OpenHCL);
- secure-register-intercept control and masks: registers of VTL1, accepted only with VTL1 as
  target (OpenHCL);
- read-only registers cannot be written (INVALID_PARAMETER); unknown names → the status profile's
  choice (:mod:`vbsim.hv.profile`: kvm-unit-tests' INVALID_PARAMETER, or hvdef's
  UNKNOWN_REGISTER_NAME).
Set has no side effects beyond the register itself (TLFS); the model only drops its own cached
access decisions for a VTL whose CR0/CR4/EFER changed, since a real CPU evaluates those live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hv import abi, defs
from vbsim.hv.calls.common import check_partition, target_vp
from vbsim.hv.defs import HvCallCode, HvRegisterName, HvStatus
from vbsim.hv.dispatch import CallContext, CallSpec
from vbsim.hw import hlat
from vbsim.hw.regs import SHARED_GPRS, Segment

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

N = HvRegisterName
U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(slots=True)
class Access:
    """The register operation being performed."""

    hv: Hypervisor
    vp: VirtualProcessor  # the target VP
    caller_vtl: int
    vtl: int  # the target VTL


Getter = Callable[[Access], int | HvStatus]
Setter = Callable[[Access, int], HvStatus]


def _ro(_: Access, __: int) -> HvStatus:
    return HvStatus.INVALID_PARAMETER


# -- architectural registers ----------------------------------------------------------------
def _shared(attr: str) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        return int(getattr(a.vp, attr))

    def put(a: Access, value: int) -> HvStatus:
        setattr(a.vp, attr, value & U64)
        return HvStatus.SUCCESS

    return get, put


def _private(attr: str, reserved: int = 0, decisions: bool = False) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        bank = a.vp.banks[a.vtl]
        return 0 if bank is None else int(getattr(bank, attr))

    def put(a: Access, value: int) -> HvStatus:
        bank = a.vp.banks[a.vtl]
        if bank is None:
            return HvStatus.INVALID_VTL_STATE
        if value & reserved or value >> 64:
            return HvStatus.INVALID_PARAMETER
        setattr(bank, attr, value & U64)
        if decisions:
            a.vp.tlbs[a.vtl].flush_all()
            if a.vp.vtl == a.vtl:
                a.vp.set_cpl(bank.cpl)
        return HvStatus.SUCCESS

    return get, put


def _xmm(index: int) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        return a.vp.xmm[index]

    def put(a: Access, value: int) -> HvStatus:
        a.vp.xmm[index] = value & ((1 << 128) - 1)
        return HvStatus.SUCCESS

    return get, put


def _table(name: str) -> tuple[Getter, Setter]:
    """HV_X64_TABLE_REGISTER as a register value: limit in bits 63:48, base in 127:64."""

    def get(a: Access) -> int:
        bank = a.vp.banks[a.vtl]
        if bank is None:
            return 0
        return (int(getattr(bank, f"{name}_limit")) << 48) | (
            int(getattr(bank, f"{name}_base")) << 64
        )

    def put(a: Access, value: int) -> HvStatus:
        bank = a.vp.banks[a.vtl]
        if bank is None:
            return HvStatus.INVALID_VTL_STATE
        setattr(bank, f"{name}_limit", (value >> 48) & 0xFFFF)
        setattr(bank, f"{name}_base", (value >> 64) & U64)
        return HvStatus.SUCCESS

    return get, put


def _segment(name: str) -> tuple[Getter, Setter]:
    """HV_X64_SEGMENT_REGISTER: base u64, limit u32, selector u16, attributes u16."""

    def pick(a: Access) -> Segment | None:
        bank = a.vp.banks[a.vtl]
        if bank is None:
            return None
        return bank.tr if name == "tr" else bank.ldtr if name == "ldtr" else bank.segments[name]

    def get(a: Access) -> int:
        seg = pick(a)
        if seg is None:
            return 0
        return seg.base | seg.limit << 64 | seg.selector << 96 | seg.attributes << 112

    def put(a: Access, value: int) -> HvStatus:
        seg = pick(a)
        if seg is None:
            return HvStatus.INVALID_VTL_STATE
        seg.base = value & U64
        seg.limit = (value >> 64) & 0xFFFF_FFFF
        seg.selector = (value >> 96) & 0xFFFF
        seg.attributes = (value >> 112) & 0xFFFF
        bank = a.vp.banks[a.vtl]
        if name == "cs" and bank is not None:
            bank.cpl = defs.SEG_ATTR_DPL.extract(seg.attributes)
            if a.vp.vtl == a.vtl:
                a.vp.set_cpl(bank.cpl)
        return HvStatus.SUCCESS

    return get, put


_CR0_RESERVED = ~0xE005_003F & U64
_CR4_RESERVED = (~((1 << 25) - 1) & U64) | (1 << 15) | (1 << 19)
_EFER_RESERVED = ~0xD01 & U64

REGISTERS: dict[int, tuple[Getter, Setter]] = {}
for _name in SHARED_GPRS:
    REGISTERS[int(HvRegisterName[_name.upper()])] = _shared(_name)
for _name in ("cr2", "dr0", "dr1", "dr2", "dr3", "dr6"):
    REGISTERS[int(HvRegisterName[_name.upper()])] = _shared(_name)
REGISTERS[int(N.XFEM)] = _shared("xcr0")
for _i in range(16):
    REGISTERS[int(HvRegisterName[f"XMM{_i}"])] = _xmm(_i)
for _reg, _attr in (
    (N.RSP, "rsp"),
    (N.RIP, "rip"),
    (N.CR3, "cr3"),
    (N.CR8, "cr8"),
    (N.DR7, "dr7"),
    (N.STAR, "star"),
    (N.LSTAR, "lstar"),
    (N.CSTAR, "cstar"),
    (N.SFMASK, "sfmask"),
    (N.SYSENTER_CS, "sysenter_cs"),
    (N.SYSENTER_EIP, "sysenter_eip"),
    (N.SYSENTER_ESP, "sysenter_esp"),
    (N.PAT, "pat"),
    (N.KERNEL_GS_BASE, "kernel_gs_base"),
    (N.TSC_AUX, "tsc_aux"),
    (N.APIC_BASE, "apic_base"),
):
    REGISTERS[int(_reg)] = _private(_attr)
REGISTERS[int(N.CR0)] = _private("cr0", _CR0_RESERVED, decisions=True)
REGISTERS[int(N.RFLAGS)] = _private("rflags", decisions=True)  # AC shapes SMAP decisions
REGISTERS[int(N.CR4)] = _private("cr4", _CR4_RESERVED, decisions=True)
REGISTERS[int(N.EFER)] = _private("efer", _EFER_RESERVED, decisions=True)
REGISTERS[int(N.IDTR)] = _table("idtr")
REGISTERS[int(N.GDTR)] = _table("gdtr")
for _seg in ("cs", "ds", "es", "fs", "gs", "ss", "ldtr", "tr"):
    REGISTERS[int(HvRegisterName[_seg.upper()])] = _segment(_seg)


# -- VSM registers --------------------------------------------------------------------------
def _code_page_offsets(a: Access) -> int:
    value = defs.CPO_VTL_CALL_OFFSET.insert(0, defs.HYPERCALL_PAGE_VTL_CALL_OFFSET_64)
    return defs.CPO_VTL_RETURN_OFFSET.insert(value, defs.HYPERCALL_PAGE_VTL_RETURN_OFFSET_64)


def _vp_status(a: Access) -> int:
    """ActiveMbecEnabled as OpenHCL reports it: whether MBEC is on for this VP, i.e. whether the
    higher VTL turned it on in HvRegisterVsmVpSecureConfigVtl0 ("Setting this on any VTL will
    enable it for all VTLs", hardware_cvm/mod.rs), whichever VTL reads the register."""
    enabled = sum(1 << v for v in range(len(a.vp.banks)) if a.vp.vtl_enabled(v))
    value = defs.VPSTATUS_ACTIVE_VTL.insert(0, a.vp.vtl)
    value = defs.VPSTATUS_ACTIVE_MBEC_ENABLED.insert(value, int(any(a.vp.mbec)))
    return defs.VPSTATUS_ENABLED_VTL_SET.insert(value, enabled)


def _partition_status(a: Access) -> int:
    """MbecEnabledVtlSet as OpenHCL reports it: once VTL1 was enabled with EnableMbec, every
    enabled VTL (``mbec_enabled_vtls = enabled_vtls``, hardware_cvm/mod.rs), since MBEC is
    partition-wide."""
    vsm = a.hv.partition
    value = defs.PSTATUS_ENABLED_VTL_SET.insert(0, vsm.enabled_vtls)
    value = defs.PSTATUS_MAXIMUM_VTL.insert(value, vsm.max_vtl)
    mbec = vsm.enabled_vtls if vsm.mbec_vtls else 0
    return defs.PSTATUS_MBEC_ENABLED_VTL_SET.insert(value, mbec)


def _capabilities(a: Access) -> int:
    return a.hv.capabilities


#: TLFS vsm.md "Enable VTL Protections": "This flag is write-once".  No other bit is.
_WRITE_ONCE = defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
_R, _W, _KX, _UX = 1, 2, 4, 8  # HvMapGpaFlags permission bits (the mask's nibble, vsm.md)


def valid_protection_mask(mask: int, mbec: bool) -> bool:
    """OpenHCL ``validate_vtl_gpa_flags`` (openhcl/virt_mshv_vtl/src/lib.rs) for the 4-bit mask:
    KX must equal UX unless MBEC is enabled, and KX without UX is never valid; Read must be
    present if anything else is."""
    kx, ux = bool(mask & _KX), bool(mask & _UX)
    if kx != ux and (kx or not mbec):
        return False
    return not (mask & (_W | _KX | _UX) and not mask & _R)


def _get_partition_config(a: Access) -> int | HvStatus:
    if a.vtl == 0:
        return HvStatus.INVALID_PARAMETER  # one instance per VTL > 0
    return a.hv.partition.config.get(a.vtl, 0)


def _set_partition_config(a: Access, value: int) -> HvStatus:
    if a.vtl == 0 or not a.hv.partition.vtl_enabled(a.vtl):
        return HvStatus.INVALID_PARAMETER
    if value & defs.PCONFIG_RSVD_MASK or value >> 64:
        return HvStatus.INVALID_REGISTER_VALUE
    old = a.hv.partition.config.get(a.vtl, 0)
    if old & _WRITE_ONCE & ~value:
        return HvStatus.INVALID_REGISTER_VALUE  # EnableVtlProtection cannot be cleared
    mask = defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.extract(value)
    was_on = defs.PCONFIG_ENABLE_VTL_PROTECTION.extract(old)
    now_on = defs.PCONFIG_ENABLE_VTL_PROTECTION.extract(value)
    if now_on:
        mbec = bool(a.hv.partition.mbec_vtls >> a.vtl & 1)
        if mask & (_R | _W) != _R | _W or not valid_protection_mask(mask, mbec):
            return HvStatus.INVALID_REGISTER_VALUE  # must include R and W (OpenHCL)
        if was_on and mask != defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.extract(old):
            return HvStatus.INVALID_REGISTER_VALUE  # "cannot be changed once it is set"
    a.hv.partition.config[a.vtl] = value
    if now_on and not was_on:
        # The default mask applies to every page from now on (D2: HV_MAP_GPA bit order).
        a.hv.slat.enable_vtl(a.vtl, mask)
        for vp in a.hv.vps:
            for lower in range(a.vtl):
                vp.flush_tlb(lower)
    if a.hv.trace.on:
        a.vp.emit("vsm", "partition-config", "written", target_vtl=a.vtl, value=value)
    return HvStatus.SUCCESS


def _secure_config(lower: int) -> tuple[Getter, Setter]:
    def get(a: Access) -> int | HvStatus:
        if a.caller_vtl <= lower:
            return HvStatus.ACCESS_DENIED
        return a.hv.states[a.vp.index][a.caller_vtl].secure_config.get(lower, 0)

    def put(a: Access, value: int) -> HvStatus:
        if a.caller_vtl <= lower:
            return HvStatus.ACCESS_DENIED
        if value & defs.SECCFG_RSVD_MASK or value >> 64:
            return HvStatus.INVALID_REGISTER_VALUE
        mbec = bool(defs.SECCFG_MBEC_ENABLED.extract(value))
        if mbec and not a.hv.partition.mbec_vtls >> a.caller_vtl & 1:
            return HvStatus.INVALID_REGISTER_VALUE  # MBEC must be enabled twice (vsm-spec §3.4)
        if defs.SECCFG_SUPERVISOR_SHADOW_STACK_ENABLED.extract(value):
            return HvStatus.INVALID_REGISTER_VALUE  # not offered (OpenHCL refuses it too)
        if defs.SECCFG_HW_HVPT_ENABLED.extract(value) and not (
            a.hv.partition.hvpt_vtls >> a.caller_vtl & 1
        ):
            # hvdef HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled: only for a VTL enabled
            # with EnablePartitionVtlFlags.enable_hardware_hvpt (OpenHCL, which never enables
            # it, refuses the bit with InvalidRegisterValue).
            return HvStatus.INVALID_REGISTER_VALUE
        if not a.vp.vtl_enabled(lower):
            return HvStatus.INVALID_VTL_STATE
        a.hv.states[a.vp.index][a.caller_vtl].secure_config[lower] = value
        if mbec != a.vp.mbec[lower]:
            a.vp.set_mbec(lower, mbec)
        layer = a.vp.layers[lower]
        if (
            layer is not None
            and layer.hlat is not None
            and not (defs.SECCFG_HW_HVPT_ENABLED.extract(value))
        ):
            layer.hlat = None  # hardware HVPT off for this VTL: no HLAT translation (hvdef)
            a.vp.tlbs[lower].flush_all()
        return HvStatus.SUCCESS

    return get, put


def _intercept_reg(attr: str, reserved: int = 0) -> tuple[Getter, Setter]:
    def owner_ok(a: Access) -> bool:
        return a.vtl >= 1 and a.vtl == a.caller_vtl

    def get(a: Access) -> int | HvStatus:
        if not owner_ok(a):
            return HvStatus.ACCESS_DENIED
        return int(getattr(a.hv.states[a.vp.index][a.vtl], attr))

    def put(a: Access, value: int) -> HvStatus:
        if not owner_ok(a):
            return HvStatus.ACCESS_DENIED
        if value & reserved or value >> 64:
            return HvStatus.INVALID_PARAMETER
        setattr(a.hv.states[a.vp.index][a.vtl], attr, value)
        if a.hv.trace.on:
            a.vp.emit("vsm", "secure-intercept-config", "written", register=attr, value=value)
        return HvStatus.SUCCESS

    return get, put


def _vtl_state_attr(
    attr: str, writable: bool = True, not_vtl0: bool = False
) -> tuple[Getter, Setter]:
    def get(a: Access) -> int | HvStatus:
        if not_vtl0 and a.vtl == 0:
            return HvStatus.INVALID_PARAMETER
        return int(getattr(a.hv.states[a.vp.index][a.vtl], attr))

    def put(a: Access, value: int) -> HvStatus:
        if not writable or (not_vtl0 and a.vtl == 0) or value >> 64:
            return HvStatus.INVALID_PARAMETER
        setattr(a.hv.states[a.vp.index][a.vtl], attr, value)
        return HvStatus.SUCCESS

    return get, put


def _synic_attr(attr: str) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        return int(getattr(a.hv.states[a.vp.index][a.vtl].synic, attr))

    def put(a: Access, value: int) -> HvStatus:
        setattr(a.hv.states[a.vp.index][a.vtl].synic, attr, value & U64)
        return HvStatus.SUCCESS

    return get, put


def _sint(index: int) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        return a.hv.states[a.vp.index][a.vtl].synic.sints[index]

    def put(a: Access, value: int) -> HvStatus:
        a.hv.states[a.vp.index][a.vtl].synic.sints[index] = value & U64
        return HvStatus.SUCCESS

    return get, put


def _pending_event(index: int) -> tuple[Getter, Setter]:
    def get(a: Access) -> int:
        return a.hv.states[a.vp.index][a.vtl].pending_event[index]

    def put(a: Access, value: int) -> HvStatus:
        low = value & U64
        if defs.PEV_EVENT_PENDING.extract(low) and defs.PEV_EVENT_TYPE.extract(low) != 0:
            return HvStatus.INVALID_PARAMETER  # the model injects exceptions only
        if defs.PEV_EVENT_PENDING.extract(low) and defs.PEV_VECTOR.extract(low) > 31:
            return HvStatus.INVALID_PARAMETER
        a.hv.states[a.vp.index][a.vtl].pending_event[index] = low
        return HvStatus.SUCCESS

    return get, put


def _vp_index(a: Access) -> int:
    return int(a.vp.index)


def _activity(a: Access) -> int:
    """HvRegisterInternalActivityState: the VP's suspend state (per VP, not per VTL)."""
    state = 0 if a.vp.started else defs.ACTIVITY_STARTUP_SUSPEND
    return state | (defs.ACTIVITY_HALT_SUSPEND if a.vp.halted else 0)


def _set_activity(a: Access, value: int) -> HvStatus:
    """Clearing halt_suspend wakes a halted VP, setting it halts one (what a VMM does across
    save/restore).  [model] startup_suspend is the start request's to clear
    (HvCallStartVirtualProcessor), and idle_suspend is not modelled: a write that changes either
    is HV_STATUS_INVALID_PARAMETER, as is any reserved bit."""
    if value & defs.ACTIVITY_RSVD_MASK or value & defs.ACTIVITY_IDLE_SUSPEND:
        return HvStatus.INVALID_PARAMETER
    if bool(value & defs.ACTIVITY_STARTUP_SUSPEND) != (not a.vp.started):
        return HvStatus.INVALID_PARAMETER
    a.vp.halted = bool(value & defs.ACTIVITY_HALT_SUSPEND) and a.vp.started
    return HvStatus.SUCCESS


VSM_REGISTERS: dict[int, tuple[Getter, Setter]] = {
    int(N.VSM_CODE_PAGE_OFFSETS): (_code_page_offsets, _ro),
    int(N.VSM_VP_STATUS): (_vp_status, _ro),
    int(N.VSM_PARTITION_STATUS): (_partition_status, _ro),
    int(N.VSM_CAPABILITIES): (_capabilities, _ro),
    int(N.VSM_PARTITION_CONFIG): (_get_partition_config, _set_partition_config),
    int(N.VSM_VINA): _vtl_state_attr("vina", not_vtl0=True),
    int(N.CR_INTERCEPT_CONTROL): _intercept_reg(
        "cr_intercept_control", defs.CR_INTERCEPT_RSVD_MASK
    ),
    int(N.CR_INTERCEPT_CR0_MASK): _intercept_reg("cr0_mask"),
    int(N.CR_INTERCEPT_CR4_MASK): _intercept_reg("cr4_mask"),
    int(N.CR_INTERCEPT_IA32_MISC_ENABLE_MASK): _intercept_reg("misc_enable_mask"),
    int(N.VP_ASSIST_PAGE): _vtl_state_attr("vp_assist_msr"),
    int(N.GUEST_OS_ID): _vtl_state_attr("guest_os_id"),
    int(N.VP_INDEX): (_vp_index, _ro),
    int(N.INTERNAL_ACTIVITY_STATE): (_activity, _set_activity),
    int(N.SCONTROL): _synic_attr("scontrol"),
    int(N.SIMP): _synic_attr("simp"),
    int(N.SIEFP): _synic_attr("siefp"),
    int(N.PENDING_EVENT0): _pending_event(0),
    int(N.PENDING_EVENT1): _pending_event(1),
}
for _i in range(15):
    VSM_REGISTERS[int(N.VSM_VP_SECURE_CONFIG_VTL0) + _i] = _secure_config(_i)
# The model's stand-in for VMCS HLATP (Intel VT-rp, vbs-internals §5.6; not a TLFS register).
VSM_REGISTERS[hlat.HV_REGISTER_MODEL_HLAT_CONTROL] = (hlat.get_control, hlat.set_control)
for _i in range(16):
    VSM_REGISTERS[int(N.SINT0) + _i] = _sint(_i)

_ARCH = frozenset(int(r) for r in defs.ARCHITECTURAL_REGISTERS)


def _lookup(name: int, a: Access) -> tuple[Getter, Setter] | HvStatus:
    if name in _ARCH:
        if a.vtl == a.caller_vtl:
            return HvStatus.ACCESS_DENIED
        if not a.vp.vtl_enabled(a.vtl):
            return HvStatus.INVALID_VTL_STATE
    entry = REGISTERS.get(name) or VSM_REGISTERS.get(name)
    if entry is None:
        return a.hv.profile.unknown_register
    return entry


def _header(hv: Hypervisor, ctx: CallContext) -> Access | HvStatus:
    partition_id, vp_index, input_vtl = defs.GET_SET_VP_REGISTERS_HEADER.unpack(ctx.header[:16])
    status = check_partition(partition_id, hv)
    if status is not None:
        return status
    vp = target_vp(hv, ctx.vp, vp_index)
    if vp is None:
        return HvStatus.INVALID_VP_INDEX
    vtl = abi.decode_input_vtl(input_vtl, ctx.caller_vtl)
    if vtl is None or vtl >= len(vp.banks):
        return HvStatus.INVALID_PARAMETER
    if vtl > ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED
    return Access(hv, vp, ctx.caller_vtl, vtl)


def get_vp_registers(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    access = _header(hv, ctx)
    done = ctx.call.rep_start
    if isinstance(access, HvStatus):
        return access, done
    for element in ctx.elements:
        name = int.from_bytes(element[:4], "little")
        entry = _lookup(name, access)
        if isinstance(entry, HvStatus):
            return entry, done
        value = entry[0](access)
        if isinstance(value, HvStatus):
            return value, done
        ctx.rep_outputs.append(defs.REGISTER_VALUE.pack(value & U64, (value >> 64) & U64))
        done += 1
    return HvStatus.SUCCESS, done


def set_vp_registers(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    access = _header(hv, ctx)
    done = ctx.call.rep_start
    if isinstance(access, HvStatus):
        return access, done
    for element in ctx.elements:
        name, raw = defs.SET_VP_REGISTERS_ELEMENT.unpack(element)
        value = int.from_bytes(raw, "little")
        entry = _lookup(name, access)
        if isinstance(entry, HvStatus):
            return entry, done
        status = entry[1](access, value)
        if hv.trace.on:
            ctx.vp.emit(
                "register",
                "set-vp-registers",
                status.name.lower(),
                target_vp=access.vp.index,
                target_vtl=access.vtl,
                register=_register_name(name),
                value=value,
            )
        if status is not HvStatus.SUCCESS:
            return status, done
        done += 1
    return HvStatus.SUCCESS, done


def _register_name(name: int) -> str:
    try:
        return HvRegisterName(name).name
    except ValueError:
        return f"0x{name:08x}"


SPECS = (
    CallSpec(HvCallCode.GET_VP_REGISTERS, get_vp_registers, 16, rep_in=4, rep_out=16),
    CallSpec(HvCallCode.SET_VP_REGISTERS, set_vp_registers, 16, rep_in=32),
)
