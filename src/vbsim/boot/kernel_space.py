"""The loader's side of a kernel's address space (host side: it holds guest RAM and the host frame
allocator).  The layout it builds, and what the running kernel keeps of it (:class:`KernelMap`),
are guest-safe and live in :mod:`vbsim.guest.address_space`."""

from __future__ import annotations

from dataclasses import dataclass, field

from vbsim.guest.address_space import (
    CODE_BASE,
    CS_KERNEL_ATTRIBUTES,
    DATA_BASE,
    DIRECT_MAP,
    GIB,
    IDT_ENTRIES,
    KernelMap,
    interrupt_gate,
)
from vbsim.hw import code
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER, PrivateState
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Cr4, Pte

__all__ = ["KernelSpace"]

#: Kernel data pages: RW, NX, global (one int: IntFlag arithmetic per page is slow).
_DATA_FLAGS = int(Pte.RW | Pte.NX | Pte.G)


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
