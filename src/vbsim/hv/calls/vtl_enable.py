"""HvCallEnablePartitionVtl (0x0D) and HvCallEnableVpVtl (0x0F) — vsm-spec §1.3, §3.4, §5.1.

Statuses for refusals are OpenHCL's (vsm-spec D7: what real Hyper-V returns is unverified):
an invalid target VTL → ACCESS_DENIED; a VTL already enabled for the partition →
INVALID_VTL_STATE; already enabled on the VP → VTL_ALREADY_ENABLED.
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
    status = check_partition(partition_id)
    if status is not None:
        return status, 0
    if flags & defs.ENABLE_PARTITION_VTL_FLAGS_RSVD_MASK:
        return HvStatus.INVALID_PARAMETER, 0
    vsm = hv.partition
    if target > vsm.max_vtl or target == 0:
        return HvStatus.ACCESS_DENIED, 0
    if vsm.vtl_enabled(target):
        return HvStatus.INVALID_VTL_STATE, 0
    # A VTL may enable a higher VTL only if it is the highest enabled VTL below it (TLFS).
    if target > ctx.caller_vtl and vsm.highest_enabled() != ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED, 0
    if flags & defs.HvEnablePartitionVtlFlags.ENABLE_MBEC:
        if not hv.mbec_available:
            return HvStatus.INVALID_PARAMETER, 0
        vsm.mbec_vtls |= 1 << target
    vsm.enabled_vtls |= 1 << target
    # ZeroMemoryOnReset is on by default (vsm-spec §4.1, TLFS).
    vsm.config[target] = defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask
    hv.slat.enable_vtl(target)  # enabling protects nothing: RWX default (vsm-spec §3.4)
    if hv.trace.on:
        ctx.vp.emit("vsm", "enable-partition-vtl", "enabled", target_vtl=target, flags=flags)
    return HvStatus.SUCCESS, 0


def enable_vp_vtl(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, vp_index, target = defs.ENABLE_VP_VTL_HEADER.unpack(ctx.header[:16])
    status = check_partition(partition_id)
    if status is not None:
        return status, 0
    vp = target_vp(hv, ctx.vp, vp_index)
    if vp is None:
        return HvStatus.INVALID_VP_INDEX, 0
    vsm = hv.partition
    if target == 0 or target > vsm.max_vtl:
        return HvStatus.ACCESS_DENIED, 0
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


SPECS = (
    CallSpec(HvCallCode.ENABLE_PARTITION_VTL, enable_partition_vtl, 16),
    CallSpec(HvCallCode.ENABLE_VP_VTL, enable_vp_vtl, 16 + 224),
)
