"""HvCallEnablePartitionVtl (0x0D), HvCallDisablePartitionVtl (0x0E), HvCallEnableVpVtl (0x0F)
and HvCallDisableVpVtl (0x10) — vsm-spec §1.3, §3.4, §5.1.

The TLFS pages give the restrictions, not the statuses.  An invalid target VTL follows the
hypervisor's status profile (:mod:`vbsim.hv.profile`: kvm-unit-tests' INVALID_PARAMETER, or
OpenHCL's ACCESS_DENIED for EnablePartitionVtl); a VTL already enabled for the partition →
INVALID_VTL_STATE and already enabled on the VP → VTL_ALREADY_ENABLED (OpenHCL; vsm-spec D7).
All four need the AccessVSM partition privilege (TLFS hv_partition_privilege_mask.md: "The
partition can use VSM"), checked by the dispatcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.calls.common import check_partition, target_vp
from vbsim.hv.calls.context import decode_context
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hv.dispatch import CallContext, CallSpec
from vbsim.hv.state import VpVtlState

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor


def enable_partition_vtl(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, target, flags = defs.ENABLE_PARTITION_VTL_INPUT.unpack(ctx.header)
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, 0
    if flags & defs.ENABLE_PARTITION_VTL_FLAGS_RSVD_MASK:
        return HvStatus.INVALID_PARAMETER, 0
    vsm = hv.partition
    if target > vsm.max_vtl or target == 0:
        return hv.profile.enable_partition_vtl_bad_target, 0
    if vsm.vtl_enabled(target):
        return HvStatus.INVALID_VTL_STATE, 0
    # A VTL may enable a higher VTL only if it is the highest enabled VTL below it (TLFS).
    if target > ctx.caller_vtl and vsm.highest_enabled() != ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED, 0
    if flags & defs.HvEnablePartitionVtlFlags.ENABLE_SUPERVISOR_SHADOW_STACK:
        return HvStatus.INVALID_PARAMETER, 0  # not offered (capability bit 18 is 0), as OpenHCL
    if flags & defs.HvEnablePartitionVtlFlags.ENABLE_HARDWARE_HVPT and not hv.hvpt_available:
        # hvdef EnablePartitionVtlFlags.enable_hardware_hvpt: accepted only where the capability
        # HvRegisterVsmCapabilities.hardware_hvpt_available is reported (OpenHCL, which offers
        # none, refuses it with InvalidParameter).
        return HvStatus.INVALID_PARAMETER, 0
    if flags & defs.HvEnablePartitionVtlFlags.ENABLE_MBEC:
        if not hv.mbec_available:
            return HvStatus.INVALID_PARAMETER, 0
        vsm.mbec_vtls |= 1 << target
    if flags & defs.HvEnablePartitionVtlFlags.ENABLE_HARDWARE_HVPT:
        vsm.hvpt_vtls |= 1 << target
    vsm.enabled_vtls |= 1 << target
    # ZeroMemoryOnReset is on by default (vsm-spec §4.1, TLFS).
    vsm.config[target] = defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask
    hv.slat.enable_vtl(target)  # enabling protects nothing: RWX default (vsm-spec §3.4)
    if hv.trace.on:
        ctx.vp.emit("vsm", "enable-partition-vtl", "enabled", target_vtl=target, flags=flags)
    return HvStatus.SUCCESS, 0


def enable_vp_vtl(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, vp_index, target = defs.ENABLE_VP_VTL_HEADER.unpack(ctx.header[:16])
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, 0
    vp = target_vp(hv, ctx.vp, vp_index)
    if vp is None:
        return HvStatus.INVALID_VP_INDEX, 0
    vsm = hv.partition
    if target == 0 or target > vsm.max_vtl:
        # OpenHCL: InvalidParameter for any target other than VTL1; kvm-unit-tests expects the
        # same for VTL 0 ("EnableVpVtl: VTL0 already enabled").
        return hv.profile.enable_vp_vtl_bad_target, 0
    if not vsm.vtl_enabled(target):
        return HvStatus.INVALID_VTL_STATE, 0
    if vp.vtl_enabled(target):
        return HvStatus.VTL_ALREADY_ENABLED, 0
    if target > ctx.caller_vtl:
        # Only the highest enabled VTL may enable a higher one; OpenHCL further limits a VTL0
        # caller to its own VP while the VTL is enabled on no VP yet (vsm-spec §1.3).
        if vsm.highest_enabled() != target or ctx.caller_vtl != target - 1:
            return HvStatus.ACCESS_DENIED, 0
        if vp is not ctx.vp or any(other.vtl_enabled(target) for other in hv.vps):
            return HvStatus.ACCESS_DENIED, 0
    state = decode_context(ctx.header[16:])
    if state is None:
        return HvStatus.INVALID_PARAMETER, 0
    vp.enable_vtl(target, state)
    hv.states[vp.index][target] = VpVtlState()
    if hv.trace.on:
        ctx.vp.emit(
            "vsm", "enable-vp-vtl", "enabled", target_vp=vp.index, target_vtl=target, rip=state.rip
        )
    return HvStatus.SUCCESS, 0


def _disable_target(hv: Hypervisor, ctx: CallContext, target: int) -> HvStatus | None:
    """Who may disable a VTL.  The TLFS publishes no page for the Disable calls; the model mirrors
    its enable rule ("a VTL can only be enabled by a higher VTL", HvCallEnableVpVtl.md) without
    the exception for the highest VTL: only a VTL above the target may disable it, VTL0 is never
    disabled, and the running VTL cannot disable itself.  In a two-VTL partition no caller
    qualifies, so VTL0 asking to disable VTL1 is ACCESS_DENIED (the TLFS' preferred status for a
    privilege failure, hypercall-interface.md "Hypercall Restrictions")."""
    if target == 0 or target > hv.partition.max_vtl:
        return HvStatus.INVALID_PARAMETER
    if target >= ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED
    return None


def disable_partition_vtl(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, target = defs.DISABLE_PARTITION_VTL_INPUT.unpack(ctx.header)
    status = check_partition(partition_id, hv) or _disable_target(hv, ctx, target)
    if status is None and not hv.partition.vtl_enabled(target):
        status = HvStatus.INVALID_VTL_STATE
    if status is None:
        # Unreachable with two VTLs (no caller is above VTL1); refuse rather than half-model it.
        status = HvStatus.OPERATION_DENIED
    if hv.trace.on:
        ctx.vp.emit("vsm", "disable-partition-vtl", status.name.lower(), target_vtl=target)
    return status, 0


def disable_vp_vtl(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, vp_index, target = defs.DISABLE_VP_VTL_INPUT.unpack(ctx.header)
    status = check_partition(partition_id, hv)
    if status is None and target_vp(hv, ctx.vp, vp_index) is None:
        status = HvStatus.INVALID_VP_INDEX
    status = status or _disable_target(hv, ctx, target)
    if status is None:
        status = HvStatus.OPERATION_DENIED  # as above: no VTL above VTL1 exists to ask
    if hv.trace.on:
        ctx.vp.emit("vsm", "disable-vp-vtl", status.name.lower(), target_vtl=target)
    return status, 0


SPECS = (
    CallSpec(HvCallCode.ENABLE_PARTITION_VTL, enable_partition_vtl, 16),
    CallSpec(HvCallCode.DISABLE_PARTITION_VTL, disable_partition_vtl, 16),
    CallSpec(HvCallCode.ENABLE_VP_VTL, enable_vp_vtl, 16 + 224),
    CallSpec(HvCallCode.DISABLE_VP_VTL, disable_vp_vtl, 16),
)
