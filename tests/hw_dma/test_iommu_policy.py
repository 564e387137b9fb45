"""IOMMU domains, Kernel DMA Protection, VBS off, and the layer interface."""

from __future__ import annotations

import pytest

from vbsim.hv.iommu_faults import FLAG_GPA_VALID, FLAG_IOMMU_DENIED, decode, platform_iommu
from vbsim.hw.dma import (
    DIR_FROM_MEMORY,
    DIR_TO_MEMORY,
    STATUS_BLOCKED,
    STATUS_DONE,
    DmaDevice,
    driver_transfer,
)
from vbsim.hw.iommu import DMA_R, DMA_RW, IommuDomain, Mode, Reason
from vbsim.hw.slat import R
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import PAGE_SIZE, Access
from vbsim.machine import Machine

from .rig import BASE, RAM_SIZE, Rig, make_rig

IOVA = 0x8000_0000_0000  # a device-visible window far from any GPA


def last_dma(rig: Rig) -> tuple[str, str, object]:
    event = rig.machine.trace.find(kind="dma")[-1]
    return event.mechanism, event.outcome, event.detail.get("reason")


# -- domains ----------------------------------------------------------------------------------
def test_domain_translates_iova_to_gpa(rig: Rig) -> None:
    va, gpa = rig.page()
    domain = IommuDomain("disk0-dom")
    domain.map(IOVA, gpa, PAGE_SIZE, DMA_RW)
    rig.iommu.assign(rig.device.requester, domain)
    rig.device.load(b"remapped")
    assert driver_transfer(rig.vp, BASE, IOVA + 0x10, 8, DIR_TO_MEMORY) == STATUS_DONE
    assert rig.vp.read(va + 0x10, 8) == b"remapped"
    event = rig.machine.trace.find(kind="dma")[-1]
    assert event.detail["iova"] == IOVA + 0x10 and event.detail["gpa"] == gpa + 0x10
    assert event.detail["mode"] == "domain"


