"""NT processes: an address space of their own (a PML4 sharing the kernel half), a token, regions.

The user half of each PML4 is private; the kernel half (PML4 entries 256-511) is copied from the
kernel's PML4 so every process sees the same kernel, as on Windows x64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SIZE


class Protection(Enum):
    NONE = "none"
    PPL = "ppl"  # protected process light (RunAsPPL for lsass)


@dataclass
class Region:
    """A VAD: a committed range with its protection."""

    base: int
    size: int
    writable: bool
    executable: bool
    frames: list[int] = field(default_factory=list)


@dataclass
class Token:
    user: str
    admin: bool = False
    #: SeDebugPrivilege lets an administrator open any (unprotected) process.
    debug_privilege: bool = False
    #: SeLoadDriverPrivilege.
    load_driver: bool = False


@dataclass
class Process:
    pid: int
    name: str
    tables: PageTables
    token: Token
    protection: Protection = Protection.NONE
    regions: list[Region] = field(default_factory=list)
    #: Secure process (trustlet): its VTL1 counterpart's secure handle (EPROCESS.Pcb.SecurePid).
    secure_pid: int = 0
    trustlet_id: int | None = None
    terminated: bool = False
    exit_status: int | None = None
    next_va: int = 0x0000_0000_1000_0000

    def region_at(self, va: int) -> Region | None:
        for region in self.regions:
            if region.base <= va < region.base + region.size:
                return region
        return None

    def reserve(self, size: int) -> int:
        base = self.next_va
        self.next_va += -(-size // PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE  # a guard page between
        return base


def new_address_space(phys: PhysAccess, kernel_root: int) -> PageTables:
    """A PML4 whose kernel half is the kernel's."""
    tables = PageTables(phys)
    for index in range(256, 512):
        entry = phys.read_u64(kernel_root + index * 8)
        if entry:
            phys.write_u64(tables.root + index * 8, entry)
    return tables
