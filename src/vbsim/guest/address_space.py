"""A kernel address space as a boot loader lays it out, and the kernel's view of it afterwards.

Layout (one PML4 per kernel; the numbers are the model's, chosen to resemble Windows x64):
- ``DIRECT_MAP``: all guest RAM mapped with 1 GiB pages, supervisor, RW, NX, global — the kernel's
  way to reach any physical page (Windows has a comparable region; Linux calls it the direct map);
- ``CODE_BASE``: code pages holding routine thunks, supervisor, read-only, executable;
- ``DATA_BASE``: the kernel's own data pages (IDT, parameter pages, logs ...), RW, NX;
- ``USER_BASE``: where user address spaces start (user processes have their own PML4s that share
  the kernel half).

The loader writes page tables straight into RAM (no protection exists yet); a running kernel reads
and writes its tables through its own VP and the direct map, so every edit it makes passes paging
and SLAT like any other store.

This module is the guest-safe half: the layout's numbers, the IDT gate encoding, the symbols-only
:class:`KernelMap` and :func:`runtime_phys` over a ``Cpu``; it imports no platform object, so
guest code may import anything it defines.  The loader's half, which holds guest RAM and the host
frame allocator, is :class:`vbsim.boot.kernel_space.KernelSpace` (host side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hw.pagetable import PhysAccess

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu

DIRECT_MAP = 0xFFFF_8000_0000_0000
CODE_BASE = 0xFFFF_F800_0000_0000
DATA_BASE = 0xFFFF_F880_0000_0000
USER_BASE = 0x0000_0000_0040_0000
USER_STACK_TOP = 0x0000_7FFF_FFFF_0000
GIB = 1 << 30

#: Long-mode CS attributes: type 0xB (execute/read, accessed), S=1, P=1, L=1 (vsm-spec §1.3 bits).
CS_KERNEL_ATTRIBUTES = 0xB | (1 << 4) | (1 << 7) | (1 << 13)
CS_USER_ATTRIBUTES = CS_KERNEL_ATTRIBUTES | (3 << 5)
IDT_ENTRIES = 256


def interrupt_gate(handler: int) -> bytes:
    """A 64-bit interrupt gate (SDM Vol. 3A figure 6-8): type 0xE, DPL 0, present."""
    return (
        (handler & 0xFFFF).to_bytes(2, "little")
        + (0x10).to_bytes(2, "little")  # kernel CS selector
        + bytes([0, 0x8E])
        + ((handler >> 16) & 0xFFFF).to_bytes(2, "little")
        + ((handler >> 32) & 0xFFFF_FFFF).to_bytes(4, "little")
        + bytes(4)
    )


@dataclass
class KernelMap:
    """What a running kernel keeps of the address space its loader built: symbols only (the PML4
    root, the VAs of its code routines, its data region, the GPAs of its code pages).  No RAM,
    no allocator: a kernel reaches its memory through its own processor and takes frames from
    its own allocator (NT: its PFN database; the SK: its pool).

    The loader (:class:`~vbsim.boot.kernel_space.KernelSpace`, host side) shares ``routines``
    and ``code_pages`` with the map, so a routine the loader installs later (a tool planting code
    after boot) is seen."""

    owner: str
    root: int
    data_base: int = DATA_BASE
    routines: dict[str, int] = field(default_factory=dict)
    code_pages: list[int] = field(default_factory=list)

    @staticmethod
    def phys_va(gpa: int) -> int:
        """The kernel's direct-map VA of ``gpa`` (a constant of the layout)."""
        return DIRECT_MAP + gpa


def runtime_phys(cpu: Cpu, alloc_frame: Callable[[], int]) -> PhysAccess:
    """Physical access as a running kernel has it: loads and stores through its own processor
    and the direct map, new table frames from the kernel's own allocator (which returns a
    zeroed frame's PFN)."""
    return PhysAccess(
        lambda gpa: cpu.read_u64(DIRECT_MAP + gpa),
        lambda gpa, value: cpu.write_u64(DIRECT_MAP + gpa, value),
        alloc_frame,
    )
