"""HvCallStartVirtualProcessor (0x99) — vsm-spec §1.3, §5.1, vbs-internals §1.1 row 15.

The only way to start a VP in a VTL above 0.  DenyLowerVtlStartup in a higher VTL's partition
config makes every lower-VTL caller fail (ACCESS_DENIED, OpenHCL), so once the Secure Kernel sets
it, VTL0 cannot start a processor with state of its choosing.  A started VP runs at once in the
model (synchronously): its highest enabled VTL first, as OpenHCL does, then VTL0 if this call
gave VTL0's context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.calls.common import check_partition
from vbsim.hv.calls.context import decode_context
from vbsim.hv.defs import HvCallCode, HvStatus, HvVtlEntryReason
from vbsim.hv.dispatch import CallContext, CallSpec

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor


def start_virtual_processor(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, vp_index, target_vtl = defs.START_VIRTUAL_PROCESSOR_HEADER.unpack(ctx.header[:16])
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, 0
    if not 0 <= vp_index < len(hv.vps):
        return HvStatus.INVALID_VP_INDEX, 0
    if target_vtl > ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED, 0
    for vtl, config in hv.partition.config.items():
        if vtl > ctx.caller_vtl and defs.PCONFIG_DENY_LOWER_VTL_STARTUP.extract(config):
            if hv.trace.on:
                ctx.vp.emit("vsm", "deny-lower-vtl-startup", "denied", target_vp=vp_index)
            return HvStatus.ACCESS_DENIED, 0
    vp = hv.vps[vp_index]
    if vp.started:
        return HvStatus.INVALID_VP_STATE, 0
    if target_vtl > 0 and not vp.vtl_enabled(target_vtl):
        return HvStatus.INVALID_VP_STATE, 0
    state = decode_context(ctx.header[16:])
    if state is None:
        return HvStatus.INVALID_REGISTER_VALUE, 0
    vp.enable_vtl(target_vtl, state)
    vp.started = True
    if hv.trace.on:
        ctx.vp.emit(
            "vsm",
            "start-virtual-processor",
            "started",
            target_vp=vp_index,
            target_vtl=target_vtl,
            rip=state.rip,
        )
    run_started(hv, vp_index, target_vtl)
    return HvStatus.SUCCESS, 0


def run_started(hv: Hypervisor, vp_index: int, context_vtl: int) -> None:
    """Run a freshly started VP: its highest enabled VTL first, then VTL0 if it has a context."""
    vp = hv.vps[vp_index]
    highest = max(v for v in range(len(vp.banks)) if vp.vtl_enabled(v))
    vp.switch_vtl(0)
    if highest > 0:
        hv.enter_vtl(vp, highest, HvVtlEntryReason.INTERRUPT)
    if context_vtl == 0 and vp.vtl == 0:
        vp.call(vp.p.rip)


SPECS = (CallSpec(HvCallCode.START_VIRTUAL_PROCESSOR, start_virtual_processor, 16 + 224),)
