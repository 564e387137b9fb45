"""NT's physical memory: the PFN database and its free list, in VTL0 RAM (issue 10, part 1).

NT owns the frames the loader's memory map gives it and hands them out itself, like
MmAllocatePagesForMdl / MiRemoveAnyPage over ``nt!MmPfnDatabase`` (Windows Internals 7th ed.
part 1 ch. 5 "Page frame number database").  Every decision reads the database through NT's own
processor (the direct map, paging over VTL0's SLAT), so a K0 write primitive can corrupt it as it
could on Windows, and nothing else hands NT a frame: no host allocator at run time.

Layout (:class:`~vbsim.nt.layouts.MMPFN`, :class:`~vbsim.nt.layouts.MMPFNLIST`): one 8-byte entry
per page of RAM; ``MmFreePageListHead`` with the count and first PFN of the free list, the next
never-used PFN and the limit.  A page is handed out from the free list first (and zeroed), else
from the never-used range (already zero).  Freeing a page NT does not own (not ActiveAndValid) is
refused: Windows bugchecks PFN_LIST_CORRUPT there; the model refuses and traces it, so a caller's
double free cannot hand one frame to two owners.

Initialisation (:func:`initialize`, loader time): every page below the region the memory map
gives NT is on the bad page list, except the frames the loader built NT's own image and tables
in, which are active (they are NT's); the region itself is the never-used range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt.layouts import MMLISTS, MMPFN, MMPFNLIST, read_field, write_field

if TYPE_CHECKING:
    from vbsim.guest.image_builder import ImageBuilder
    from vbsim.hw.cpu import Cpu
    from vbsim.nt.layouts import _Ram

_ACTIVE = int(MMLISTS.ActiveAndValid) << MMPFN.LOCATION_SHIFT
_FREE = int(MMLISTS.FreePageList) << MMPFN.LOCATION_SHIFT
_BAD = int(MMLISTS.BadPageList) << MMPFN.LOCATION_SHIFT


class NoPages(Exception):
    """The free list and the never-used range are empty (STATUS_NO_MEMORY / INSUFFICIENT_
    RESOURCES to the caller; never escapes NT)."""


def database_pages(ram_pages: int) -> int:
    return -(-ram_pages * MMPFN.SIZE // PAGE_SIZE)


def initialize(
    loader: ImageBuilder, database_va: int, head_va: int, first: int, limit: int, own: list[int]
) -> None:
    """MiInitializePfnDatabase (loader time, host side): entries below ``first`` bad but NT's
    own frames (``own``), which are active; ``[first, limit)`` never used (entries zero)."""
    entries = bytearray(_BAD.to_bytes(8, "little") * first)
    active = _ACTIVE.to_bytes(8, "little")
    for pfn in own:
        if pfn < first:
            entries[pfn * 8 : pfn * 8 + 8] = active
    for offset in range(0, len(entries), PAGE_SIZE):
        loader.write(database_va + offset, bytes(entries[offset : offset + PAGE_SIZE]))
    loader.write_u64(head_va + MMPFNLIST.Total.offset, limit - first)
    loader.write_u64(head_va + MMPFNLIST.Flink.offset, 0)
    loader.write_u64(head_va + MMPFNLIST.NextFresh.offset, first)
    loader.write_u64(head_va + MMPFNLIST.Limit.offset, limit)


def mark_own(loader: ImageBuilder, database_va: int, pfns: list[int]) -> None:
    """Loader time: frames the loader gave NT after initialisation are NT's (active)."""
    for pfn in pfns:
        loader.write_u64(database_va + pfn * MMPFN.SIZE, _ACTIVE)


