"""The IOMMU: per-device DMA-remapping domains, and a device's view of memory.

What a bus-master device reaches is ``IommuLayer(its domain) over SLAT(VTL0) over RAM``
(DESIGN.md "Layers"):

1. **IOMMU** — a device whose requester ID the OS has attached to a *domain* sees the domain's
   IOVA → GPA page mappings, each with DMA rights R (device reads memory) and W (device writes
   memory); an IOVA with no mapping or without the needed right is refused (mechanism
   ``iommu``).  A device with no domain is in *identity* (passthrough) mode, IOVA = GPA — unless
   the IOMMU blocks it: every unassigned device when ``block_unassigned`` is set, and devices
   flagged ``external`` (hot-plug PCIe behind Thunderbolt/USB4) when ``kernel_dma_protection``
   is on (vbs-internals §5.5 "Kernel DMA Protection": external devices get no DMA until the OS
   assigns them a remapping domain).
2. **SLAT(VTL0)** — "Devices effectively have the same privilege level as VTL0 … Any DMA
   accesses have the same privileges as VTL0" (TLFS "DMA and Devices", vsm-spec §3.5).  Every
   GPA a transfer touches must carry VTL0's effective SLAT right (``Slat.rights(0, gpn)``,
   R=1 for a device read, W=2 for a device write), so a device never reaches memory that VTL1
   withheld from VTL0 (refused with mechanism ``slat``).  With VBS off there is no hypervisor
   and no SLAT (``slat=None``): only the IOMMU checks.
3. **RAM** — a GPA outside guest RAM is refused with ``ram.unbacked`` (the model's IOMMU maps
   only RAM for devices; peer-to-peer MMIO is not modelled).

Transfers are **all-or-nothing**: every 4 KiB page of a transfer is checked first, and a refused
transfer moves no byte (real IOMMUs fault per TLP and may let earlier TLPs through; the model's
engine checks the whole descriptor first, so a blocked DMA provably never touches memory).

Every refused *transfer* (not a mere ``translate`` probe) is recorded in the IOMMU's fault log
and handed to its fault listeners; the hypervisor listens and tells VTL1
(:mod:`vbsim.hv.iommu_faults`).  The ``dma`` trace event of each transfer is emitted here, where
the decision is made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import Slat
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, Access
from vbsim.trace import Trace

#: DMA rights of a domain mapping (same bit values as the SLAT's R and W, vsm-spec §3.1).
DMA_R, DMA_W = 1, 2
DMA_RW = DMA_R | DMA_W
#: IOVAs are 64-bit bus addresses.
IOVA_LIMIT = 1 << 64
#: How many faults the IOMMU keeps in its log (a ring, like a hardware fault-recording queue).
FAULT_LOG_SIZE = 256

_NEED = {Access.READ: DMA_R, Access.WRITE: DMA_W}


class Mode(Enum):
    """How the IOMMU treats a device's requests."""

    DOMAIN = "domain"  # translated by the device's domain
    IDENTITY = "identity"  # passthrough: IOVA = GPA
    BLOCKED = "blocked"  # every request refused


class Reason(Enum):
    """Why a page of a transfer was refused (the trace's ``reason`` detail)."""

    UNMAPPED = "unmapped"  # no domain mapping for the IOVA page
    RIGHTS = "rights"  # the mapping lacks the needed DMA right
    KERNEL_DMA_PROTECTION = "kernel-dma-protection"  # external device with no domain yet
    UNASSIGNED = "unassigned"  # no domain and the IOMMU blocks unassigned devices
    SLAT = "slat"  # VTL0's SLAT rights forbid the access
    UNBACKED = "unbacked"  # the GPA is not guest RAM


def direction(access: Access) -> str:
    """A device *writing* memory is a transfer to memory; a device reading it, from memory."""
    return "to-memory" if access is Access.WRITE else "from-memory"


