"""A translation lookaside buffer per (virtual processor, VTL).

The TLB caches completed walks (:class:`~vbsim.hw.paging.Leaf`) by 4 KiB virtual page, as a real
one caches translations — including *stale* ones: editing a PTE does not change a cached
translation until CR3 is reloaded or INVLPG runs (SDM Vol. 3A §4.10.4), which attacks rely on.

On top of that it keeps nine "fast" maps (read / write / execute × supervisor / user / supervisor
with RFLAGS.AC set) from virtual page to GPA page, filled only after every paging and SLAT check
has passed for that kind of access in that mode, so a hit needs no checks at all.  Supervisor
accesses to user pages succeed under SMAP only with AC=1, so they are cached only in the AC maps,
which the processor uses while AC is set.
"""

from __future__ import annotations

from vbsim.hw.paging import Leaf
from vbsim.hw.x86 import Access


class Tlb:
    __slots__ = ("entries", "fast", "flushes", "large")

    def __init__(self) -> None:
        self.entries: dict[int, Leaf] = {}
        #: fast[mode * 3 + access]: virtual page number -> GPA page base, where mode is 0 for
        #: supervisor, 1 for user, 2 for supervisor with RFLAGS.AC=1 (SMAP's override).
        self.fast: tuple[dict[int, int], ...] = ({}, {}, {}, {}, {}, {}, {}, {}, {})
        self.flushes = 0
        #: The cached pieces of large pages (vpn -> size shift): INVLPG scans only these.
        self.large: dict[int, int] = {}

    @staticmethod
    def mode(cpl: int, ac: bool) -> int:
        return 3 if cpl == 3 else (6 if ac else 0)

    def maps_for(
        self, cpl: int, ac: bool = False
    ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        """(read, write, execute) fast maps for a privilege level (and RFLAGS.AC at CPL0)."""
        base = self.mode(cpl, ac)
        return self.fast[base], self.fast[base + 1], self.fast[base + 2]

    def fill(self, vpn: int, leaf: Leaf, access: Access, mode: int, cacheable: bool) -> None:
        self.entries[vpn] = leaf
        if leaf.size_shift > 12:
            self.large[vpn] = leaf.size_shift
        if cacheable:
            self.fast[mode + int(access)][vpn] = leaf.gpa_page

    def flush_all(self, keep_global: bool = False) -> None:
        self.flushes += 1
        for fast in self.fast:
            fast.clear()
        if keep_global:
            self.entries = {vpn: e for vpn, e in self.entries.items() if e.glob}
            self.large = {vpn: shift for vpn, shift in self.large.items() if vpn in self.entries}
        else:
            self.entries.clear()
            self.large.clear()

    def flush_page(self, vpn: int) -> None:
        """INVLPG: drop the translation of this page — and, when a large page maps it, every
        piece of that large page the model cached (it is one TLB entry, SDM §4.10.4.1)."""
        self.entries.pop(vpn, None)
        large = self.large
        if large:
            large.pop(vpn, None)
        for fast in self.fast:
            if vpn in fast:  # (a membership test is cheaper than a pop call)
                del fast[vpn]
        if not large:
            return
        pieces = [
            other
            for other, shift in self.large.items()
            if other >> (shift - 12) == vpn >> (shift - 12)
        ]
        for other in pieces:
            del self.entries[other]
            del self.large[other]
            for fast in self.fast:
                fast.pop(other, None)