def allocate(cpu: Cpu, database_va: int, head_va: int) -> int:
    """MiRemoveAnyPage: a zeroed page NT now owns; its PFN.  :class:`NoPages` when none is left."""
    pfn = read_field(cpu, head_va, MMPFNLIST.Flink)
    if pfn:
        entry = cpu.read_u64(database_va + pfn * MMPFN.SIZE)
        write_field(cpu, head_va, MMPFNLIST.Flink, entry & MMPFN.FLINK_MASK)
        cpu.write(DIRECT_MAP + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))  # free pages are dirty
    else:
        pfn = read_field(cpu, head_va, MMPFNLIST.NextFresh)
        if pfn >= read_field(cpu, head_va, MMPFNLIST.Limit):
            raise NoPages
        # A never-used page is zero (RAM is zero at power-on and nothing wrote it since), but
        # NT does not take the loader's word for it: another owner's stray write would leak.
        cpu.write(DIRECT_MAP + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        write_field(cpu, head_va, MMPFNLIST.NextFresh, pfn + 1)
    write_field(cpu, head_va, MMPFNLIST.Total, read_field(cpu, head_va, MMPFNLIST.Total) - 1)
    cpu.write_u64(database_va + pfn * MMPFN.SIZE, _ACTIVE)
    return pfn


def free(cpu: Cpu, database_va: int, head_va: int, pfn: int) -> bool:
    """MiInsertPageInFreeList: back on the free list; False (refused) unless NT owns the page."""
    limit = read_field(cpu, head_va, MMPFNLIST.Limit)
    if not 0 < pfn < limit:
        return False
    entry_va = database_va + pfn * MMPFN.SIZE
    if cpu.read_u64(entry_va) >> MMPFN.LOCATION_SHIFT != MMLISTS.ActiveAndValid:
        if cpu.tracing:
            cpu.emit("nt", "mm.free-page", "refused", pfn=pfn, reason="not-active")
        return False
    cpu.write_u64(entry_va, _FREE | read_field(cpu, head_va, MMPFNLIST.Flink))
    write_field(cpu, head_va, MMPFNLIST.Flink, pfn)
    write_field(cpu, head_va, MMPFNLIST.Total, read_field(cpu, head_va, MMPFNLIST.Total) + 1)
    return True


def is_active(cpu: Cpu, database_va: int, pfn: int) -> bool:
    return cpu.read_u64(database_va + pfn * MMPFN.SIZE) >> MMPFN.LOCATION_SHIFT == int(
        MMLISTS.ActiveAndValid
    )


def allocate_contiguous(cpu: Cpu, database_va: int, head_va: int, count: int) -> int:
    """MmAllocateContiguousMemory: ``count`` physically contiguous zeroed pages from the
    never-used range (the model's free list is not sorted, so it does not search it); the
    first PFN.  :class:`NoPages` if the range is too short."""
    first = read_field(cpu, head_va, MMPFNLIST.NextFresh)
    if count <= 0 or first + count > read_field(cpu, head_va, MMPFNLIST.Limit):
        raise NoPages
    write_field(cpu, head_va, MMPFNLIST.NextFresh, first + count)
    write_field(cpu, head_va, MMPFNLIST.Total, read_field(cpu, head_va, MMPFNLIST.Total) - count)
    cpu.write(DIRECT_MAP + (first << PAGE_SHIFT), bytes(count * PAGE_SIZE))
    for frame in range(first, first + count):
        cpu.write_u64(database_va + frame * MMPFN.SIZE, _ACTIVE)
    return first


def limit(cpu: Cpu, head_va: int) -> int:
    """MmHighestPhysicalPage + 1."""
    return read_field(cpu, head_va, MMPFNLIST.Limit)


def active_pages(cpu: Cpu, database_va: int, head_va: int) -> list[int]:
    """The PFNs NT owns (ActiveAndValid), read from the database in one pass."""
    count = limit(cpu, head_va)
    raw = cpu.read(database_va, count * MMPFN.SIZE)
    active = int(MMLISTS.ActiveAndValid)
    entries = memoryview(raw).cast("Q")
    return [f for f in range(1, count) if entries[f] >> MMPFN.LOCATION_SHIFT == active]


# -- host side (tools: the boot report, the monitor, the fuzzer's harness; never guest code) ----
def host_entries(ram: _Ram, database_gpa: int, count: int) -> memoryview:
    """The first ``count`` MMPFN entries as RAM holds them (the database is one contiguous run
    from ``database_gpa``, see NtKernel), one u64 per page."""
    return memoryview(ram.read(database_gpa, count * MMPFN.SIZE)).cast("Q")


def host_location(entry: int) -> int:
    """An entry's PageLocation (:class:`~vbsim.nt.layouts.MMLISTS`)."""
    return entry >> MMPFN.LOCATION_SHIFT


def host_next_fresh(ram: _Ram, head_gpa: int) -> int:
    """MmFreePageListHead's next never-used PFN as RAM holds it."""
    offset = MMPFNLIST.NextFresh.offset
    return int.from_bytes(ram.read(head_gpa + offset, 8), "little")
