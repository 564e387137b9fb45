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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hw import code
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER, PrivateState
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Cr4, Pte

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu

DIRECT_MAP = 0xFFFF_8000_0000_0000
#: Kernel data pages: RW, NX, global (one int: IntFlag arithmetic per page is slow).
_DATA_FLAGS = int(Pte.RW | Pte.NX | Pte.G)
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

    The loader (:class:`KernelSpace`, host side) shares ``routines`` and ``code_pages`` with the
    map, so a routine the loader installs later (a tool planting code after boot) is seen."""

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


@dataclass
class KernelSpace:
    """The loader's side of a kernel's address space: it holds guest RAM and the host frame
    allocator, builds the page tables, code pages and data pages, and hands the kernel its
    :class:`KernelMap`.  Host side only (boot chain, tools that plant code after boot)."""

    ram: GuestRam
    owner: str
    smep_smap: bool = True
    pt: PageTables = field(init=False)
    frames: list[int] = field(default_factory=list)
    code_pages: list[int] = field(default_factory=list)
    _code_slot: int = 0
    _data_next: int = DATA_BASE
    routines: dict[str, int] = field(default_factory=dict)
    kernel_map: KernelMap = field(init=False)

    def __post_init__(self) -> None:
        self.pt = PageTables(PhysAccess.direct(self.ram, self.owner))
        self.kernel_map = KernelMap(
            self.owner, self.pt.root, DATA_BASE, self.routines, self.code_pages
        )
        assert self.pt.frames is not None
        self.frames.extend(self.pt.frames)
        gib = -(-self.ram.size // GIB)
        for i in range(gib):
            self.pt.map(DIRECT_MAP + i * GIB, i * GIB, int(Pte.RW | Pte.NX | Pte.G), 30)
        self._sync_frames()

    def _sync_frames(self) -> None:
        assert self.pt.frames is not None
        for pfn in self.pt.frames:
            if pfn not in self.frames:
                self.frames.append(pfn)

    # -- loader-time construction ------------------------------------------------------------
    def alloc_frame(self) -> int:
        pfn = self.ram.frames.alloc(self.owner)
        self.ram.zero_page(pfn)
        self.frames.append(pfn)
        return pfn

    def alloc_data(self, pages: int = 1, contiguous: bool = False) -> tuple[int, int]:
        """Map ``pages`` fresh RW/NX pages; returns (first VA, first GPA).  Frames need not be
        contiguous unless ``contiguous`` (a table a host-side reader finds from one GPA); the GPA
        returned is the first page's."""
        va = self._data_next
        first_gpa = -1
        base = self.ram.frames.alloc_contiguous(pages, self.owner) if contiguous else -1
        for i in range(pages):
            if base >= 0:
                pfn = base + i
                self.ram.zero_page(pfn)
                self.frames.append(pfn)
            else:
                pfn = self.alloc_frame()
            if first_gpa < 0:
                first_gpa = pfn << PAGE_SHIFT
            self.pt.map(va + i * PAGE_SIZE, pfn << PAGE_SHIFT, _DATA_FLAGS)
        self._data_next += pages * PAGE_SIZE
        self._sync_frames()
        return va, first_gpa

    def install(self, name: str) -> int:
        """Place the thunk of routine ``name`` in a code page; returns its VA."""
        if name in self.routines:
            return self.routines[name]
        slots = PAGE_SIZE // code.THUNK_SIZE
        if self._code_slot % slots == 0:
            pfn = self.alloc_frame()
            self.code_pages.append(pfn)
            va_page = CODE_BASE + (len(self.code_pages) - 1) * PAGE_SIZE
            self.pt.map(va_page, pfn << PAGE_SHIFT, int(Pte.G))  # read-only, executable
            self._sync_frames()
        page_index, slot = divmod(self._code_slot, slots)
        va = CODE_BASE + page_index * PAGE_SIZE + slot * code.THUNK_SIZE
        gpa = (self.code_pages[page_index] << PAGE_SHIFT) + slot * code.THUNK_SIZE
        self.ram.write(gpa, code.encode_thunk(name))
        self._code_slot += 1
        self.routines[name] = va
        return va

    def build_idt(self, handlers: dict[int, str], default: str | None = None) -> tuple[int, int]:
        """An IDT with a gate per vector; returns (base VA, limit)."""
        va, gpa = self.alloc_data(1)
        for vector in range(IDT_ENTRIES):
            name = handlers.get(vector, default)
            if name is not None:
                self.ram.write(gpa + vector * 16, interrupt_gate(self.install(name)))
        return va, IDT_ENTRIES * 16 - 1

    def initial_state(self, rip: int, rsp: int = 0, idt: tuple[int, int] = (0, 0)) -> PrivateState:
        cr4 = LONG_MODE_CR4 | (int(Cr4.SMEP | Cr4.SMAP) if self.smep_smap else 0)
        state = PrivateState(
            rip=rip,
            rsp=rsp,
            cr0=LONG_MODE_CR0,
            cr3=self.pt.root,
            cr4=cr4,
            efer=LONG_MODE_EFER,
            idtr_base=idt[0],
            idtr_limit=idt[1],
        )
        state.segments["cs"].attributes = CS_KERNEL_ATTRIBUTES
        state.segments["cs"].selector = 0x10
        return state

    # -- run-time access from the kernel's own VP ----------------------------------------------
    @staticmethod
    def phys_va(gpa: int) -> int:
        return DIRECT_MAP + gpa

    def lookup_gpa(self, va: int) -> int:
        """The GPA behind a VA the loader mapped (for the loader's own writes)."""
        leaf = self.pt.lookup(va)
        assert leaf is not None, f"{va:#x} is not mapped"
        return (leaf & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF)

    def write_u64(self, va: int, value: int) -> None:
        """The loader initialising the kernel image's data (before any processor runs it)."""
        self.ram.write_u64(self.lookup_gpa(va), value)

    def write(self, va: int, data: bytes) -> None:
        self.ram.write(self.lookup_gpa(va), data)

    def place_image(self, vtl: int, block_va: int, image: object) -> None:
        """Register the kernel image behind a processor block (what GS designates)."""
        self.ram.place_image(vtl, block_va, image)

    @property
    def built_frames(self) -> list[int]:
        """Every frame the loader built this kernel's space in (tables, code, data)."""
        return list(self.frames)

    @property
    def ram_pages(self) -> int:
        return self.ram.pages

    def runtime_phys(self, vp: VirtualProcessor) -> PhysAccess:
        """Transitional (the SK until it adopts :func:`runtime_phys` with its own pool): physical
        access through the kernel's VP and the direct map, frames from the host allocator."""

        def alloc() -> int:
            pfn = self.ram.frames.alloc(self.owner)
            vp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
            self.frames.append(pfn)
            return pfn

        return PhysAccess(
            lambda gpa: vp.read_u64(DIRECT_MAP + gpa),
            lambda gpa, value: vp.write_u64(DIRECT_MAP + gpa, value),
            alloc,
        )