def test_domain_restricts_even_where_slat_allows(rig: Rig) -> None:
    va_a, gpa_a = rig.page()
    va_b, gpa_b = rig.page()
    _, gpa_c = rig.page()
    domain = IommuDomain()
    domain.map(IOVA, gpa_a, PAGE_SIZE, DMA_RW)
    domain.map(IOVA + PAGE_SIZE, gpa_b, PAGE_SIZE, DMA_R)
    rig.iommu.assign(rig.device.requester, domain)
    rig.device.load(b"\x77" * 32)
    # VTL0 may write page C (SLAT RW), but the device's domain does not map it.
    assert driver_transfer(rig.vp, BASE, gpa_c, 32, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert last_dma(rig) == ("iommu", "blocked", "unmapped")
    msg = decode(rig.message(1)[2])
    assert msg.flags == FLAG_IOMMU_DENIED and msg.gpa is None and msg.iova == gpa_c
    rig.clear_slot(1)
    # Page B is mapped read-only for the device: writes refused, reads allowed.
    assert driver_transfer(rig.vp, BASE, IOVA + PAGE_SIZE, 32, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert last_dma(rig) == ("iommu", "blocked", "rights")
    msg = decode(rig.message(1)[2])
    assert msg.flags == FLAG_IOMMU_DENIED | FLAG_GPA_VALID and msg.gpa == gpa_b
    assert rig.machine.ram.read(gpa_b, 32) == bytes(32)
    rig.vp.write(va_b, b"readable")
    assert driver_transfer(rig.vp, BASE, IOVA + PAGE_SIZE, 8, DIR_FROM_MEMORY) == STATUS_DONE
    assert rig.device.contents(8) == b"readable"
    # A transfer from A (allowed) into B (read-only) is refused whole.
    status = driver_transfer(rig.vp, BASE, IOVA + PAGE_SIZE - 16, 32, DIR_TO_MEMORY)
    assert status == STATUS_BLOCKED
    assert rig.vp.read(va_a + PAGE_SIZE - 16, 16) == bytes(16)


def test_domain_cannot_grant_what_slat_withholds(rig: Rig) -> None:
    _, gpa = rig.page()
    rig.protect(gpa, R)
    domain = IommuDomain()
    domain.map(IOVA, gpa, PAGE_SIZE, DMA_RW)  # the OS maps it writable for the device ...
    rig.iommu.assign(rig.device.requester, domain)
    rig.device.load(b"\x01" * 16)
    assert driver_transfer(rig.vp, BASE, IOVA, 16, DIR_TO_MEMORY) == STATUS_BLOCKED
    assert last_dma(rig) == ("slat", "blocked", "slat")  # ... but DMA has VTL0's rights only
    assert decode(rig.message(1)[2]).gpa == gpa


def test_domain_spanning_non_contiguous_gpas(rig: Rig) -> None:
    va_a, gpa_a = rig.page()
    _, _ = rig.page()
    va_b, gpa_b = rig.page()
    domain = IommuDomain()
    domain.map(IOVA, gpa_a)
    domain.map(IOVA + PAGE_SIZE, gpa_b)
    rig.iommu.assign(rig.device.requester, domain)
    rig.device.load(b"A" * 16 + b"B" * 16)
    assert driver_transfer(rig.vp, BASE, IOVA + PAGE_SIZE - 16, 32, DIR_TO_MEMORY) == STATUS_DONE
    assert rig.vp.read(va_a + PAGE_SIZE - 16, 16) == b"A" * 16
    assert rig.vp.read(va_b, 16) == b"B" * 16


def test_unmap_and_unassign(rig: Rig) -> None:
    va, gpa = rig.page()
    domain = IommuDomain()
    domain.map(IOVA, gpa)
    rig.iommu.assign(rig.device.requester, domain)
    domain.unmap(IOVA)
    assert driver_transfer(rig.vp, BASE, IOVA, 8, DIR_FROM_MEMORY) == STATUS_BLOCKED
    rig.iommu.assign(rig.device.requester, None)  # back to identity
    rig.vp.write(va, b"identity")
    assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_FROM_MEMORY) == STATUS_DONE
    assert rig.device.contents(8) == b"identity"


@pytest.mark.parametrize(
    ("iova", "gpa", "length"), [(1, 0, 4096), (0, 1, 4096), (0, 0, 100), (-4096, 0, 4096)]
)
def test_domain_map_rejects_misuse(iova: int, gpa: int, length: int) -> None:
    with pytest.raises(ValueError):
        IommuDomain().map(iova, gpa, length)


# -- Kernel DMA Protection ------------------------------------------------------------------
def test_kernel_dma_protection_blocks_external_devices_until_assigned() -> None:
    rig = make_rig(kernel_dma_protection=True)
    try:
        va, gpa = rig.page()
        tb = DmaDevice("thunderbolt-nic", rig.iommu, external=True)
        tb.claim(rig.machine.bus, BASE + 0x100)
        tb.load(b"hot-plug")
        assert rig.iommu.mode(tb.requester) == (Mode.BLOCKED, Reason.KERNEL_DMA_PROTECTION)
        assert driver_transfer(rig.vp, BASE + 0x100, gpa, 8, DIR_TO_MEMORY) == STATUS_BLOCKED
        assert last_dma(rig) == ("iommu", "blocked", "kernel-dma-protection")
        assert rig.machine.ram.read(gpa, 8) == bytes(8)
        assert decode(rig.message(1)[2]).device_id == tb.device_id
        # The internal device is unaffected (identity mode).
        rig.device.load(b"internal")
        assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_TO_MEMORY) == STATUS_DONE
        # Once the OS gives the external device a domain, it may DMA inside it.
        domain = IommuDomain("tb-dom")
        domain.map(IOVA, gpa)
        rig.iommu.assign(tb.requester, domain)
        assert driver_transfer(rig.vp, BASE + 0x100, IOVA, 8, DIR_TO_MEMORY) == STATUS_DONE
        assert rig.vp.read(va, 8) == b"hot-plug"
    finally:
        rig.machine.close()


def test_without_kernel_dma_protection_external_devices_are_identity_mapped() -> None:
    rig = make_rig(kernel_dma_protection=False)
    try:
        _, gpa = rig.page()
        _, protected = rig.page()
        rig.protect(protected, 0)
        evil = DmaDevice.malicious(rig.iommu)
        assert evil.external and evil.attacker
        assert rig.iommu.mode(evil.requester) == (Mode.IDENTITY, None)
        assert evil.dma_write(gpa, b"pwned!") == STATUS_DONE
        assert rig.machine.ram.read(gpa, 6) == b"pwned!"
        # ... but never beyond VTL0's rights while VBS is on.
        assert evil.dma_write(protected, b"pwned!") == STATUS_BLOCKED
        assert evil.dma_read(protected, 16) is None
        assert evil.dma_read(rig.monitor.log_gpa, 16) is None
    finally:
        rig.machine.close()


