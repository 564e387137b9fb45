"""Reporting refused DMA to VTL1: IOMMU fault messages on SINT1.

How a DMA violation is reported under VSM is **unverified** (vsm-spec §3.5, D12).  What is known:
hvdef defines ``HvMessageTypeIommuFault = 0x80000024`` and Linux defines
``HV_SYNIC_IOMMU_FAULT_SINT_INDEX = 1``; nothing says which VTL receives it or what the payload
holds.  Model choices, all of them the model's own:

- The hypervisor, which programs the IOMMU when VBS is on (vbs-internals §5.5), receives every
  IOMMU fault and posts one ``HvMessageTypeIommuFault`` message into **SINT1 of VTL1 on VP0**
  (the SIM slot 1 of VTL1's SIM page), through the ordinary SynIC posting path (a busy slot sets
  MessagePending and the message waits for EOM).
- **No VTL switch is forced** and no interrupt is queued: the message is posted and VTL1 sees it
  the next time it runs and looks at its SIM page (a polled SINT).  A device cannot make VTL1
  run; it can only leave a note.  (Queuing the SINT1 vector would also make VTL1 take an
  interrupt it may have no handler for.)
- If VTL1 is not enabled (partition or VP0), or its SynIC cannot take SINT1 messages (SCONTROL or
  SIMP disabled, SINT1 masked — the power-on state), the fault is only traced, outcome
  ``unreported``.  The IOMMU's own fault log (:attr:`vbsim.hw.iommu.Iommu.faults`) has it anyway.

Payload (24 bytes, little-endian; the model's layout, D12):

====== ===== ================================================================================
Offset Size  Field
====== ===== ================================================================================
0      u32   DeviceId: the IOMMU requester ID
4      u8    AccessType: HV_INTERCEPT_ACCESS_TYPE values, 0 read (device read memory),
             1 write (device wrote memory)
5      u8    Flags: bit0 GpaValid, bit1 IommuDenied (domain or Kernel DMA Protection),
             bit2 SlatDenied (VTL0's SLAT rights), bit3 Unbacked (GPA is not RAM); rest zero
6      u16   Reserved (zero)
8      u64   Iova: the device-visible address of the refused page's first byte in the transfer
16     u64   Gpa: its GPA when GpaValid (0 otherwise)
====== ===== ================================================================================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from vbsim.hv import defs, synic
from vbsim.hv.defs import HvMessageType
from vbsim.hw.iommu import Iommu, IommuFault, Reason
from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import Slat
from vbsim.trace import Trace

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor

#: The VTL and VP that receive IOMMU faults (model choice, see the module docstring).
TARGET_VTL: Final = 1
TARGET_VP: Final = 0
SINT: Final = defs.HV_SYNIC_IOMMU_FAULT_SINT_INDEX
MESSAGE_TYPE: Final = HvMessageType.IOMMU_FAULT

IOMMU_FAULT_PAYLOAD: Final = struct.Struct("<IBB2xQQ")
FLAG_GPA_VALID: Final = 1 << 0
FLAG_IOMMU_DENIED: Final = 1 << 1
FLAG_SLAT_DENIED: Final = 1 << 2
FLAG_UNBACKED: Final = 1 << 3

_REASON_FLAGS = {
    Reason.UNMAPPED: FLAG_IOMMU_DENIED,
    Reason.RIGHTS: FLAG_IOMMU_DENIED,
    Reason.KERNEL_DMA_PROTECTION: FLAG_IOMMU_DENIED,
    Reason.UNASSIGNED: FLAG_IOMMU_DENIED,
    Reason.SLAT: FLAG_SLAT_DENIED,
    Reason.UNBACKED: FLAG_UNBACKED,
}


@dataclass(frozen=True, slots=True)
class IommuFaultMessage:
    """The decoded payload."""

    device_id: int
    access: int
    flags: int
    iova: int
    gpa: int | None


def encode(fault: IommuFault) -> bytes:
    flags = _REASON_FLAGS[fault.reason]
    if fault.gpa is not None:
        flags |= FLAG_GPA_VALID
    return IOMMU_FAULT_PAYLOAD.pack(
        fault.device_id & 0xFFFF_FFFF,
        int(fault.access),
        flags,
        fault.iova,
        fault.gpa if fault.gpa is not None else 0,
    )


def decode(payload: bytes) -> IommuFaultMessage:
    device_id, access, flags, iova, gpa = IOMMU_FAULT_PAYLOAD.unpack_from(payload)
    return IommuFaultMessage(
        device_id, access, flags, iova, gpa if flags & FLAG_GPA_VALID else None
    )


def report(hv: Hypervisor, fault: IommuFault) -> bool:
    """Post ``fault`` to SINT1 of VTL1 on VP0; True if posted (or queued behind a busy slot)."""
    vp = hv.vps[TARGET_VP] if len(hv.vps) > TARGET_VP else None
    why = ""
    if vp is None or not hv.partition.vtl_enabled(TARGET_VTL) or not vp.vtl_enabled(TARGET_VTL):
        why = "vtl1-not-enabled"
    elif not hv.states[vp.index][TARGET_VTL].synic.ready(SINT):
        why = "sint-not-ready"
    elif not synic.post(hv, vp, TARGET_VTL, SINT, MESSAGE_TYPE, encode(fault)):
        why = "sim-unbacked"
    if hv.trace.on:
        hv.trace.emit(
            "iommu-fault",
            "synic",
            "unreported" if why else "posted",
            vp=TARGET_VP,
            actor=fault.device,
            device=fault.device,
            device_id=fault.device_id,
            access=fault.access.name.lower(),
            iova=fault.iova,
            gpa=fault.gpa,
            refused_by=fault.mechanism,
            reason=fault.reason.value,
            to_vtl=TARGET_VTL,
            sint=SINT,
            message_type=int(MESSAGE_TYPE),
            why=why or None,
        )
    return not why


def connect(hv: Hypervisor, iommu: Iommu) -> None:
    """Make ``hv`` the receiver of ``iommu``'s faults."""

    def listener(fault: IommuFault) -> None:
        report(hv, fault)

    iommu.listen(listener)


def platform_iommu(
    ram: GuestRam,
    slat: Slat | None,
    trace: Trace,
    hv: Hypervisor | None,
    *,
    kernel_dma_protection: bool = False,
    block_unassigned: bool = False,
) -> Iommu:
    """The machine's IOMMU: checked against VTL0's SLAT and reporting to ``hv`` when VBS is on
    (``hv`` not None); the IOMMU alone when VBS is off."""
    iommu = Iommu(
        ram,
        slat if hv is not None else None,
        trace,
        kernel_dma_protection=kernel_dma_protection,
        block_unassigned=block_unassigned,
    )
    if hv is not None:
        connect(hv, iommu)
    return iommu
