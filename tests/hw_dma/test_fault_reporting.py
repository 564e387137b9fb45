"""IOMMU faults reported to VTL1 on SINT1 (vsm-spec §3.5, D12: the model's choices)."""

from __future__ import annotations

from vbsim.hv import defs
from vbsim.hv.defs import HvMessageType, HvMsr
from vbsim.hv.iommu_faults import (
    FLAG_GPA_VALID,
    FLAG_UNBACKED,
    IOMMU_FAULT_PAYLOAD,
    SINT,
    decode,
    encode,
    platform_iommu,
)
from vbsim.hw.dma import DIR_TO_MEMORY, STATUS_BLOCKED, DmaDevice, driver_transfer
from vbsim.hw.iommu import IommuFault, Reason
from vbsim.hw.x86 import Access
from vbsim.machine import Machine

from .rig import BASE, RAM_SIZE, Rig, make_rig


def test_sint_index_and_message_type() -> None:
    assert SINT == defs.HV_SYNIC_IOMMU_FAULT_SINT_INDEX == 1
    assert int(HvMessageType.IOMMU_FAULT) == 0x80000024
    assert IOMMU_FAULT_PAYLOAD.size == 24


def test_payload_round_trip() -> None:
    fault = IommuFault(
        7, "nic", Access.WRITE, 0x1234_5000, RAM_SIZE, "ram.unbacked", Reason.UNBACKED
    )
    raw = encode(fault)
    assert raw[:4] == (7).to_bytes(4, "little") and raw[4] == 1
    assert raw[6:8] == bytes(2)  # reserved
    msg = decode(raw)
    assert (msg.device_id, msg.access, msg.iova, msg.gpa) == (7, 1, 0x1234_5000, RAM_SIZE)
    assert msg.flags == FLAG_GPA_VALID | FLAG_UNBACKED


def test_masked_sint1_leaves_the_fault_unreported() -> None:
    rig = make_rig(sint1=False)  # the bare monitor unmasks SINT0 only
    try:
        _, gpa = rig.page()
        rig.protect(gpa, 0)
        assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
        assert rig.message(1)[0] == HvMessageType.NONE
        [event] = rig.machine.trace.find(kind="iommu-fault")
        assert event.outcome == "unreported" and event.detail["why"] == "sint-not-ready"
        assert rig.iommu.faults[-1].gpa == gpa  # the IOMMU's own log has it
        # VTL1 masks SINT1 explicitly after enabling it: still unreported.
        rig.enable_sint1()
        rig.vtl1_wrmsr(HvMsr.SINT1, (1 << 16) | 0x31)
        assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
        assert rig.machine.trace.find(kind="iommu-fault")[-1].outcome == "unreported"
    finally:
        rig.machine.close()


def test_no_vtl1_means_unreported() -> None:
    machine = Machine(ram_size=RAM_SIZE)
    machine.trace.record()
    try:
        iommu = platform_iommu(machine.ram, machine.slat, machine.trace, machine.hv)
        iommu.kernel_dma_protection = True
        evil = DmaDevice.malicious(iommu)
        assert evil.dma_write(0x10000, b"x") == STATUS_BLOCKED
        [event] = machine.trace.find(kind="iommu-fault")
        assert event.outcome == "unreported" and event.detail["why"] == "vtl1-not-enabled"
    finally:
        machine.close()


def test_busy_slot_queues_until_eom(rig: Rig) -> None:
    _, gpa1 = rig.page()
    _, gpa2 = rig.page()
    rig.protect(gpa1, 0)
    rig.protect(gpa2, 0)
    assert driver_transfer(rig.vp, BASE, gpa1, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert driver_transfer(rig.vp, BASE, gpa2, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
    mtype, flags, payload = rig.message(1)
    assert mtype == HvMessageType.IOMMU_FAULT and decode(payload).gpa == gpa1
    assert flags & defs.HV_MESSAGE_FLAG_PENDING  # a second message waits
    # VTL1 consumes the first message and writes EOM: the second is delivered.
    rig.clear_slot(1)
    rig.vtl1_wrmsr(HvMsr.EOM, 0)
    mtype, _flags, payload = rig.message(1)
    assert mtype == HvMessageType.IOMMU_FAULT and decode(payload).gpa == gpa2
    outcomes = [e.outcome for e in rig.machine.trace.find(kind="iommu-fault")]
    assert outcomes == ["posted", "posted"]


def test_fault_does_not_disturb_sint0_or_the_monitor(rig: Rig) -> None:
    _, gpa = rig.page()
    rig.protect(gpa, 0)
    assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert rig.message(0)[0] == HvMessageType.NONE  # intercepts use SINT0; untouched
    assert rig.monitor.log(rig.vp) == []  # no intercept was raised
    assert rig.kernel.exceptions == []  # and VTL0 got no exception: DMA is asynchronous
