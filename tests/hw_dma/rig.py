"""A test rig: a bare VBS machine (VTL0 kernel + VTL1 monitor), its IOMMU and a DMA device."""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.guest.bare import MON_PROTECT, BareKernel, Monitor, boot_bare, monitor_call
from vbsim.hv import defs
from vbsim.hv.defs import HvMsr
from vbsim.hv.iommu_faults import platform_iommu
from vbsim.hw.dma import DEFAULT_BASE, DmaDevice
from vbsim.hw.iommu import Iommu
from vbsim.hw.slat import W
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.machine import Machine

RAM_SIZE = 64 << 20
BASE = DEFAULT_BASE
SINT1_VECTOR = 0x31


@dataclass
class Rig:
    machine: Machine
    kernel: BareKernel
    monitor: Monitor
    iommu: Iommu
    device: DmaDevice

    @property
    def vp(self) -> VirtualProcessor:
        return self.machine.bsp

    def page(self) -> tuple[int, int]:
        """A fresh VTL0 data page: (VA, GPA)."""
        return self.kernel.space.alloc_data()

    def protect(self, gpa: int, flags: int) -> None:
        """VTL1 (the monitor) sets VTL0's SLAT rights on the page of ``gpa``."""
        assert monitor_call(self.vp, MON_PROTECT, gpa, flags) == 0
        assert self.vp.vtl == 0

    def sim_slot(self, sint: int) -> int:
        return self.monitor.sim_gpa + sint * defs.HV_MESSAGE_SIZE

    def message(self, sint: int) -> tuple[int, int, bytes]:
        """(message type, flags, payload) in VTL1's SIM slot ``sint`` (host-side look)."""
        raw = self.machine.ram.read(self.sim_slot(sint), defs.HV_MESSAGE_SIZE)
        mtype, size, flags, _sender, payload = defs.HV_MESSAGE.unpack(raw)
        return mtype, flags, payload[:size]

    def clear_slot(self, sint: int) -> None:
        """What VTL1 does once it has consumed a message: type := HvMessageTypeNone."""
        self.machine.ram.write(self.sim_slot(sint), bytes(4))

    def vtl1_wrmsr(self, msr: int, value: int) -> None:
        """Run one ``wrmsr`` in VTL1 on the BSP (stands in for Secure Kernel SynIC setup, which
        the bare monitor does not do for SINT1)."""
        vp = self.vp
        vp.switch_vtl(1)
        try:
            vp.wrmsr(msr, value)
        finally:
            vp.switch_vtl(0)

    def enable_sint1(self) -> None:
        self.vtl1_wrmsr(HvMsr.SINT1, SINT1_VECTOR)

    def vtl0_unwritable(self) -> list[int]:
        slat = self.machine.slat
        assert slat is not None
        return [gpn for gpn in range(slat.pages) if not slat.rights(0, gpn) & W]

    def snapshot(self, gpns: list[int]) -> dict[int, bytes]:
        ram = self.machine.ram
        return {gpn: ram.read(gpn << PAGE_SHIFT, PAGE_SIZE) for gpn in gpns}


def make_rig(
    *,
    kernel_dma_protection: bool = False,
    block_unassigned: bool = False,
    external: bool = False,
    sint1: bool = True,
) -> Rig:
    machine = Machine(ram_size=RAM_SIZE)
    machine.trace.record()
    kernel, monitor, failures = boot_bare(machine)
    assert failures == []
    iommu = platform_iommu(
        machine.ram,
        machine.slat,
        machine.trace,
        machine.hv,
        kernel_dma_protection=kernel_dma_protection,
        block_unassigned=block_unassigned,
    )
    device = DmaDevice("disk0", iommu, external=external)
    device.claim(machine.bus, BASE)
    rig = Rig(machine, kernel, monitor, iommu, device)
    if sint1:
        rig.enable_sint1()
    return rig
