"""HvCallInstallIntercept (0x4D) — vsm-spec §6.1: a higher VTL installs I/O-port intercepts on the
lower VTL (OpenHCL lets VTL1 do this; the Secure Kernel protects PCI config ports 0xCF8/0xCFC,
vbs-internals §5.7).  Input: PartitionId u64, AccessType u32 (R=1, W=2), InterceptType u32,
InterceptParameter u64 (the port for X64IoPort).  Other intercept types are not modelled
(INVALID_PARAMETER)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vbsim.hv.calls.common import check_partition
from vbsim.hv.defs import HvCallCode, HvInterceptType, HvStatus
from vbsim.hv.dispatch import CallContext, CallSpec

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor

INSTALL_INTERCEPT_INPUT = struct.Struct("<QIIQ")


def install_intercept(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, access_mask, kind, parameter = INSTALL_INTERCEPT_INPUT.unpack(ctx.header)
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, 0
    if ctx.caller_vtl == 0:
        return HvStatus.ACCESS_DENIED, 0  # only a higher VTL intercepts a lower one
    if kind != HvInterceptType.X64_IO_PORT or access_mask & ~3 or parameter > 0xFFFF:
        return HvStatus.INVALID_PARAMETER, 0
    for vp_states in hv.states:  # intercepts are partition-wide
        ports = vp_states[ctx.caller_vtl].io_ports
        if access_mask:
            ports[parameter] = access_mask
        else:
            ports.pop(parameter, None)
    return HvStatus.SUCCESS, 0


SPECS = (CallSpec(HvCallCode.INSTALL_INTERCEPT, install_intercept, 24),)
