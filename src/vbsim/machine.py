"""A machine: guest RAM, the I/O bus, virtual processors and (with VBS) the hypervisor.

With ``hypervisor=False`` the VPs run on bare metal: no SLAT, no VTLs, ``vmcall`` is #UD — what
NT sees when VBS is off.
"""

from __future__ import annotations

import datetime as dt

from vbsim.hv.hypervisor import Hypervisor
from vbsim.hv.iommu_faults import platform_iommu
from vbsim.hw.bus import Bus
from vbsim.hw.entropy import Entropy
from vbsim.hw.ram import DEFAULT_RAM_SIZE, GuestRam
from vbsim.hw.rtc import INDEX_PORT, CmosRtc
from vbsim.hw.slat import Slat
from vbsim.hw.vp import VirtualProcessor
from vbsim.trace import Trace


class Machine:
    def __init__(
        self,
        ram_size: int = DEFAULT_RAM_SIZE,
        vps: int = 1,
        hypervisor: bool = True,
        trace: Trace | None = None,
        kernel_dma_protection: bool = False,
        entropy_seed: int | None = None,
        rtc_time: dt.datetime | None = None,
    ) -> None:
        if vps < 1 or vps > 64:
            raise ValueError(f"a machine has 1 to 64 virtual processors, not {vps}")
        self.trace = trace if trace is not None else Trace()
        self.ram = GuestRam(ram_size)
        self.bus = Bus()
        #: The CMOS real-time clock at ports 0x70/0x71, set at power-on to ``rtc_time`` (the
        #: platform's wall clock: the host's, unless a test or a campaign fixes it).
        self.rtc = CmosRtc(rtc_time if rtc_time is not None else dt.datetime.now(dt.UTC))
        self.bus.claim_ports(INDEX_PORT, 2, self.rtc, "cmos-rtc")
        self.slat: Slat | None = Slat(self.ram.pages) if hypervisor else None
        self.vps = [
            VirtualProcessor(i, self.ram, self.slat, self.trace, self.bus) for i in range(vps)
        ]
        #: One random-number generator for the package, shared by every VP (RDRAND) and read
        #: by the boot loader (boot entropy); seeded from configuration when it names a seed.
        self.entropy = Entropy(entropy_seed)
        for vp in self.vps:
            vp.interrupt_fabric = self._deliver_ipi
            vp.entropy = self.entropy
        self.hv: Hypervisor | None = None
        if self.slat is not None:
            self.hv = Hypervisor(self.ram, self.slat, self.trace)
            for vp in self.vps:
                self.hv.attach(vp)
        # Device DMA goes through the IOMMU, then VTL0's SLAT when VBS runs (vsm-spec §3.5).
        self.iommu = platform_iommu(
            self.ram, self.slat, self.trace, self.hv, kernel_dma_protection=kernel_dma_protection
        )

    def _deliver_ipi(self, source: int, vector: int, shorthand: int, destination: int) -> None:
        """The APIC bus: an ICR write's fixed interrupt reaches its targets (shorthand 00: the
        destination ID, 01 self, 10 all including self, 11 all excluding self; SDM §10.6.1).
        A processor that has not started (no VTL0 state yet) does not take it."""
        for vp in self.vps:
            wanted = (
                vp.index == destination
                if shorthand == 0
                else vp.index == source
                if shorthand == 1
                else shorthand == 2 or vp.index != source
            )
            if wanted and vp.started and vp.banks[0] is not None:
                vp.deliver_interrupt(vector)

    @property
    def bsp(self) -> VirtualProcessor:
        return self.vps[0]

    def close(self) -> None:
        """Stop the machine: unwind suspended VTL contexts, drop the loaded kernel, unmap RAM."""
        if self.hv is not None:
            self.hv.close()
        self.ram.images.clear()
        self.ram.close()