class IommuDomain:
    """A DMA-remapping domain: IOVA page → (GPA page, DMA rights)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.mappings: dict[int, tuple[int, int]] = {}

    def map(self, iova: int, gpa: int, length: int = PAGE_SIZE, rights: int = DMA_RW) -> None:
        """Map ``length`` bytes (whole pages) at ``iova`` to ``gpa`` with ``rights``.

        Host-side configuration (the OS's DMA-remapping code): misaligned or negative arguments
        are a bug in the caller and raise ``ValueError``.
        """
        if (iova | gpa | length) & PAGE_MASK or min(iova, gpa, length) < 0:
            raise ValueError("IOMMU mappings are whole 4 KiB pages at non-negative addresses")
        if iova + length > IOVA_LIMIT:
            raise ValueError("IOMMU mapping beyond the 64-bit IOVA space")
        for i in range(length >> PAGE_SHIFT):
            self.mappings[(iova >> PAGE_SHIFT) + i] = ((gpa >> PAGE_SHIFT) + i, rights & DMA_RW)

    def unmap(self, iova: int, length: int = PAGE_SIZE) -> None:
        first = iova >> PAGE_SHIFT
        last = (iova + max(length, 1) - 1) >> PAGE_SHIFT
        for page in range(first, last + 1):
            self.mappings.pop(page, None)

    def lookup(self, iova: int) -> tuple[int, int] | None:
        """(GPA of the byte at ``iova``, rights), or None when unmapped."""
        entry = self.mappings.get(iova >> PAGE_SHIFT)
        if entry is None:
            return None
        return (entry[0] << PAGE_SHIFT) | (iova & PAGE_MASK), entry[1]


@dataclass(slots=True)
class IommuDevice:
    """The IOMMU's record of one requester (a PCIe function)."""

    device_id: int
    name: str
    external: bool = False
    domain: IommuDomain | None = None


@dataclass(slots=True)
class DmaCheck:
    """The all-pages decision on one transfer.

    ``verdict``: the first refusing page's verdict, or the last page's allowing verdict.
    ``segments``: the (GPA, length) pieces the transfer moves, one per page, in order (filled
    only up to the refusal).
    """

    device: IommuDevice
    iova: int
    length: int
    access: Access
    mode: Mode
    verdict: Verdict
    segments: list[tuple[int, int]] = field(default_factory=list)
    reason: Reason | None = None
    #: IOVA of the refused page (the first byte of the transfer in that page).
    fault_iova: int | None = None
    #: GPA of the refused page, when the IOMMU got as far as a GPA.
    fault_gpa: int | None = None

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def gpa(self) -> int | None:
        """The GPA to report: the refused one, else the first byte's."""
        if not self.ok:
            return self.fault_gpa
        return self.segments[0][0] if self.segments else None


@dataclass(slots=True, frozen=True)
class IommuFault:
    """One refused transfer, as the IOMMU's fault-recording registers would hold it."""

    device_id: int
    device: str
    access: Access
    iova: int
    gpa: int | None
    mechanism: str
    reason: Reason


FaultListener = Callable[[IommuFault], None]


class Iommu:
    """The platform IOMMU (programmed by the hypervisor when VBS is on, vbs-internals §5.5)."""

    def __init__(
        self,
        ram: GuestRam,
        slat: Slat | None,
        trace: Trace | None = None,
        *,
        kernel_dma_protection: bool = False,
        block_unassigned: bool = False,
    ) -> None:
        self.ram = ram
        #: VTL0's SLAT (None with VBS off: no hypervisor, DMA is checked by the IOMMU alone).
        self.slat = slat
        self.trace = trace if trace is not None else Trace()
        #: Policy "Kernel DMA Protection": external devices are blocked until given a domain.
        self.kernel_dma_protection = kernel_dma_protection
        #: Block every device that has no domain (a strict DMA-remapping configuration).
        self.block_unassigned = block_unassigned
        self.devices: dict[int, IommuDevice] = {}
        self.faults: deque[IommuFault] = deque(maxlen=FAULT_LOG_SIZE)
        self.listeners: list[FaultListener] = []
        self._next_id = 1

    # -- devices and domains --------------------------------------------------------------------
    def attach(self, name: str, external: bool = False) -> IommuDevice:
        """A new requester behind this IOMMU (a device appearing on the bus)."""
        device = IommuDevice(self._next_id, name, external)
        self._next_id += 1
        self.devices[device.device_id] = device
        return device

    def assign(self, device: IommuDevice, domain: IommuDomain | None) -> None:
        """Put ``device`` in ``domain`` (None: back to no domain)."""
        device.domain = domain

    def mode(self, device: IommuDevice) -> tuple[Mode, Reason | None]:
        if device.domain is not None:
            return Mode.DOMAIN, None
        if self.block_unassigned:
            return Mode.BLOCKED, Reason.UNASSIGNED
        if device.external and self.kernel_dma_protection:
            return Mode.BLOCKED, Reason.KERNEL_DMA_PROTECTION
        return Mode.IDENTITY, None

    def layer(self, device: IommuDevice) -> IommuLayer:
        """The device's view of memory, as the IOMMU is configured now."""
        return IommuLayer(self, device)

    # -- faults ---------------------------------------------------------------------------------
    def listen(self, listener: FaultListener) -> None:
        self.listeners.append(listener)

    def record_fault(self, check: DmaCheck) -> IommuFault:
        """Log a refused transfer and tell the listeners (the hypervisor, when VBS is on)."""
        reason = check.reason if check.reason is not None else Reason.UNMAPPED
        fault = IommuFault(
            check.device.device_id,
            check.device.name,
            check.access,
            check.fault_iova if check.fault_iova is not None else check.iova,
            check.fault_gpa,
            check.verdict.mechanism,
            reason,
        )
        self.faults.append(fault)
        for listener in self.listeners:
            listener(fault)
        return fault


class IommuLayer:
    """IOMMU(domain) over SLAT(VTL0) over RAM: one device's view of memory.

    ``translate`` is a probe (no side effect); ``read``/``write`` and their ``*_checked`` forms
    are DMA transfers: all pages are checked first, bytes move only if all are allowed, the
    transfer is traced (kind ``dma``) and a refusal is reported as an IOMMU fault.
    """

    __slots__ = ("device", "iommu")

    def __init__(self, iommu: Iommu, device: IommuDevice) -> None:
        self.iommu = iommu
        self.device = device

    # -- the layer interface ------------------------------------------------------------------
    def translate(self, iova: int, access: Access = Access.READ) -> Verdict:
        mode, why = self.iommu.mode(self.device)
        return self._page(iova, access, mode, why)[0]

    def read(self, iova: int, length: int) -> bytes | Verdict:
        """The bytes a device reads at ``iova`` (memory → device), or the refusing verdict."""
        check, data = self.read_checked(iova, length)
        return data if check.ok else check.verdict

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> Verdict:
        """A device write of ``data`` at ``iova`` (device → memory); the verdict says if it
        happened (all of it) or what refused it (then nothing was written)."""
        return self.write_checked(iova, data).verdict

    # -- transfers ------------------------------------------------------------------------------
    def check(self, iova: int, length: int, access: Access) -> DmaCheck:
        """Decide a whole transfer (no side effect).  A zero-length transfer is allowed and
        moves nothing; a negative length or a transfer that leaves the 64-bit IOVA space is
        malformed: refused with mechanism ``dma`` and no reason (it is no IOMMU fault)."""
        mode, why = self.iommu.mode(self.device)
        result = DmaCheck(
            self.device, iova, length, access, mode, Verdict(True, iova, "iommu", access)
        )
        if length < 0 or iova < 0 or iova + length > IOVA_LIMIT:
            result.verdict = Verdict(False, iova, "dma", access)
            return result
        address, end = iova, iova + length
        while address < end:
            chunk = min(end - address, PAGE_SIZE - (address & PAGE_MASK))
            verdict, reason = self._page(address, access, mode, why)
            result.verdict = verdict
            if not verdict.ok:
                result.reason = reason
                result.fault_iova = address
                result.fault_gpa = verdict.gpa
                result.segments.clear()
                return result
            result.segments.append((verdict.address, chunk))
            address += chunk
        return result

    def read_checked(self, iova: int, length: int) -> tuple[DmaCheck, bytes]:
        check = self.check(iova, length, Access.READ)
        data = b""
        if check.ok:
            mm = self.iommu.ram.mm
            data = b"".join(mm[gpa : gpa + n] for gpa, n in check.segments)
        self._conclude(check)
        return check, data

    def write_checked(self, iova: int, data: bytes | bytearray | memoryview) -> DmaCheck:
        check = self.check(iova, len(data), Access.WRITE)
        if check.ok:
            mm = self.iommu.ram.mm
            view = memoryview(bytes(data))
            offset = 0
            for gpa, n in check.segments:
                mm[gpa : gpa + n] = view[offset : offset + n]
                offset += n
        self._conclude(check)
        return check

    # -- internals ------------------------------------------------------------------------------
    def _page(
        self, iova: int, access: Access, mode: Mode, why: Reason | None
    ) -> tuple[Verdict, Reason | None]:
        """Translate the byte at ``iova``: IOMMU, then SLAT(VTL0), then RAM."""
        if not 0 <= iova < IOVA_LIMIT:
            return Verdict(False, iova, "iommu", access), Reason.UNMAPPED
        mechanism = "ram"
        if mode is Mode.BLOCKED:
            return Verdict(False, iova, "iommu", access), why
        if mode is Mode.DOMAIN:
            domain = self.device.domain
            entry = domain.lookup(iova) if domain is not None else None
            if entry is None:
                return Verdict(False, iova, "iommu", access), Reason.UNMAPPED
            gpa, rights = entry
            if not rights & _NEED.get(access, DMA_R):
                return Verdict(False, iova, "iommu", access, gpa=gpa), Reason.RIGHTS
            mechanism = "iommu"
        else:
            gpa = iova
        if not 0 <= gpa < self.iommu.ram.size:
            return Verdict(False, gpa, "ram.unbacked", access, gpa=gpa), Reason.UNBACKED
        slat = self.iommu.slat
        if slat is not None:
            # DMA has exactly VTL0's privileges (TLFS "DMA and Devices", vsm-spec §3.5).
            if not slat.rights(0, gpa >> PAGE_SHIFT) & _NEED.get(access, DMA_R):
                return Verdict(False, gpa, "slat", access, gpa=gpa), Reason.SLAT
            mechanism = "slat"
        return Verdict(True, gpa, mechanism, access), None

    def _conclude(self, check: DmaCheck) -> None:
        iommu = self.iommu
        device = self.device
        if iommu.trace.on:
            iommu.trace.emit(
                "dma",
                check.verdict.mechanism,
                _outcome(check),
                actor=device.name,
                device=device.name,
                device_id=device.device_id,
                iova=check.iova,
                gpa=check.gpa,
                length=check.length,
                direction=direction(check.access),
                mode=check.mode.value,
                reason=check.reason.value if check.reason is not None else None,
                fault_iova=check.fault_iova,
            )
        if not check.ok and check.reason is not None:
            iommu.record_fault(check)


def _outcome(check: DmaCheck) -> str:
    if check.ok:
        return "allowed"
    return "blocked" if check.reason is not None else "error"
