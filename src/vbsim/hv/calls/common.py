"""Checks shared by several hypercalls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.defs import HvStatus

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor


def check_partition(partition_id: int) -> HvStatus | None:
    """Only the calling partition exists in the model (vsm-spec §1.1 HV_PARTITION_ID_SELF)."""
    if partition_id != defs.HV_PARTITION_ID_SELF:
        return HvStatus.INVALID_PARTITION_ID
    return None


def target_vp(hv: Hypervisor, caller: VirtualProcessor, index: int) -> VirtualProcessor | None:
    if index == defs.HV_VP_INDEX_SELF:
        return caller
    if 0 <= index < len(hv.vps):
        return hv.vps[index]
    return None
