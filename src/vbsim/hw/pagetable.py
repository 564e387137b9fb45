"""Building 4-level page tables in guest RAM, as a boot loader or kernel memory manager does.

The builder writes real entries (SDM Vol. 3A §4.5) into frames it takes from the RAM's frame
allocator.  Guest kernels use it through an *accessor* — the physical-memory access they really
have: the boot loader writes RAM directly before any SLAT exists, while a running kernel writes
through its own virtual processor (and so through paging and SLAT).  The walk it performs is the
same table-of-levels walk as :mod:`vbsim.hw.paging`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vbsim.hw.paging import LEVELS
from vbsim.hw.ram import GuestRam
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte

#: Intermediate entries are permissive; the leaf decides (what Windows and Linux both do).
TABLE_FLAGS = int(Pte.P | Pte.RW | Pte.US)
# Plain ints for the per-call probes: an IntFlag operand sends every ``&`` through enum.py.
_P, _RW, _US, _PS = int(Pte.P), int(Pte.RW), int(Pte.US), int(Pte.PS)
_SIZE_LEVEL = {12: 3, 21: 2, 30: 1}
#: Index shift of each level (PML4 .. PT), as plain ints.
_SHIFTS = tuple(level.shift for level in LEVELS)


class PhysAccess:
    """Read and write guest-physical u64s, and obtain zeroed frames."""

    def __init__(
        self,
        read_u64: Callable[[int], int],
        write_u64: Callable[[int, int], None],
        alloc_frame: Callable[[], int],
    ) -> None:
        self.read_u64 = read_u64
        self.write_u64 = write_u64
        self.alloc_frame = alloc_frame

    @classmethod
    def direct(cls, ram: GuestRam, owner: str) -> PhysAccess:
        """Host-side access for firmware and loaders (before any guest-visible protection)."""

        def alloc() -> int:
            pfn = ram.frames.alloc(owner)
            ram.zero_page(pfn)
            return pfn

        def write(gpa: int, value: int) -> None:
            ram.write_u64(gpa, value)

        return cls(ram.read_u64, write, alloc)


@dataclass
class PageTables:
    """One address space: a PML4 root and the frames of its tables."""

    phys: PhysAccess
    root: int = 0  # GPA of the PML4
    frames: list[int] | None = None

    def __post_init__(self) -> None:
        if self.root == 0 and self.frames is None:  # a new address space: its PML4
            pfn = self.phys.alloc_frame()
            self.root = pfn << PAGE_SHIFT
            self.frames = [pfn]
        elif self.frames is None:
            self.frames = []

    def _entry_gpa(self, va: int, depth: int, create: bool) -> int | None:
        """GPA of the entry at ``depth`` (0 = PML4E .. 3 = PTE) for ``va``."""
        table = self.root
        read_u64 = self.phys.read_u64
        for shift in _SHIFTS[:depth]:
            entry_gpa = table + (((va >> shift) & 0x1FF) << 3)
            value = read_u64(entry_gpa)
            if not value & _P:
                if not create:
                    return None
                pfn = self.phys.alloc_frame()
                assert self.frames is not None
                self.frames.append(pfn)
                value = (pfn << PAGE_SHIFT) | TABLE_FLAGS
                self.phys.write_u64(entry_gpa, value)
            elif value & _PS:
                return None  # a large page already maps this range
            table = value & PTE_ADDR_MASK
        return table + (((va >> _SHIFTS[depth]) & 0x1FF) << 3)

    def map(self, va: int, gpa: int, flags: int, size_shift: int = 12) -> None:
        """Map one page of ``1 << size_shift`` bytes; ``flags`` are leaf bits (P added)."""
        depth = _SIZE_LEVEL[size_shift]
        entry = self._entry_gpa(va, depth, create=True)
        if entry is None:
            raise ValueError(f"0x{va:x} is inside an existing large page")
        leaf = (gpa & PTE_ADDR_MASK & ~((1 << size_shift) - 1)) | int(flags) | _P
        if size_shift != 12:
            leaf |= _PS
        self.phys.write_u64(entry, leaf)

    def map_range(self, va: int, gpa: int, length: int, flags: int) -> None:
        for offset in range(0, length, PAGE_SIZE):
            self.map(va + offset, gpa + offset, flags)

    def pte_gpa(self, va: int) -> int | None:
        """GPA of the 4 KiB PTE mapping ``va`` (None if absent or inside a large page)."""
        return self._entry_gpa(va, 3, create=False)

    def unmap(self, va: int) -> None:
        entry = self.pte_gpa(va)
        if entry is not None:
            self.phys.write_u64(entry, 0)

    def user_range_ok(self, va: int, length: int, write: bool) -> bool:
        """ProbeForRead/ProbeForWrite: every page of ``[va, va+length)`` is a present user page
        here (writable, for a write) — what a kernel checks before copying through a user
        pointer, so that a bad pointer is the caller's error and never a kernel-mode fault."""
        if length < 0 or length > 1 << 20 or va <= 0 or va + length > 1 << 47:
            return False
        page = va & ~0xFFF
        while page < va + max(length, 1):
            leaf = self.lookup(page)
            if leaf is None or not leaf & _US or (write and not leaf & _RW):
                return False
            page += PAGE_SIZE
        return True

    def lookup(self, va: int) -> int | None:
        """The leaf entry value for ``va`` (host-side inspection)."""
        found = self.translate(va)
        return None if found is None else found[0]

    def translate(self, va: int) -> tuple[int, int] | None:
        """(the leaf entry for ``va``, the size of the page it maps: 4 KiB, 2 MiB or 1 GiB);
        None where a level is not present."""
        table = self.root
        for level in LEVELS:
            value = self.phys.read_u64(table + (((va >> level.shift) & 0x1FF) << 3))
            if not value & _P:
                return None
            if level.leaf or (level.large_ok and value & _PS):
                return value, 1 << level.shift
            table = value & PTE_ADDR_MASK
        return None
