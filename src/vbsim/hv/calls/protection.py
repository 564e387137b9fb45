"""HvCallModifyVtlProtectionMask (0x0C, rep) — vsm-spec §1.3, §3.2, §3.3.

``TargetVtl`` names the *protecting* VTL whose mask is edited (OpenVMM reading, vsm-spec §3.3,
CONFLICT D3); the flags restrict every VTL below it.  VTL0 has no lower VTL, so VTL0 can never
change any protection, its own included: it gets INVALID_PARAMETER (OpenHCL).  A target above the
caller → ACCESS_DENIED.  A VTL must have set EnableVtlProtection in its partition config first
(ACCESS_DENIED otherwise).  Flags are validated as OpenHCL's ``validate_vtl_gpa_flags``
(INVALID_REGISTER_VALUE).  A non-RAM GPA stops the rep loop with INVALID_PARAMETER; the count of
completed reps is valid either way (LVBS relies on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import abi, defs
from vbsim.hv.calls.common import check_partition
from vbsim.hv.defs import HvCallCode, HvMapGpaFlags, HvStatus
from vbsim.hv.dispatch import CallContext, CallSpec
from vbsim.hw.slat import describe

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor

_R = int(HvMapGpaFlags.READABLE)
_W = int(HvMapGpaFlags.WRITABLE)
_KX = int(HvMapGpaFlags.KERNEL_EXECUTABLE)
_UX = int(HvMapGpaFlags.USER_EXECUTABLE)
_NEEDS_R = (
    _W
    | _KX
    | _UX
    | int(HvMapGpaFlags.SUPERVISOR_SHADOW_STACK)
    | int(HvMapGpaFlags.PAGING_WRITABILITY)
    | int(HvMapGpaFlags.VERIFY_PAGING_WRITABILITY)
)
#: Bits a VTL protection may carry (vsm-spec §3.1 bits 0..6).
_ALLOWED = _R | _NEEDS_R


def valid_flags(flags: int, mbec: bool) -> bool:
    """vsm-spec §3.2 validation rules 1–4 (OpenHCL ``validate_vtl_gpa_flags``)."""
    if flags & ~_ALLOWED:
        return False  # ADJUSTABLE and map-GPA-only bits are not VTL protections
    kx, ux = bool(flags & _KX), bool(flags & _UX)
    if kx != ux and not mbec:
        return False
    if kx and not ux:
        return False  # KX && !UX is undefined even with MBEC
    if flags & _NEEDS_R and not flags & _R:
        return False
    return not (flags & HvMapGpaFlags.SUPERVISOR_SHADOW_STACK and not (kx or ux))


def modify_vtl_protection_mask(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, flags, input_vtl = defs.MODIFY_VTL_PROTECTION_MASK_HEADER.unpack(ctx.header[:16])
    start = ctx.call.rep_start
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, start
    protecting = abi.decode_input_vtl(input_vtl, ctx.caller_vtl)
    if protecting is None or protecting == 0:
        return HvStatus.INVALID_PARAMETER, start
    if protecting > ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED, start
    config = hv.partition.config.get(protecting, 0)
    if not defs.PCONFIG_ENABLE_VTL_PROTECTION.extract(config):
        return HvStatus.ACCESS_DENIED, start
    mbec = bool(hv.partition.mbec_vtls >> protecting & 1)
    if not valid_flags(flags, mbec):
        return HvStatus.INVALID_REGISTER_VALUE, start
    done = start
    mask = flags & 0xF
    pages = hv.slat.pages
    changed: list[int] = []
    for element in ctx.elements:
        gpn = int.from_bytes(element, "little")
        if gpn >= pages:
            _trace(hv, ctx, protecting, mask, changed, HvStatus.INVALID_PARAMETER)
            _flush_lower(hv, protecting)
            return HvStatus.INVALID_PARAMETER, done
        hv.slat.set(protecting, gpn, mask)
        changed.append(gpn)
        done += 1
    _flush_lower(hv, protecting)
    _trace(hv, ctx, protecting, mask, changed, HvStatus.SUCCESS)
    return HvStatus.SUCCESS, done


def _flush_lower(hv: Hypervisor, protecting: int) -> None:
    """A protection change invalidates cached translations of every lower VTL on every VP."""
    for vp in hv.vps:
        for vtl in range(protecting):
            vp.flush_tlb(vtl)


def _trace(
    hv: Hypervisor, ctx: CallContext, protecting: int, mask: int, gpns: list[int], status: HvStatus
) -> None:
    if hv.trace.on:
        ctx.vp.emit(
            "slat",
            "modify-vtl-protection-mask",
            "changed" if gpns else "unchanged",
            protecting_vtl=protecting,
            rights=describe(mask),
            pages=len(gpns),
            first_gpa=(gpns[0] << 12) if gpns else None,
            status=status.name,
        )


SPECS = (CallSpec(HvCallCode.MODIFY_VTL_PROTECTION_MASK, modify_vtl_protection_mask, 16, rep_in=8),)
