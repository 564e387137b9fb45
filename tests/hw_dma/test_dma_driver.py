"""A VTL0 driver programs the DMA engine through port I/O; VTL1's SLAT protections bind DMA."""

from __future__ import annotations

import pytest

from vbsim.hv.defs import HvMessageType
from vbsim.hv.iommu_faults import FLAG_GPA_VALID, FLAG_SLAT_DENIED, decode
from vbsim.hw import dma
from vbsim.hw.dma import (
    CMD_GO,
    CMD_RESET,
    DIR_FROM_MEMORY,
    DIR_TO_MEMORY,
    MAX_TRANSFER,
    REG_ADDR_HI,
    REG_ADDR_LO,
    REG_COMMAND,
    REG_DEVICE_ID,
    REG_DIRECTION,
    REG_LENGTH,
    REG_STATUS,
    REG_XFERRED,
    STATUS_BLOCKED,
    STATUS_DONE,
    STATUS_ERROR,
    STATUS_IDLE,
    driver_transfer,
)
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.slat import R
from vbsim.hw.x86 import PAGE_SIZE

from .rig import BASE, Rig

SECTOR = bytes(range(256)) * 2  # a 512-byte "disk sector"


def dma_events(rig: Rig) -> list[dict[str, object]]:
    return [
        {"mechanism": e.mechanism, "outcome": e.outcome, **e.detail}
        for e in rig.machine.trace.find(kind="dma")
    ]


def test_driver_dma_into_a_normal_page_arrives(rig: Rig) -> None:
    va, gpa = rig.page()
    rig.device.load(SECTOR)
    assert rig.vp.vtl == 0 and rig.vp.cpl == 0
    status = driver_transfer(rig.vp, BASE, gpa + 0x100, len(SECTOR), DIR_TO_MEMORY)
    assert status == STATUS_DONE
    assert rig.vp.read(va + 0x100, len(SECTOR)) == SECTOR  # the driver sees the sector
    assert rig.vp.inp(BASE + REG_XFERRED, 4) == len(SECTOR)
    event = dma_events(rig)[-1]
    assert event["outcome"] == "allowed" and event["mechanism"] == "slat"
    assert event["device"] == "disk0" and event["iova"] == gpa + 0x100
    assert event["gpa"] == gpa + 0x100 and event["length"] == len(SECTOR)
    assert event["direction"] == "to-memory"


def test_driver_dma_from_memory_fills_the_device_buffer(rig: Rig) -> None:
    va, gpa = rig.page()
    packet = b"GET / HTTP/1.1\r\n" * 8
    rig.vp.write(va, packet)
    assert driver_transfer(rig.vp, BASE, gpa, len(packet), DIR_FROM_MEMORY) == STATUS_DONE
    assert rig.device.contents(len(packet)) == packet
    assert dma_events(rig)[-1]["direction"] == "from-memory"


@pytest.mark.parametrize("flags", [0, R], ids=["no-access", "read-only"])
def test_vtl1_protected_page_blocks_device_writes(rig: Rig, flags: int) -> None:
    va, gpa = rig.page()
    rig.vp.write(va, b"\x5a" * PAGE_SIZE)
    rig.protect(gpa, flags)
    before = rig.machine.ram.read(gpa, PAGE_SIZE)
    rig.device.load(b"\xee" * PAGE_SIZE)
    status = driver_transfer(rig.vp, BASE, gpa, PAGE_SIZE, DIR_TO_MEMORY)
    assert status == STATUS_BLOCKED
    assert rig.vp.inp(BASE + REG_STATUS, 4) == STATUS_BLOCKED
    assert rig.vp.inp(BASE + REG_XFERRED, 4) == 0
    assert rig.machine.ram.read(gpa, PAGE_SIZE) == before  # memory unchanged
    event = dma_events(rig)[-1]
    assert event["outcome"] == "blocked" and event["mechanism"] == "slat"
    assert event["gpa"] == gpa and event["reason"] == "slat"
    # The fault reached VTL1: SIM slot 1 holds HvMessageTypeIommuFault with the GPA.
    mtype, _flags, payload = rig.message(1)
    assert mtype == HvMessageType.IOMMU_FAULT
    assert int(HvMessageType.IOMMU_FAULT) == 0x80000024
    msg = decode(payload)
    assert msg.device_id == rig.device.device_id
    assert msg.access == 1  # write
    assert msg.gpa == gpa and msg.iova == gpa
    assert msg.flags == FLAG_GPA_VALID | FLAG_SLAT_DENIED
    # The message is posted; no VTL switch was forced.
    assert rig.vp.vtl == 0
    assert not rig.machine.hv.states[0][1].pending_interrupts  # type: ignore[union-attr]
    [fault] = rig.machine.trace.find(kind="iommu-fault")
    assert fault.outcome == "posted" and fault.detail["gpa"] == gpa


