"""Guest-physical memory as VTL0 sees it: runs of pages with the same SLAT rights and owner."""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.hw.slat import ALL, describe
from vbsim.machine import Machine


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
    owner = machine.ram.frames.owner(pfn)
    if owner is None:
        return "free" if pfn >= machine.ram.frames._next else "unused"
    return owner


def vtl0_memory_map(machine: Machine, include_free: bool = False) -> list[MemoryRun]:
    """Runs of pages that share VTL0's rights and owner, in GPA order."""
    slat = machine.slat
    runs: list[MemoryRun] = []
    start = 0
    current: tuple[int, str] | None = None
    limit = machine.ram.frames._next
    for pfn in range(limit):
        key = (slat.rights(0, pfn) if slat is not None else ALL, owner_label(machine, pfn))
        if key != current:
            if current is not None:
                runs.append(MemoryRun(start << 12, pfn - start, *current))
            start, current = pfn, key
    if current is not None:
        runs.append(MemoryRun(start << 12, limit - start, *current))
    if include_free and limit < machine.ram.pages:
        rights = slat.rights(0, limit) if slat is not None else ALL
        runs.append(MemoryRun(limit << 12, machine.ram.pages - limit, rights, "free"))
    return runs
