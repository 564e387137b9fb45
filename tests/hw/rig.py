"""Shared scaffolding for the platform tests: a virtual processor on its own RAM, with page
tables built by :class:`PageTables`, a code page and an IDT whose every gate leads to a test
handler that records the exception and ends the flow with ``ThreadTerminated``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from vbsim.guest.address_space import interrupt_gate
from vbsim.hw import code
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.paging import PagingLayer, SimplePagingState
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER
from vbsim.hw.slat import Slat
from vbsim.hw.translation import Verdict
from vbsim.hw.vp import NoHypervisor, VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Cr4, Pte
from vbsim.trace import Trace

FAULT_HANDLER = "test.hw.fault"
CODE_VA = 0xFFFF_F800_0000_0000
IDT_VA = 0xFFFF_F880_0000_0000
#: Where tests map their own pages (user half, away from everything else).
TEST_VA = 0x0000_0000_4000_0000
KERNEL_TEST_VA = 0xFFFF_F900_0000_0000

SMEP_SMAP = int(Cr4.SMEP | Cr4.SMAP)


@dataclass(frozen=True)
class FaultRecord:
    """What the test IDT handler saw: the vector, the error code, CR2, and the mode it ran in."""

    vector: int
    error_code: int
    cr2: int
    cpl: int
    vtl: int


@code.guest_code(FAULT_HANDLER)
def _record_fault(vp: VirtualProcessor, vector: int, error_code: int) -> None:
    rig = vp.kernel()
    assert isinstance(rig, Rig)
    rig.faults.append(FaultRecord(vector, error_code, vp.read_cr(2), vp.cpl, vp.vtl))
    raise ThreadTerminated("test fault", vector, error_code)


class SlatExits(NoHypervisor):
    """A stand-in for the hypervisor: records SLAT refusals and ends the flow."""

    def __init__(self) -> None:
        self.violations: list[tuple[Verdict, int | None]] = []

    def memory_violation(self, vp: VirtualProcessor, verdict: Verdict, gva: int | None) -> bool:
        self.violations.append((verdict, gva))
        raise ThreadTerminated("slat violation")


class Rig:
    """One VP (VTL0) on a small RAM, with 4-level page tables, a code page and an IDT."""

    #: The rig most recently built (what test routines running at CPL3 record into).
    current: ClassVar[Rig | None] = None

    def __init__(
        self,
        ram_size: int = 16 << 20,
        *,
        slat: Slat | None = None,
        cr4_extra: int = SMEP_SMAP,
        efer: int = LONG_MODE_EFER,
    ) -> None:
        Rig.current = self
        self.ram = GuestRam(ram_size)
        self.trace = Trace()
        self.slat = slat
        self.pt = PageTables(PhysAccess.direct(self.ram, "test"))
        self.faults: list[FaultRecord] = []
        #: Free-form observations made by test guest routines.
        self.notes: list[Any] = []
        self._code_pages: list[int] = []
        self._code_slot = 0
        self._code_next = CODE_VA
        self.handler_va = self.install(FAULT_HANDLER)
        self.idt_gpa = self.frame()
        # Supervisor, RW, *executable* mapping: the IDT stays readable with EFER.NXE=0.
        self.pt.map(IDT_VA, self.idt_gpa, int(Pte.RW | Pte.G))
        for vector in range(256):
            self.ram.write(self.idt_gpa + vector * 16, interrupt_gate(self.handler_va))
        self.vp = VirtualProcessor(0, self.ram, slat, self.trace)
        if slat is not None:
            self.exits = SlatExits()
            self.vp.exits = self.exits
        p = self.vp.p
        p.cr0 = LONG_MODE_CR0
        p.cr3 = self.pt.root
        p.cr4 = LONG_MODE_CR4 | cr4_extra
        p.efer = efer
        p.idtr_base = IDT_VA
        p.idtr_limit = 256 * 16 - 1
        # GS base designates the rig as the code image of whichever VTL runs it (Cpu.kernel()).
        p.gs_base = IDT_VA
        for vtl in (0, 1):
            self.ram.place_image(vtl, IDT_VA, self)
        self.vp.flush_tlb()

    # -- building ---------------------------------------------------------------------------
    def frame(self) -> int:
        """GPA of a fresh zeroed frame."""
        pfn = self.ram.frames.alloc("test")
        self.ram.zero_page(pfn)
        return pfn << PAGE_SHIFT

    def page(self, va: int, flags: int, data: bytes = b"") -> int:
        """Map a fresh 4 KiB frame at ``va`` with leaf ``flags``; returns its GPA."""
        gpa = self.frame()
        self.pt.map(va, gpa, flags)
        if data:
            self.ram.write(gpa, data)
        return gpa

    def install(self, name: str) -> int:
        """Put the thunk of routine ``name`` in a supervisor, read-only, executable code page."""
        slots = PAGE_SIZE // code.THUNK_SIZE
        if self._code_slot % slots == 0:
            gpa = self.frame()
            self._code_pages.append(gpa)
            self.pt.map(CODE_VA + (len(self._code_pages) - 1) * PAGE_SIZE, gpa, int(Pte.G))
        index, slot = divmod(self._code_slot, slots)
        self._code_slot += 1
        self.ram.write(self._code_pages[index] + slot * code.THUNK_SIZE, code.encode_thunk(name))
        return CODE_VA + index * PAGE_SIZE + slot * code.THUNK_SIZE

    def entry_gpa(self, va: int, depth: int) -> int:
        """GPA of the paging-structure entry at ``depth`` (0 = PML4E .. 3 = PTE) for ``va``."""
        gpa = self.pt._entry_gpa(va, depth, create=False)
        assert gpa is not None
        return gpa

    def entry(self, va: int, depth: int) -> int:
        return self.ram.read_u64(self.entry_gpa(va, depth))

    def set_entry(self, va: int, depth: int, value: int) -> None:
        self.ram.write_u64(self.entry_gpa(va, depth), value)

    def layer(self, **state: Any) -> PagingLayer:
        """A standalone PagingLayer over the same tables (state defaults to the VP's)."""
        p = self.vp.p
        values = {
            "cr3": p.cr3,
            "cr0": p.cr0,
            "cr4": p.cr4,
            "efer": p.efer,
            "cpl": 0,
            "rflags": p.rflags,
        }
        values.update(state)
        return PagingLayer(self.ram, self.slat, 0, SimplePagingState(**values))

    # -- running ----------------------------------------------------------------------------
    def expect_fault(self, action: Callable[[], Any]) -> FaultRecord:
        """Run ``action``; it must end in exactly one exception delivered to the test handler."""
        before = len(self.faults)
        with pytest.raises(ThreadTerminated):
            action()
        assert len(self.faults) == before + 1, self.faults[before:]
        return self.faults[-1]
