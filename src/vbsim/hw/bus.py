"""The I/O fabric: port I/O and MMIO regions claimed by device models.

A guest access to a GPA outside RAM, or to an I/O port, lands here after paging and SLAT have
allowed it.  Unclaimed addresses behave as on a PC: reads float high (all ones) and writes are
dropped; both are reported in the trace with mechanism ``bus.unclaimed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class MmioDevice(Protocol):
    def mmio_read(self, offset: int, length: int) -> bytes: ...
    def mmio_write(self, offset: int, data: bytes) -> None: ...


class PortDevice(Protocol):
    def port_read(self, port: int, size: int) -> int: ...
    def port_write(self, port: int, size: int, value: int) -> None: ...


@dataclass(slots=True)
class MmioRegion:
    base: int
    size: int
    device: MmioDevice
    name: str


@dataclass(slots=True)
class Bus:
    mmio: list[MmioRegion] = field(default_factory=list)
    ports: dict[int, tuple[PortDevice, str]] = field(default_factory=dict)

    def claim_mmio(self, base: int, size: int, device: MmioDevice, name: str) -> None:
        for region in self.mmio:
            if base < region.base + region.size and region.base < base + size:
                raise ValueError(f"MMIO range of {name} overlaps {region.name}")
        self.mmio.append(MmioRegion(base, size, device, name))

    def claim_ports(self, first: int, count: int, device: PortDevice, name: str) -> None:
        for port in range(first, first + count):
            if port in self.ports:
                raise ValueError(f"port 0x{port:x} of {name} already claimed")
            self.ports[port] = (device, name)

    def find_mmio(self, gpa: int) -> MmioRegion | None:
        for region in self.mmio:
            if region.base <= gpa < region.base + region.size:
                return region
        return None

    def mmio_read(self, gpa: int, length: int) -> bytes | None:
        region = self.find_mmio(gpa)
        if region is None:
            return None
        return region.device.mmio_read(gpa - region.base, length)

    def mmio_write(self, gpa: int, data: bytes) -> bool:
        region = self.find_mmio(gpa)
        if region is None:
            return False
        region.device.mmio_write(gpa - region.base, data)
        return True

    def port_read(self, port: int, size: int) -> int | None:
        entry = self.ports.get(port)
        return None if entry is None else entry[0].port_read(port, size)

    def port_write(self, port: int, size: int, value: int) -> bool:
        entry = self.ports.get(port)
        if entry is None:
            return False
        entry[0].port_write(port, size, value)
        return True