def test_device_reads_of_a_no_access_page_never_reach_the_buffer(rig: Rig) -> None:
    va, gpa = rig.page()
    secret = b"LSA-SECRET-0123456789abcdef"
    rig.vp.write(va + 0x80, secret)
    rig.protect(gpa, 0)
    status = driver_transfer(rig.vp, BASE, gpa, PAGE_SIZE, DIR_FROM_MEMORY)
    assert status == STATUS_BLOCKED
    assert secret not in rig.device.buffer
    assert rig.device.buffer == bytearray(len(rig.device.buffer))
    msg = decode(rig.message(1)[2])
    assert msg.access == 0 and msg.gpa == gpa


def test_device_may_read_a_read_only_page(rig: Rig) -> None:
    va, gpa = rig.page()
    rig.vp.write(va, b"public-key")
    rig.protect(gpa, R)
    assert driver_transfer(rig.vp, BASE, gpa, 10, DIR_FROM_MEMORY) == STATUS_DONE
    assert rig.device.contents(10) == b"public-key"


def test_vtl1_own_memory_is_out_of_reach(rig: Rig) -> None:
    log_gpa = rig.monitor.log_gpa
    before = rig.machine.ram.read(log_gpa, PAGE_SIZE)
    rig.device.load(b"\xcc" * 64)
    assert driver_transfer(rig.vp, BASE, log_gpa, 64, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert driver_transfer(rig.vp, BASE, log_gpa, 64, DIR_FROM_MEMORY) == STATUS_BLOCKED
    assert rig.machine.ram.read(log_gpa, PAGE_SIZE) == before


def test_transfer_spanning_allowed_and_forbidden_pages_is_blocked_whole(rig: Rig) -> None:
    first = rig.machine.ram.frames.alloc_contiguous(2, "test-dma")
    gpa = first << 12
    space = rig.kernel.space
    rig.vp.write(space.phys_va(gpa), b"\x11" * (2 * PAGE_SIZE))
    rig.protect(gpa + PAGE_SIZE, R)  # the second page becomes read-only for VTL0
    rig.device.load(b"\x99" * 64)
    status = driver_transfer(rig.vp, BASE, gpa + PAGE_SIZE - 32, 64, DIR_TO_MEMORY)
    assert status == STATUS_BLOCKED
    assert rig.machine.ram.read(gpa, 2 * PAGE_SIZE) == b"\x11" * (2 * PAGE_SIZE)
    msg = decode(rig.message(1)[2])
    assert msg.gpa == gpa + PAGE_SIZE and msg.iova == gpa + PAGE_SIZE
    # Reading across the boundary is fine: VTL0 may read both pages.
    status = driver_transfer(rig.vp, BASE, gpa + PAGE_SIZE - 32, 64, DIR_FROM_MEMORY)
    assert status == STATUS_DONE
    assert rig.device.contents(64) == b"\x11" * 64


def test_unbacked_gpa_is_blocked(rig: Rig) -> None:
    size = rig.machine.ram.size
    assert driver_transfer(rig.vp, BASE, size - 16, 32, DIR_TO_MEMORY) == STATUS_BLOCKED
    event = dma_events(rig)[-1]
    assert event["mechanism"] == "ram.unbacked" and event["reason"] == "unbacked"


@pytest.mark.parametrize(
    ("iova", "length", "direction", "problem"),
    [
        (0x10000, 0, DIR_TO_MEMORY, "length"),
        (0x10000, MAX_TRANSFER + 1, DIR_TO_MEMORY, "length"),
        (0x10000, 0xFFFF_FFFF, DIR_FROM_MEMORY, "length"),
        (0xFFFF_FFFF_FFFF_F000, 0x2000, DIR_TO_MEMORY, "wrap"),
        (0x10000, 16, 7, "direction"),
    ],
)
def test_absurd_programming_is_an_error_status(
    rig: Rig, iova: int, length: int, direction: int, problem: str
) -> None:
    snapshot = rig.machine.ram.read(0, 1 << 20)
    rig.device.load(b"\xab" * 64)
    assert driver_transfer(rig.vp, BASE, iova, length, direction) == STATUS_ERROR
    assert rig.machine.ram.read(0, 1 << 20) == snapshot
    event = dma_events(rig)[-1]
    assert (event["mechanism"], event["outcome"], event["reason"]) == ("dma", "error", problem)
    assert len(rig.iommu.faults) == 0  # malformed programming is no IOMMU fault


def test_register_file(rig: Rig) -> None:
    vp = rig.vp
    vp.out(BASE + REG_ADDR_LO, 4, 0x1234_5000)
    vp.out(BASE + REG_ADDR_HI, 2, 0xBEEF)
    vp.out(BASE + REG_LENGTH, 1, 0x40)
    assert vp.inp(BASE + REG_ADDR_LO, 4) == 0x1234_5000
    assert vp.inp(BASE + REG_ADDR_HI, 4) == 0xBEEF
    assert vp.inp(BASE + REG_LENGTH, 4) == 0x40
    assert vp.inp(BASE + REG_DEVICE_ID, 4) == rig.device.device_id
    assert vp.inp(BASE + REG_STATUS, 4) == STATUS_IDLE
    vp.out(BASE + REG_STATUS, 4, STATUS_DONE)  # read-only
    assert vp.inp(BASE + REG_STATUS, 4) == STATUS_IDLE
    vp.out(BASE + REG_DEVICE_ID, 4, 0x99)
    assert vp.inp(BASE + REG_DEVICE_ID, 4) == rig.device.device_id
    vp.out(BASE + REG_COMMAND, 4, CMD_RESET)
    assert vp.inp(BASE + REG_ADDR_LO, 4) == 0
    assert vp.inp(BASE + REG_COMMAND, 4) == 0


def test_bytewise_programming_and_go(rig: Rig) -> None:
    va, gpa = rig.page()
    rig.device.load(b"bytewise")
    vp = rig.vp
    for i, byte in enumerate(gpa.to_bytes(8, "little")):
        vp.out(BASE + REG_ADDR_LO + i, 1, byte)
    vp.out(BASE + REG_LENGTH, 2, 8)
    vp.out(BASE + REG_DIRECTION, 1, DIR_TO_MEMORY)
    vp.out(BASE + REG_COMMAND, 1, CMD_GO)
    assert vp.inp(BASE + REG_STATUS, 1) == STATUS_DONE
    assert vp.read(va, 8) == b"bytewise"


def test_ports_need_ring0(rig: Rig) -> None:
    """User mode cannot program the device (IOPL 0): ``out`` at CPL3 is refused by the CPU."""
    _, gpa = rig.page()
    rig.vp.set_cpl(3)
    try:
        with pytest.raises(ThreadTerminated):  # #GP, and the bare kernel ends the thread
            rig.vp.out(BASE + REG_ADDR_LO, 4, gpa)
    finally:
        rig.vp.set_cpl(0)
    assert rig.device.register(REG_ADDR_LO) == 0


def test_module_constants_are_consistent() -> None:
    assert dma.PORT_COUNT == 0x20 and dma.MAX_TRANSFER == 1 << 20
    assert set(dma.STATUS_NAMES) == {STATUS_IDLE, STATUS_DONE, STATUS_BLOCKED, STATUS_ERROR}
