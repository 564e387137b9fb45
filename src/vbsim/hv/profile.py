"""Statuses on which the public sources disagree, or where the TLFS is silent (issue 11 item 11).

The TLFS hypercall pages name restrictions but not the status a violation returns.  Two public
implementations answer differently:

- ``HYPERV``: what kvm-unit-tests ``x86/hyperv_vsm.c`` (vianpl/kvm-unit-tests) expects of a
  Hyper-V-compatible hypervisor: ``test_vsm_enable_partition_vtl_negative`` wants
  HV_STATUS_INVALID_PARAMETER for target VTL 0 and for MaximumVtl + 1,
  ``test_vsm_enable_vp_vtl_negative`` INVALID_PARAMETER for VTL 0, and
  ``test_get_set_vp_registers_negative`` INVALID_PARAMETER for an unknown register name.  A
  partition may also name itself by its own partition ID (TLFS hv_partition_id.md:
  HV_PARTITION_ID_SELF is a shorthand "for the calling partition", not the only valid value).
- ``OPENHCL``: OpenVMM's OpenHCL (``openhcl/virt_mshv_vtl/src/processor/hardware_cvm/mod.rs``):
  EnablePartitionVtl maps an invalid target VTL to HvError::AccessDenied, EnableVpVtl to
  HvError::InvalidParameter, and only HV_PARTITION_ID_SELF is accepted (InvalidPartitionId).
  For an unknown register name the model keeps hvdef's HvError::UnknownRegisterName.

The model's default is ``HYPERV`` (the hypervisor vbsim models); ``Hypervisor.profile`` selects.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.hv.defs import HvStatus

#: The partition ID of the model's one partition (what HvCallGetPartitionId would return): the
#: hypervisor "assigns partition IDs sequentially, starting from 1" (TLFS hv_partition_id.md).
MODEL_PARTITION_ID = 0x0000_0000_0000_0001


@dataclass(frozen=True, slots=True)
class StatusProfile:
    name: str
    enable_partition_vtl_bad_target: HvStatus
    enable_vp_vtl_bad_target: HvStatus
    unknown_register: HvStatus
    accept_own_partition_id: bool
    source: str


HYPERV = StatusProfile(
    "hyperv",
    HvStatus.INVALID_PARAMETER,
    HvStatus.INVALID_PARAMETER,
    HvStatus.INVALID_PARAMETER,
    True,
    "kvm-unit-tests x86/hyperv_vsm.c negative tests; TLFS hv_partition_id.md",
)
OPENHCL = StatusProfile(
    "openhcl",
    HvStatus.ACCESS_DENIED,
    HvStatus.INVALID_PARAMETER,
    HvStatus.UNKNOWN_REGISTER_NAME,
    False,
    "OpenVMM openhcl/virt_mshv_vtl hardware_cvm/mod.rs; hvdef HvError",
)
PROFILES: dict[str, StatusProfile] = {p.name: p for p in (HYPERV, OPENHCL)}