def test_kernel_dma_protection_can_be_switched_at_run_time() -> None:
    rig = make_rig(kernel_dma_protection=False)
    try:
        _, gpa = rig.page()
        evil = DmaDevice.malicious(rig.iommu)
        assert evil.dma_read(gpa, 8) == bytes(8)
        rig.iommu.kernel_dma_protection = True
        assert evil.dma_read(gpa, 8) is None
    finally:
        rig.machine.close()


def test_block_unassigned_blocks_internal_devices_too() -> None:
    rig = make_rig(block_unassigned=True)
    try:
        _, gpa = rig.page()
        assert driver_transfer(rig.vp, BASE, gpa, 8, DIR_FROM_MEMORY) == STATUS_BLOCKED
        assert last_dma(rig) == ("iommu", "blocked", "unassigned")
    finally:
        rig.machine.close()


# -- VBS off ----------------------------------------------------------------------------------
def test_vbs_off_has_no_slat_check() -> None:
    machine = Machine(ram_size=RAM_SIZE, hypervisor=False)
    machine.trace.record()
    try:
        iommu = platform_iommu(machine.ram, machine.slat, machine.trace, machine.hv)
        assert iommu.slat is None
        evil = DmaDevice.malicious(iommu)
        # Any RAM page, even frame 0 (which no kernel would hand to a device).
        assert evil.dma_write(0x0, b"anything") == STATUS_DONE
        assert machine.ram.read(0, 8) == b"anything"
        assert evil.dma_read(RAM_SIZE - 8, 8) == bytes(8)
        event = machine.trace.find(kind="dma")[-1]
        assert event.mechanism == "ram" and event.detail["mode"] == "identity"
        # A driver on bare metal programs its device the same way.
        disk = DmaDevice("disk0", iommu)
        disk.claim(machine.bus, BASE)
        disk.load(b"bare-metal")
        assert machine.bsp.cpl == 0
        assert driver_transfer(machine.bsp, BASE, 0x5000, 10, DIR_TO_MEMORY) == STATUS_DONE
        assert machine.ram.read(0x5000, 10) == b"bare-metal"
        # The IOMMU alone still applies: Kernel DMA Protection blocks the external device.
        iommu.kernel_dma_protection = True
        assert evil.dma_write(0x0, b"again!!!") == STATUS_BLOCKED
        assert machine.ram.read(0, 8) == b"anything"
        assert iommu.faults[-1].reason is Reason.KERNEL_DMA_PROTECTION
        assert machine.trace.find(kind="iommu-fault") == []  # no hypervisor to report to
    finally:
        machine.close()


# -- the layer interface ------------------------------------------------------------------------
def test_layer_interface(rig: Rig) -> None:
    va, gpa = rig.page()
    _, locked = rig.page()
    rig.protect(locked, R)
    layer = rig.iommu.layer(rig.device.requester)
    verdict = layer.translate(gpa, Access.WRITE)
    assert verdict.ok and verdict.address == gpa and verdict.mechanism == "slat"
    refused = layer.translate(locked, Access.WRITE)
    assert not refused.ok and refused.mechanism == "slat"
    assert layer.translate(locked, Access.READ).ok
    assert layer.translate(RAM_SIZE, Access.READ).mechanism == "ram.unbacked"
    assert len(rig.iommu.faults) == 0  # translate is a probe
    written = layer.write(gpa, b"layer")
    assert isinstance(written, Verdict) and written.ok
    assert layer.read(gpa, 5) == b"layer"
    assert rig.vp.read(va, 5) == b"layer"
    result = layer.write(locked, b"x")
    assert not result.ok and result.mechanism == "slat"
    assert len(rig.iommu.faults) == 1
    assert layer.read(gpa, 0) == b""
    malformed = layer.read(2**64 - 1, 2)
    assert isinstance(malformed, Verdict) and malformed.mechanism == "dma"
    assert len(rig.iommu.faults) == 1  # a malformed request is no IOMMU fault
    domain = IommuDomain()
    rig.iommu.assign(rig.device.requester, domain)
    assert rig.iommu.layer(rig.device.requester).translate(gpa).mechanism == "iommu"
