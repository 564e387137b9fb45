"""Checks shared by several hypercalls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.defs import HvStatus
from vbsim.hv.profile import MODEL_PARTITION_ID

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor


def check_partition(partition_id: int, hv: Hypervisor | None = None) -> HvStatus | None:
    """Only the calling partition exists in the model.  HV_PARTITION_ID_SELF always names it; its
    own partition ID does too under the ``hyperv`` status profile (TLFS hv_partition_id.md), not
    under ``openhcl`` (OpenHCL accepts only SELF: see :mod:`vbsim.hv.profile`)."""
    if partition_id == defs.HV_PARTITION_ID_SELF:
        return None
    if hv is not None and hv.profile.accept_own_partition_id and partition_id == MODEL_PARTITION_ID:
        return None
    return HvStatus.INVALID_PARTITION_ID


def target_vp(hv: Hypervisor, caller: VirtualProcessor, index: int) -> VirtualProcessor | None:
    if index == defs.HV_VP_INDEX_SELF:
        return caller
    if 0 <= index < len(hv.vps):
        return hv.vps[index]
    return None
