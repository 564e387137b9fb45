"""The VTL0 driver of the platform's DMA engine: guest code, only ``out`` and ``in`` at CPL0.

The register layout is the device's programming interface (its datasheet), described once in
:mod:`vbsim.hw.dma`; a driver knows those offsets and nothing else of the device.  The platform's
own helper of the same name there is host-side test equipment typed with the processor.
"""

from __future__ import annotations

from vbsim.hw.cpu import Cpu
from vbsim.hw.dma import (
    CMD_GO,
    REG_ADDR_HI,
    REG_ADDR_LO,
    REG_COMMAND,
    REG_DIRECTION,
    REG_LENGTH,
    REG_STATUS,
)


def driver_transfer(cpu: Cpu, base: int, iova: int, length: int, direction: int) -> int:
    """Start a transfer: program the registers with ``out``, write GO, read STATUS with ``in``."""
    cpu.out(base + REG_ADDR_LO, 4, iova & 0xFFFF_FFFF)
    cpu.out(base + REG_ADDR_HI, 4, (iova >> 32) & 0xFFFF_FFFF)
    cpu.out(base + REG_LENGTH, 4, length & 0xFFFF_FFFF)
    cpu.out(base + REG_DIRECTION, 4, direction & 0xFFFF_FFFF)
    cpu.out(base + REG_COMMAND, 4, CMD_GO)
    return cpu.inp(base + REG_STATUS, 4)
