"""Guest-physical RAM: one anonymous mmap, committed lazily by the host OS.

A single buffer keeps the door open for a native CPU emulator to map the same memory.  Accesses
outside RAM are *unbacked GPAs*: reads float high (all ones, as an unclaimed bus cycle does on a
PC) and writes are dropped; the caller reports the event.  The frame allocator is a bump pointer
plus a free list, so a 4 GiB machine costs nothing until frames are used.
"""

from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass, field

from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Access

DEFAULT_RAM_SIZE = 1 << 30  # 1 GiB (issue: default RAM size)


class RamError(Exception):
    """Host-side misuse of the RAM object (bad size); never raised on guest input."""


class OutOfFrames(Exception):
    """The frame allocator is exhausted (a modelled resource limit, reported as a status)."""


@dataclass(slots=True)
class FrameAllocator:
    """Hands out 4 KiB frames from [first, limit); remembers an owner label per allocated frame."""

    first: int
    limit: int
    _next: int = 0
    _free: list[int] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._next = self.first

    def alloc(self, owner: str = "") -> int:
        """Return the page frame number of a free frame (zeroing is the caller's business)."""
        if self._free:
            pfn = self._free.pop()
        elif self._next < self.limit:
            pfn = self._next
            self._next += 1
        else:
            raise OutOfFrames(owner)
        self.owners[pfn] = owner
        return pfn

    def alloc_contiguous(self, count: int, owner: str = "", align: int = 1) -> int:
        """``count`` physically contiguous frames (from the bump region), aligned to ``align``."""
        start = -(-self._next // align) * align
        if start + count > self.limit:
            raise OutOfFrames(owner)
        for pfn in range(self._next, start):
            self._free.append(pfn)
        for pfn in range(start, start + count):
            self.owners[pfn] = owner
        self._next = start + count
        return start

    def free(self, pfn: int) -> None:
        if self.owners.pop(pfn, None) is not None:
            self._free.append(pfn)

    def owner(self, pfn: int) -> str | None:
        return self.owners.get(pfn)

    @property
    def used(self) -> int:
        return len(self.owners)


class GuestRam:
    """The bottom layer: guest-physical addresses are offsets into one mmap."""

    def __init__(self, size: int = DEFAULT_RAM_SIZE) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise RamError(f"RAM size must be a positive multiple of {PAGE_SIZE}, got {size}")
        self.size = size
        self.pages = size >> PAGE_SHIFT
        # MAP_PRIVATE|MAP_ANONYMOUS: the kernel commits pages on first touch; MAP_NORESERVE (Linux,
        # 0x4000 in <asm-generic/mman-common.h>; Python 3.11's mmap does not name it) asks for no
        # swap reservation up front, so a large, mostly untouched RAM maps under the default
        # overcommit heuristic.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if sys.platform == "linux":
            flags |= getattr(mmap, "MAP_NORESERVE", 0x4000)
        try:
            self.mm = mmap.mmap(-1, size, flags=flags)
        except OSError as error:
            raise RamError(
                f"cannot map {size >> 20} MiB of guest RAM on this host ({error.strerror or error})"
            ) from error
        self.view = memoryview(self.mm)
        # Frame 0 is kept back (real-mode IVT / never handed out), as firmware does.
        self.frames = FrameAllocator(first=1, limit=self.pages)
        #: The code images loaders placed in this RAM, keyed by (VTL, the VA of a per-processor
        #: block of theirs): what a kernel's routines find through GS base, as real code finds
        #: its own globals by linkage (see :meth:`vbsim.hw.cpu.Cpu.kernel`).  Plain references,
        #: so a dropped machine is one garbage cycle and is freed.
        self.images: dict[tuple[int, int], object] = {}

    def place_image(self, vtl: int, block_va: int, image: object) -> None:
        """Loader side: ``image``'s code runs in ``vtl`` with GS base ``block_va``."""
        self.images[(vtl, block_va)] = image

    # -- the layer interface ------------------------------------------------------------------
    def translate(self, gpa: int, access: Access = Access.READ) -> Verdict:
        if 0 <= gpa < self.size:
            return Verdict(True, gpa, "ram", access)
        return Verdict(False, gpa, "ram.unbacked", access)

    def backed(self, gpa: int, length: int = 1) -> bool:
        return gpa >= 0 and gpa + length <= self.size and length >= 0

    def read(self, gpa: int, length: int) -> bytes:
        """Bytes at ``gpa``; unbacked bytes read as 0xFF (floating bus)."""
        if gpa >= 0 and gpa + length <= self.size:
            return self.mm[gpa : gpa + length]
        return bytes(self._read_partial(gpa, length))

    def _read_partial(self, gpa: int, length: int) -> bytearray:
        out = bytearray(b"\xff" * max(length, 0))
        lo, hi = max(gpa, 0), min(gpa + length, self.size)
        if lo < hi:
            out[lo - gpa : hi - gpa] = self.mm[lo:hi]
        return out

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data``; returns False (and drops the unbacked part) outside RAM."""
        end = gpa + len(data)
        if gpa >= 0 and end <= self.size:
            self.mm[gpa:end] = data
            return True
        lo, hi = max(gpa, 0), min(end, self.size)
        if lo < hi:
            self.mm[lo:hi] = bytes(data)[lo - gpa : hi - gpa]
        return False

    def zero_page(self, pfn: int) -> None:
        base = pfn << PAGE_SHIFT
        if 0 <= pfn < self.pages:
            self.mm[base : base + PAGE_SIZE] = bytes(PAGE_SIZE)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> bool:
        return self.write(gpa, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def close(self) -> None:
        self.view.release()
        self.mm.close()
