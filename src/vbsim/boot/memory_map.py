"""Guest-physical memory as VTL0 sees it: runs of pages with the same SLAT rights and owner.

Who owns a page: below NT's region, the loader's record (the host frame allocator's owner tags:
ntoskrnl's image and tables, the Secure Kernel's image and pool); inside NT's region, NT's own
PFN database in RAM (issue 10: NT owns its frames), read host side: a page NT handed out is
"nt.pool", a page on its free list or never used is "free".  Between the two lies the host
reserve (:data:`vbsim.boot.chain.HOST_RESERVE_FRAMES`), "unused" until a host tool takes a
page of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.slat import ALL, describe
from vbsim.machine import Machine
from vbsim.nt import pfn as mm
from vbsim.nt.layouts import MMLISTS

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

#: Owner labels of NT's region (report.draw colours "nt.pool*" as NT pool, "free" as free).
NT_POOL = "nt.pool"
NT_FREE = "free"


@dataclass(frozen=True)
class MemoryRun:
    first_gpa: int
    pages: int
    rights: int  # VTL0's effective HV_MAP_GPA rights (0xF when no SLAT exists)
    owner: str

    @property
    def rights_text(self) -> str:
        return describe(self.rights)

    def to_json(self) -> dict[str, object]:
        return {
            "gpa": self.first_gpa,
            "pages": self.pages,
            "rights": self.rights_text,
            "owner": self.owner,
        }


def owner_label(machine: Machine, pfn: int) -> str:
    """The loader's record for a page below NT's region."""
    owner = machine.ram.frames.owner(pfn)
    if owner is None:
        return "unused"
    return owner


def _nt_owners(machine: Machine, nt: NtKernel | None) -> tuple[int, list[str]]:
    """NT's region (its first PFN) and each of its pages' owner, from NT's PFN database."""
    limit = machine.ram.frames.limit or machine.ram.pages
    if nt is None or not nt.pfn_database:
        return machine.ram.pages, []
    pages = machine.ram.pages
    entries = mm.host_entries(machine.ram, nt.pfn_database - DIRECT_MAP, pages)
    active = int(MMLISTS.ActiveAndValid)
    owners = [
        NT_POOL if mm.host_location(entries[pfn]) == active else NT_FREE
        for pfn in range(limit, pages)
    ]
    return limit, owners


def vtl0_memory_map(
    machine: Machine, include_free: bool = False, nt: NtKernel | None = None
) -> list[MemoryRun]:
    """Runs of pages that share VTL0's rights and owner, in GPA order: the loader's pages, and
    with ``include_free`` NT's region too (owners from NT's PFN database when ``nt`` is given;
    the whole region "free" without it)."""
    slat = machine.slat
    region, nt_owners = _nt_owners(machine, nt)
    loader_end = machine.ram.frames._next
    end = machine.ram.pages if include_free else loader_end

    def owner(pfn: int) -> str:
        if pfn < region:
            return owner_label(machine, pfn) if pfn < loader_end else "unused"
        return nt_owners[pfn - region] if nt_owners else NT_FREE

    runs: list[MemoryRun] = []
    start = 0
    current: tuple[int, str] | None = None
    for pfn in range(end):
        key = (slat.rights(0, pfn) if slat is not None else ALL, owner(pfn))
        if key != current:
            if current is not None:
                runs.append(MemoryRun(start << 12, pfn - start, *current))
            start, current = pfn, key
    if current is not None:
        runs.append(MemoryRun(start << 12, end - start, *current))
    return runs
