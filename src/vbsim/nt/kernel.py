"""The NT kernel (VTL0 ring 0): boot phases, traps, the system-call path, processes.

NT here is guest code like any other: it reaches memory through its VP (paging over VTL0's SLAT),
enters the Secure Kernel only through ``Vsl*`` secure calls, and its handlers decide what a fault
means: a user-mode fault ends the thread, a kernel-mode fault bugchecks the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from vbsim.guest import crash, rtc
from vbsim.guest.address_space import DIRECT_MAP, KernelMap, runtime_phys
from vbsim.hv import defs as hv_defs
from vbsim.hv.calls.context import encode_context
from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck, ThreadTerminated
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Efer, Msr, Pte, Rflags, Vector
from vbsim.nt import cid, notify, vad
from vbsim.nt import pfn as mm
from vbsim.nt import process as ps
from vbsim.nt.layouts import (
    EPROCESS,
    KPCR,
    LIST_ENTRY,
    MMPFNLIST,
    MmProtect,
    read_field,
    write_field,
)
from vbsim.nt.pfn import NoPages
from vbsim.nt.process import Process, Protection, Region, Token, new_address_space
from vbsim.ntstatus import BugCheck, NtStatus

if TYPE_CHECKING:
    from vbsim.guest.image_builder import ImageBuilder
    from vbsim.nt.kdp import NtKdp
    from vbsim.nt.lsass import LsassInfo
    from vbsim.nt.vsl import Vsl

#: Windows x64 STAR: kernel CS 0x10, user CS base 0x20 (user CS 0x33, SS 0x2B).
STAR_VALUE = (0x0023 << 48) | (0x0010 << 32)
#: SFMASK clears TF, IF, DF and AC on entry (as Windows does).
SFMASK_VALUE = int(Rflags.TF | Rflags.IF | Rflags.DF | Rflags.AC)

#: The IPI vector Windows x64 uses (IPI_LEVEL's vector 0xE1; KiIpiInterrupt, Windows
#: Internals 7th ed. part 2 ch. 8 "Interrupt dispatching").
IPI_VECTOR = 0xE1

#: IA32_X2APIC_ICR and the ICR's destination shorthand "all excluding self" (bits 19:18 = 11,
#: SDM Vol. 3A §10.6.1, §10.12.9).
X2APIC_ICR = 0x830
ICR_ALL_EXCLUDING_SELF = 0b11 << 18

#: Entries in KiServiceTable (KiServiceLimit): the model build's numbers stay below it.
SERVICE_LIMIT = 0x200
#: NT .data: the CPUID 0x40000004 EAX recommendations, with HV_PRESENT (bit 32, the model's)
#: set once phase 0 found an Hv#1 hypervisor ([model] names; Windows keeps both in Hvl globals).
ENLIGHTENMENTS = "HvlEnlightenments"
HV_PRESENT = 1 << 32
#: NT .data: KeBootTime, the boot's system time as a FILETIME (vbsim.guest.rtc).
BOOT_TIME = "KeBootTime"
#: HV_X64_ENLIGHTENMENT_INFORMATION bit 2, UseHypercallForRemoteFlush (TLFS; hv.defs).
USE_HYPERCALL_FOR_REMOTE_FLUSH = hv_defs.RECOMMEND_REMOTE_FLUSH_HYPERCALL
#: NT .data: HvlpHypercallPages, the input and output pages (VA, GPA each), set in phase 1.
HYPERCALL_PAGES = "HvlpHypercallPages"
#: The first TokenId ExpLuid hands out ([model], see NtKernel.__init__).
FIRST_LUID = 0x1001

#: Size of the model's per-processor block (KPCR stand-in): 64 VPs fit one page.
PRCB_SIZE = KPCR.SIZE

SyscallHandler = Callable[["NtKernel", Cpu, list[int]], int]


class AddressConflict(Exception):
    """A fixed-base allocation overlaps a VAD (STATUS_CONFLICTING_ADDRESSES to the caller;
    never escapes NT)."""


@dataclass
class KernelVariable:
    """A named kernel global: a VA in NT's data pages (its bytes live in guest RAM)."""

    name: str
    va: int
    gpa: int


@dataclass
class UserRun:
    """How a user-mode run ended."""

    returned: Any = None
    terminated: ThreadTerminated | None = None


@dataclass
class NtKernel:
    """NT's image as its code finds it behind GS: a symbol table (addresses, routine VAs,
    layouts, constants) and the typed bookkeeping listed below; every value NT decides from is
    in VTL0 RAM.  Built by the loader (``loader``: the host-side KernelSpace, seen through
    :class:`~vbsim.guest.image_builder.ImageBuilder`, used during construction and not kept),
    which also hands it the memory map's free region ``[first_free, limit)`` for its PFN
    database."""

    #: The build NT was compiled for (NtBuildNumber: which secure-call numbers its Vsl stubs
    #: use, vbs-internals "Numbers are build-specific"); a constant of the image.
    build: str
    vbs: bool
    loader: InitVar[ImageBuilder]
    #: KeNumberProcessors (the loader's count of processors in the firmware's tables).
    processor_count: int = 1
    #: The memory map's region NT manages (PFNs ``[first_free, limit)``), set by the loader.
    first_free: InitVar[int] = 0
    limit: InitVar[int] = 0
    space: KernelMap = field(init=False)
    syscall_names: dict[int, str] = field(default_factory=dict)
    variables: dict[str, KernelVariable] = field(default_factory=dict)
    #: Files of the model's system disk NT reads and writes: the driver store, the application
    #: store, trustlet images, and what NT wrote (dumps).  A disk is not RAM: these are the
    #: storage device's contents as the file system presents them, not kernel state.
    driver_store: dict[str, bytes] = field(default_factory=dict)
    app_store: dict[str, bytes] = field(default_factory=dict)
    trustlet_store: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    #: That NT's KDP client is set up (nt.kdp); the sections it protects are images on
    #: PsLoadedModuleList, read from RAM.
    kdp_client: NtKdp | None = None
    #: lsass's credential record (pid, VA, length): the symbol host tools and D2 look up.
    lsass: LsassInfo | None = None
    #: Trustlets wininit started at boot: image name → PID (boot report and host tools).
    started_trustlets: dict[str, int] = field(default_factory=dict)
    vsl: Vsl | None = None
    #: Trustlets to start at boot: image name → (trustlet ID, image bytes) (set by the loader).
    boot_trustlets: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    idt: tuple[int, int] = (0, 0)
    #: HvlpHypercallPages: NT's hypercall input/output pages (VA, GPA each), set in phase 1.
    #: Symbols CI and the loader resolve at boot (addresses, as in a symbol table).
    ci_options_va: int = 0
    ci_validate_image_header: int = 0
    syscall_entry: int = 0
    ap_entry: int = 0
    #: ``nt!MmPfnDatabase`` and ``nt!MmFreePageListHead`` (VAs): NT's physical memory.
    pfn_database: int = 0
    free_list_head: int = 0
    #: The hypercall page's GPA (HvlpHypercallCodeVa's frame), reserved by the loader.
    hypercall_code_gpa: int = 0
    _loader: ImageBuilder | None = field(default=None, init=False, repr=False)

    def __post_init__(self, loader: ImageBuilder, first_free: int, limit: int) -> None:
        self.space = loader.kernel_map
        self._loader = loader  # construction only: dropped at the end of __post_init__
        # One processor block (KPCR) per VP; GS base designates it (the loader places the image
        # behind each, see Cpu.kernel()).
        self.prcb_va, _ = loader.alloc_data(1)
        for index in range(self.processor_count):
            loader.place_image(0, self.processor_block(index), self)
        self.idt = loader.build_idt(
            {
                int(Vector.PF): "nt.KiPageFault",
                int(Vector.GP): "nt.KiGeneralProtection",
                int(Vector.UD): "nt.KiInvalidOpcode",
                IPI_VECTOR: "nt.KiIpiInterrupt",
            },
            default="nt.KiUnexpectedTrap",
        )
        self.syscall_entry = loader.install("nt.KiSystemCall64")
        self.ap_entry = loader.install("nt.KiSystemStartupAp")
        contexts = []
        for index in range(self.processor_count):
            state = loader.initial_state(self.ap_entry)
            state.gs_base = self.processor_block(index)
            contexts.append(encode_context(state))
        self.ap_contexts: tuple[bytes, ...] = tuple(contexts)
        for name in (
            "nt.KiPageFault",
            "nt.KiGeneralProtection",
            "nt.KiInvalidOpcode",
            "nt.KiIpiInterrupt",
        ):
            loader.install(name)
        self.data_va, self.data_gpa = loader.alloc_data(4)
        self._data_next = self.data_va
        # PsActiveProcessHead: an empty LIST_ENTRY points at itself (winload zeroes .data;
        # NT's phase 0 initialises the head before the first process exists).
        head = self.variable("PsActiveProcessHead", LIST_ENTRY.SIZE)
        loader.write_u64(head.va, head.va)
        loader.write_u64(head.va + 8, head.va)
        self.process_head = head.va
        # The VAD lookaside list's head (vbsim.nt.vad): empty until the first allocation.
        self.vad_lookaside = self.variable("MiVadLookaside", 8).va
        # ExpLuid: the next locally unique identifier (ExAllocateLocallyUniqueId; a TOKEN's
        # TokenId is one, Windows Internals 7 Part 1 ch. 7 "Tokens").  [model] The first value
        # is the model's (Windows starts after the well-known LUIDs such as SYSTEM_LUID 0x3E7).
        self.luid_counter = self.variable("ExpLuid").va
        loader.write_u64(self.luid_counter, FIRST_LUID)
        # PspCidTable: a pointer in .data to the client-ID handle table (vbsim.nt.cid), whose
        # handle values are the PIDs (System's is the first: 4).  The table header is in a
        # page of its own, zeroed: no leaf pages yet, an empty free list.
        self.cid_table_pointer = self.variable("PspCidTable").va
        table_va, _ = loader.alloc_data(1)
        loader.write_u64(self.cid_table_pointer, table_va)
        # KeBootTime: the CMOS clock's time at phase 0 (FILETIME), what NT's code integrity
        # judges certificate validity at (vbsim.guest.rtc: the model's clock does not tick).
        self.variable(BOOT_TIME)
        # What phase 0 learns of the hypervisor (CPUID), and phase 1's hypercall pages.
        self.variable(ENLIGHTENMENTS)
        self.variable(HYPERCALL_PAGES, 32)
        # KiServiceTable: one routine VA per system-service number, in NT's .data; the
        # dispatcher indexes it with RAX at every system call (Windows x64 packs 32-bit offsets;
        # the model stores whole VAs: a compaction, same decision).
        self.service_table = self.variable("KiServiceTable", SERVICE_LIMIT * 8).va
        notify.install(self)
        # The SYSTEM hive's page (winload fills it from disk: vbsim.nt.registry.load_hive).
        self.hive_va, self.hive_gpa = loader.alloc_data(1)
        if self.vbs:  # the hypercall code page the hypervisor fills (HV_X64_MSR_HYPERCALL)
            _, self.hypercall_code_gpa = loader.alloc_data(1)
        from vbsim.nt import drivers, syscalls

        syscalls.register_all(self)
        drivers.register_nt(self)
        if self.vbs:
            from vbsim.nt.vsl import Vsl

            self.vsl = Vsl(self)
        from vbsim.nt import dump, secure_process

        secure_process.register(self)
        dump.register(self)
        from vbsim.nt import apps

        apps.install(self)
        from vbsim.nt import kdp

        self.system_va_cursor(kdp.SECTION_CURSOR, kdp.SECTION_BASE)
        if self.vbs:
            kdp.install(self)  # NT's side of KDP: the normal calls the SK makes for it
        # MmPfnDatabase over all of RAM, then the memory map: NT's own frames (everything the
        # loader built it from, this database included) are active, the rest below the free
        # region is not NT's, the region is free.
        pages = mm.database_pages(loader.ram_pages)
        database_va, database_gpa = loader.alloc_data(pages, contiguous=True)
        # NT reaches it through the direct map (one contiguous run: tools find entry N at
        # database GPA + 8N too).
        self.pfn_database = DIRECT_MAP + database_gpa
        self.free_list_head = self.variable("MmFreePageListHead", MMPFNLIST.SIZE).va
        from vbsim.nt import kcfg

        kcfg.install(self)  # last routine placed: the image's GuardCFFunctionTable, the bitmap
        limit = limit or loader.ram_pages
        first_free = first_free or limit
        mm.initialize(
            loader, database_va, self.free_list_head, first_free, limit, loader.built_frames
        )
        self._loader = None  # the running kernel keeps no loader

    # -- loader side ---------------------------------------------------------------------------
    def _building(self) -> ImageBuilder:
        if self._loader is None:
            raise RuntimeError("loader-time NT code called after boot")
        return self._loader

    def processor_block(self, index: int) -> int:
        """The VA of VP ``index``'s processor block (the model's KPCR: 64 bytes each)."""
        return self.prcb_va + index * PRCB_SIZE

    def system_va_cursor(self, name: str, start: int) -> None:
        """Loader time: a cursor variable in NT's .data, where the next range of system VA of
        one kind goes (``start`` first).  [model] Windows hands out system VA from
        MiSystemVaBitmap-style bitmaps (MiObtainSystemVa); the model keeps one bump pointer per
        kind, in RAM like the bitmaps: a kernel write moves the next mapping."""
        self.loader_write_u64(self.variable(name).va, start)

    def take_system_va(self, vp: Cpu, name: str, size: int) -> int:
        """The next ``size`` bytes of system VA from cursor ``name`` (read and advanced now)."""
        cursor = self.variables[name].va
        base = vp.read_u64(cursor)
        vp.write_u64(cursor, base + size)
        return base

    def install_routine(self, name: str) -> int:
        """Loader time: a code thunk for routine ``name`` in NT's code pages; its VA."""
        return self._building().install(name)

    def alloc_data_pages(self, pages: int, contiguous: bool = False) -> tuple[int, int]:
        """Loader time: ``pages`` fresh RW/NX pages of NT's image data; (first VA, first GPA)."""
        return self._building().alloc_data(pages, contiguous=contiguous)

    def variable(self, name: str, size: int = 8) -> KernelVariable:
        """Allocate a kernel global in NT's data pages (loader-time)."""
        if name in self.variables:
            return self.variables[name]
        va = self._data_next
        self._data_next += max(8, -(-size // 8) * 8)
        # the data pages need not be physically contiguous: the GPA of this VA's page
        variable = KernelVariable(name, va, self._building().lookup_gpa(va))
        self.variables[name] = variable
        return variable

    def loader_write_u64(self, va: int, value: int) -> None:
        """winload initialising NT's image data (before any processor runs NT)."""
        self._building().write_u64(va, value)

    def register_service(self, name: str, number: int, handler: SyscallHandler) -> None:
        """Link a system service into KiServiceTable (loader time): its code thunk in NT's
        code pages, its VA in the table's slot ``number``."""
        if not 0 <= number < SERVICE_LIMIT:
            raise ValueError(f"service number {number:#x} beyond KiServiceLimit")
        routine = f"nt.{name}"
        va = self.install_routine(routine)  # loader time only: raises once NT runs
        code.register(routine, _service_routine(handler))
        self.loader_write_u64(self.service_table + number * 8, va)
        self.syscall_names[number] = name

    def service_routine(self, vp: Cpu, number: int) -> int:
        """KiServiceTable[number] as RAM holds it now (0: no such service)."""
        if not 0 <= number < SERVICE_LIMIT:
            return 0
        return vp.read_u64(self.service_table + number * 8)

    def ap_context(self, index: int) -> bytes:
        """HV_INITIAL_VP_CONTEXT for AP ``index`` (KiSystemStartupAp, NT's CR3, GS = its block):
        constant bytes the loader encoded from NT's image (no processor state)."""
        return self.ap_contexts[index]

    # -- phases (vbs-internals §1.1 rows 13-15) ------------------------------------------------
    def phase0(self, vp: Cpu) -> None:
        self._discover_hypervisor(vp)
        vp.write_u64(self.variables[BOOT_TIME].va, rtc.read_filetime(vp))  # HalQueryRealTimeClock
        vp.lidt(*self.idt)
        vp.wrmsr(Msr.STAR, STAR_VALUE)
        vp.wrmsr(Msr.LSTAR, self.syscall_entry)
        vp.wrmsr(Msr.SFMASK, SFMASK_VALUE)
        vp.wrmsr(Msr.EFER, vp.rdmsr(Msr.EFER) | int(Efer.SCE))
        self._event(vp, "nt-phase0", "done")
        from vbsim.nt import kcfg

        kcfg.initialize(self, vp)  # MiInitializeKernelCfg: before PHASE3_INIT protects it
        if self.vsl is not None:
            self.vsl.phase3_init(vp)
        # KiInitializeKernel's end: the boot processor takes interrupts from here on (its IDT
        # is loaded; WRK ``ke/amd64/kiinit.c`` enables them before phase 1).
        vp.sti()

    def phase1(self, vp: Cpu) -> None:
        if self.vsl is not None:
            self.vsl.phase4_init(vp)
        if self._enlightenments(vp) & HV_PRESENT:  # hypercall parameter pages for NT
            in_va, in_gpa = self.alloc_kernel_page(vp)
            out_va, out_gpa = self.alloc_kernel_page(vp)
            pages = self.variables[HYPERCALL_PAGES].va
            for offset, value in enumerate((in_va, in_gpa, out_va, out_gpa)):
                vp.write_u64(pages + offset * 8, value)
        notify.initialize(self, vp)
        from vbsim.nt import drivers

        drivers.initialize_ci(self, vp)  # CiInitialize: SeCiCallbacks, CiPolicy under KDP
        drivers.load_boot_drivers(self, vp)  # the EDR registers its callback before lsass
        started = 1
        if self.vsl is not None:  # without VBS the platform started the APs (boot.chain)
            for index in range(1, self.processor_count):
                started += self.start_processor(vp, index)
        self.create_system_process(vp)
        self._event(
            vp, "nt-phase1", "done", processors=started if self.vsl else self.processor_count
        )

    def start_processor(self, vp: Cpu, index: int) -> bool:
        """With VBS only the SK can start a VP (START_PROCESSOR + HvCallStartVirtualProcessor,
        vbs-internals §1.1): NT builds the AP's initial context in a page and asks."""
        assert self.vsl is not None
        page_va, page_gpa = self.alloc_kernel_page(vp)
        vp.write(page_va, self.ap_context(index))
        status = self.vsl.start_processor(vp, index, page_gpa >> PAGE_SHIFT)
        self._event(vp, "start-processor", NtStatus.name_of(status), ap=index)
        return status == NtStatus.SUCCESS

    def ap_init(self, vp: Cpu) -> None:
        vp.actor = "nt"
        vp.lidt(*self.idt)
        vp.wrmsr(Msr.STAR, STAR_VALUE)
        vp.wrmsr(Msr.LSTAR, self.syscall_entry)
        vp.wrmsr(Msr.SFMASK, SFMASK_VALUE)
        vp.wrmsr(Msr.EFER, vp.rdmsr(Msr.EFER) | int(Efer.SCE))

    def _event(self, vp: Cpu, mechanism: str, outcome: str, **detail: Any) -> None:
        if vp.tracing:
            detail = {k: v for k, v in detail.items() if v is not None}
            vp.emit(
                "boot" if mechanism.startswith("nt-phase") else "nt", mechanism, outcome, **detail
            )

    # -- memory ----------------------------------------------------------------------------------
    def phys(self, vp: Cpu) -> PhysAccess:
        """Physical access as NT has it at run time: its processor, the direct map, and frames
        from its own PFN database (page-table pages are pool like any other)."""
        return runtime_phys(vp, lambda: self.alloc_page(vp))

    def alloc_page(self, vp: Cpu) -> int:
        """A zeroed physical page NT now owns, from its PFN database (:mod:`vbsim.nt.pfn`);
        its PFN.  Raises :class:`~vbsim.nt.pfn.NoPages` when physical memory is exhausted."""
        return mm.allocate(vp, self.pfn_database, self.free_list_head)

    def free_page(self, vp: Cpu, frame: int) -> bool:
        """Back to NT's free list (False: not a page NT owns, refused)."""
        return mm.free(vp, self.pfn_database, self.free_list_head, frame)

    def alloc_kernel_page(self, vp: Cpu) -> tuple[int, int]:
        """A zeroed nonpaged-pool page reached through the direct map (VA, GPA): what a driver
        (or a K0 payload) gets from ExAllocatePool."""
        frame = self.alloc_page(vp)
        return DIRECT_MAP + (frame << PAGE_SHIFT), frame << PAGE_SHIFT

    def pool_page(self, vp: Cpu) -> int:
        """:meth:`alloc_kernel_page`'s VA alone."""
        return self.alloc_kernel_page(vp)[0]

    def alloc_kernel_pages(self, vp: Cpu, count: int) -> list[tuple[int, int]] | None:
        """``count`` pool pages (VA, GPA), or None and nothing allocated when physical memory
        runs out part-way (ExAllocatePool returning NULL: the caller fails the request with
        STATUS_NO_MEMORY, as NT's do, rather than the model raising)."""
        pages: list[tuple[int, int]] = []
        try:
            for _ in range(count):
                pages.append(self.alloc_kernel_page(vp))
        except NoPages:
            for _, gpa in pages:
                self.free_page(vp, gpa >> PAGE_SHIFT)
            return None
        return pages

    def free_kernel_page(self, vp: Cpu, va: int) -> bool:
        """ExFreePool of a page :meth:`alloc_kernel_page` returned."""
        return self.free_page(vp, (va - DIRECT_MAP) >> PAGE_SHIFT)

    def flush_all_processors(self, vp: Cpu) -> None:
        """KeFlushTb(all processors): where the hypervisor recommends it (CPUID 0x40000004
        UseHypercallForRemoteFlush, as phase 0 recorded it in .data),
        HvCallFlushVirtualAddressSpace with HV_FLUSH_ALL_PROCESSORS |
        HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES (TLFS; what Windows' Hvl enlightenment does);
        otherwise a CR3 reload here and an IPI to every other processor through the x2APIC ICR
        (shorthand "all excluding self"), whose handler reloads CR3."""
        from vbsim.guest import hvcall
        from vbsim.hv import defs

        if self._enlightenments(vp) & USE_HYPERCALL_FOR_REMOTE_FLUSH:
            at = self.variables[HYPERCALL_PAGES].va
            in_va, in_gpa, out_va, out_gpa = (vp.read_u64(at + i * 8) for i in range(4))
            flags = defs.HvFlushFlags.ALL_PROCESSORS | defs.HvFlushFlags.ALL_VIRTUAL_ADDRESS_SPACES
            data = defs.FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT.pack(0, int(flags), 0)
            pages = hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa)
            hvcall.hypercall(vp, pages, defs.HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, data)
            return
        vp.mov_to_cr(3, vp.read_cr(3))
        if self.processor_count > 1:
            vp.wrmsr(X2APIC_ICR, ICR_ALL_EXCLUDING_SELF | IPI_VECTOR)

    def address_space(self, vp: Cpu, process: Process) -> PageTables:
        """``process``'s page tables as NT walks and edits them now: through ``vp`` and the
        direct map, from the root its EPROCESS holds now (a reference keeps no editor)."""
        # The root is KPROCESS.DirectoryTableBase as RAM holds it now (what KiSwapProcess and
        # KeStackAttachProcess load into CR3).
        root = read_field(vp, process.eprocess, EPROCESS.DirectoryTableBase) & PTE_ADDR_MASK
        return PageTables(self.phys(vp), root, [])

    def probe_user(self, vp: Cpu, va: int, length: int, write: bool) -> bool:
        """ProbeForRead/ProbeForWrite: every page of ``[va, va+length)`` is a present user page
        of the current address space (writable, for a write).  A bad pointer is the caller's
        error (STATUS_ACCESS_VIOLATION), never a kernel-mode fault."""
        process = self.process_of(vp)
        if process is None:
            return False
        return self.address_space(vp, process).user_range_ok(va, length, write)

    def copy_from_user(self, vp: Cpu, va: int, length: int) -> bytes | None:
        """Probe, then copy user memory (STAC/CLAC around the access, as SMAP requires)."""
        if not self.probe_user(vp, va, length, write=False):
            return None
        vp.stac()
        try:
            return vp.read(va, length)
        finally:
            vp.clac()

    def copy_to_user(self, vp: Cpu, va: int, data: bytes) -> bool:
        if not self.probe_user(vp, va, len(data), write=True):
            return False
        vp.stac()
        try:
            vp.write(va, data)
        finally:
            vp.clac()
        return True

    # -- processes -------------------------------------------------------------------------------
    def create_process(
        self,
        vp: Cpu,
        name: str,
        token: Token | None = None,
        protection: Protection | int = Protection.NONE,
        parent: Process | None = None,
    ) -> Process:
        """NtCreateUserProcess's kernel half: an EPROCESS and a primary TOKEN in pool pages,
        linked into PsActiveProcessHead's list.  The token is built from ``token`` or, for a
        child, copied from ``parent``'s (SeSubProcessToken)."""
        root = new_address_space(self.phys(vp), self.space.root).root
        eprocess, _ = self.alloc_kernel_page(vp)
        token_va, _ = self.alloc_kernel_page(vp)
        token_id = self._take(vp, self.luid_counter, 1)
        if parent is not None:
            ps.copy_token(vp, ps.token_of(vp, parent.eprocess), token_va, token_id)
        else:
            ps.build_token(vp, token_va, token_id, token or Token("user"))
        # PspAllocateProcess: the PID is the handle ExCreateHandle(PspCidTable) returns.
        try:
            pid = cid.create(vp, self.cid_table(vp), eprocess, lambda: self.pool_page(vp))
        except cid.TableFull:
            raise NoPages from None  # STATUS_INSUFFICIENT_RESOURCES: no client ID left
        ps.build_eprocess(vp, eprocess, pid, name, token_va, int(protection), root)
        ps.insert_tail(vp, self.process_head, eprocess + EPROCESS.ActiveProcessLinks.offset)
        self._event(vp, "create-process", "created", pid=pid, name=name)
        notify.call_process_notify(self, vp, parent.pid if parent else 0, pid, create=True)
        return ps.process_at(vp, eprocess)

    def cid_table(self, vp: Cpu) -> int:
        """The HANDLE_TABLE PspCidTable points at, as .data holds it now."""
        return vp.read_u64(self.cid_table_pointer)

    def _discover_hypervisor(self, vp: Cpu) -> None:
        """Phase 0: CPUID.01h:ECX bit 31, then the Hv#1 interface leaf, then the hypervisor's
        recommendations (leaf 0x40000004 EAX, HV_X64_ENLIGHTENMENT_INFORMATION: Geoff Chappell's
        study; TLFS feature-discovery.md), kept in .data for the code that chooses a hypercall
        over an instruction."""
        vp.cpuid(1)
        found = 0
        if vp.rcx & hv_defs.CPUID_HYPERVISOR_PRESENT:
            vp.cpuid(hv_defs.CPUID_INTERFACE)
            if vp.rax == hv_defs.CPUID_HV1_SIGNATURE:
                vp.cpuid(hv_defs.CPUID_RECOMMENDATIONS)
                found = HV_PRESENT | (vp.rax & 0xFFFF_FFFF)
        vp.write_u64(self.variables[ENLIGHTENMENTS].va, found)

    def _enlightenments(self, vp: Cpu) -> int:
        return vp.read_u64(self.variables[ENLIGHTENMENTS].va)

    @staticmethod
    def _take(vp: Cpu, counter: int, step: int) -> int:
        """The counter's value, advanced by ``step`` in RAM (an interlocked add on Windows)."""
        value = vp.read_u64(counter)
        vp.write_u64(counter, (value + step) & 0xFFFF_FFFF_FFFF_FFFF)
        return value

    def lookup_process(self, vp: Cpu, pid: int) -> Process | None:
        """PsLookupProcessByProcessId through PspCidTable (:func:`~vbsim.nt.process.find_process`),
        at NT's processor now."""
        return ps.find_process(vp, self.cid_table_pointer, pid)

    def create_system_process(self, vp: Cpu) -> None:
        system = self.create_process(
            vp,
            "System",
            Token("SYSTEM", admin=True, debug_privilege=True, load_driver=True, tcb=True),
            Protection.SYSTEM,
        )
        write_field(vp, system.eprocess, EPROCESS.DirectoryTableBase, self.space.root)
        if self.boot_trustlets and self.vsl is not None:
            # wininit starts the enabled trustlets before lsass needs them (§1.1 row 16).
            from vbsim.nt.secure_process import start_boot_trustlets

            start_boot_trustlets(self, vp, self.boot_trustlets)
        from vbsim.nt import lsass

        lsass.start(self, vp)

    def allocate(
        self,
        vp: Cpu,
        process: Process,
        size: int,
        writable: bool = True,
        executable: bool = False,
        base: int | None = None,
        secured: bool = False,
    ) -> Region:
        """NtAllocateVirtualMemory(MEM_RESERVE | MEM_COMMIT)'s kernel half: a VAD for the range
        in ``process``'s tree (at ``base``, or the first free range the tree leaves), then the
        pages, mapped at once (the model has no demand paging).  ``secured``: the VAD is
        NoChange, as a SEC_NO_CHANGE view or MmSecureVirtualMemoryEx(MM_SECURE_NO_CHANGE) makes
        it.  Raises :class:`~vbsim.nt.pfn.NoPages` (no memory or address space) or
        :class:`AddressConflict` (``base`` overlaps another VAD)."""
        pages = max(1, -(-size // PAGE_SIZE))
        eprocess = process.eprocess
        if base is None:
            first = vad.find_empty(vp, eprocess, pages)
            if first < 0:
                raise NoPages  # no address space left: STATUS_NO_MEMORY as on Windows
        else:
            first = base >> PAGE_SHIFT
            if vad.conflicting(vp, eprocess, first, first + pages - 1):
                raise AddressConflict(base)
        start = first << PAGE_SHIFT
        node = vad.allocate_node(vp, self.vad_lookaside, lambda: self.alloc_kernel_page(vp)[0])
        protection = vad.mm_protection(writable, executable)
        vad.initialize_node(vp, node, first, pages, protection, secured)
        region = Region(start, pages * PAGE_SIZE, writable, executable, vad=node)
        flags = int(Pte.US) | (int(Pte.RW) if writable else 0) | (0 if executable else int(Pte.NX))
        tables = self.address_space(vp, process)
        for i in range(pages):
            try:
                pfn = self.alloc_page(vp)
            except NoPages:
                for index, taken in enumerate(region.pfns):  # give back what this call took
                    tables.unmap(start + index * PAGE_SIZE)
                    self.free_page(vp, taken)
                vad.free_node(vp, self.vad_lookaside, node)
                raise
            tables.map(start + i * PAGE_SIZE, pfn << PAGE_SHIFT, flags)
            region.pfns.append(pfn)
        if not vad.insert(vp, eprocess, node):  # a corrupted tree: undo, as for no memory
            for index, taken in enumerate(region.pfns):
                tables.unmap(start + index * PAGE_SIZE)
                self.free_page(vp, taken)
            vad.free_node(vp, self.vad_lookaside, node)
            raise AddressConflict(start)
        return region

    def map_code(self, vp: Cpu, process: Process, routines: list[str]) -> dict[str, int]:
        """Map user code: thunks for ``routines`` in read-only, executable user pages."""
        slots = PAGE_SIZE // code.THUNK_SIZE
        placed: dict[str, int] = {}
        for first in range(0, len(routines), slots):
            chunk = routines[first : first + slots]
            region = self.allocate(vp, process, PAGE_SIZE, writable=True, executable=False)
            page_va = DIRECT_MAP + (region.pfns[0] << PAGE_SHIFT)
            for slot, name in enumerate(chunk):
                vp.write(page_va + slot * code.THUNK_SIZE, code.encode_thunk(name))
                placed[name] = region.base + slot * code.THUNK_SIZE
            # Now make the page read-only and executable (W^X for user code as well).
            pte = self.address_space(vp, process).pte_gpa(region.base)
            assert pte is not None
            phys = self.phys(vp)
            phys.write_u64(pte, (region.pfns[0] << PAGE_SHIFT) | int(Pte.P | Pte.US))
            vp.invlpg(region.base)
            vad.set_protection(vp, region.vad, MmProtect.EXECUTE_READ)
            region.writable, region.executable = False, True
        return placed

    def run_user(self, vp: Cpu, process: Process, entry: int, *args: Any) -> UserRun:
        """Schedule ``process``'s thread on ``vp``: CR3 switch, then into user mode and back
        through the gates (``sysret`` in, ``syscall`` or an exception gate back: Cpu.user_call),
        never by setting CPL."""
        outcome = UserRun()
        with self.switched_to(vp, process):
            try:
                outcome.returned = vp.user_call(entry, *args)
            except ThreadTerminated as stop:
                outcome.terminated = stop
        return outcome

    @contextmanager
    def switched_to(self, vp: Cpu, process: Process) -> Iterator[None]:
        """KiSwapProcess for the span of a thread of ``process``: CR3 from its
        KPROCESS.DirectoryTableBase and the processor block's CurrentProcess, both as RAM holds
        them now; the previous ones are put back after (if the processor is still NT's)."""
        saved_cr3 = vp.read_cr(3)
        block = self.processor_block(vp.index)
        saved_current = read_field(vp, block, KPCR.CurrentProcess)
        vp.mov_to_cr(3, read_field(vp, process.eprocess, EPROCESS.DirectoryTableBase))
        write_field(vp, block, KPCR.CurrentProcess, process.eprocess)
        try:
            yield
        finally:
            if vp.vtl == 0:
                vp.mov_to_cr(3, saved_cr3)
                write_field(vp, block, KPCR.CurrentProcess, saved_current)

    def process_of(self, vp: Cpu) -> Process | None:
        """PsGetCurrentProcess: the EPROCESS this VP's processor block names (GS-relative, read
        now), and NT's handle on it."""
        eprocess = read_field(vp, self.processor_block(vp.index), KPCR.CurrentProcess)
        return ps.process_at(vp, eprocess) if eprocess else None


def _nt(vp: Cpu | Cpu) -> NtKernel:
    nt = vp.kernel()
    if not isinstance(nt, NtKernel):
        vp.wrong_context("NT code without NT's GS")
    return nt


def bugcheck(vp: Cpu, code_: BugCheck, *params: int) -> NoReturn:
    """KeBugCheckEx: trace it, report it to the hypervisor (vbsim.guest.crash), stop."""
    if vp.cpl != 0:  # KeBugCheckEx's privileged instructions fault outside ring 0
        vp.wrong_context("KeBugCheckEx at CPL3")
    if vp.tracing:
        vp.emit("bugcheck", "nt", code_.name, code=int(code_), params=list(params))
    crash.notify_hypervisor(vp, int(code_), *params)
    crash.stop_processor(vp)
    raise Bugcheck(int(code_), code_.name, 0, *params)


def _user_fault(vp: Cpu, vector: int, error_code: int, reason: str) -> None:
    nt = _nt(vp)
    process = nt.process_of(vp)
    if process is not None:
        ps.mark_exited(vp, process.eprocess, int(NtStatus.ACCESS_VIOLATION))
    if vp.tracing:
        vp.emit(
            "nt",
            "exception-dispatch",
            "thread-terminated",
            vector=vector,
            error_code=error_code,
            pid=process.pid if process else None,
            reason=reason,
        )
    raise ThreadTerminated(reason, vector, error_code)


@guest_code("nt.KiPageFault")
def _page_fault(vp: Cpu, vector: int, error_code: int) -> None:
    if vp.interrupted_cpl == 3:
        _user_fault(vp, vector, error_code, f"access violation at 0x{vp.read_cr(2):x}")
    bugcheck(vp, BugCheck.PAGE_FAULT_IN_NONPAGED_AREA, vp.read_cr(2), error_code)


@guest_code("nt.KiGeneralProtection")
def _general_protection(vp: Cpu, vector: int, error_code: int) -> None:
    if vp.interrupted_cpl == 3:
        _user_fault(vp, vector, error_code, "general protection fault")
    bugcheck(vp, BugCheck.KMODE_EXCEPTION_NOT_HANDLED, 0xC000_0096, vp.rip)


@guest_code("nt.KiInvalidOpcode")
def _invalid_opcode(vp: Cpu, vector: int, error_code: int) -> None:
    if vp.interrupted_cpl == 3:
        _user_fault(vp, vector, error_code, "illegal instruction")
    bugcheck(vp, BugCheck.KMODE_EXCEPTION_NOT_HANDLED, 0xC000_001D, vp.rip)


@guest_code("nt.KiIpiInterrupt")
def _ipi_interrupt(vp: Cpu, vector: int, error_code: int) -> None:
    """The TLB-flush IPI: reload CR3 (drops this processor's non-global translations)."""
    vp.mov_to_cr(3, vp.read_cr(3))


@guest_code("nt.KiUnexpectedTrap")
def _unexpected(vp: Cpu, vector: int, error_code: int) -> None:
    if vp.interrupted_cpl == 3 and vector < 32:
        _user_fault(vp, vector, error_code, f"exception {vector}")
    if vector >= 32:
        return  # a spurious interrupt: dismiss it
    bugcheck(vp, BugCheck.UNEXPECTED_KERNEL_MODE_TRAP, vector)


_SERVICE_ROUTINES: dict[SyscallHandler, Callable[..., int]] = {}


def _service_routine(handler: SyscallHandler) -> Callable[..., int]:
    """The code of one system service: the handler, given NT's symbols and the four arguments."""
    routine = _SERVICE_ROUTINES.get(handler)
    if routine is None:

        def routine(vp: Cpu, a0: int, a1: int, a2: int, a3: int) -> int:
            return handler(_nt(vp), vp, [a0, a1, a2, a3])

        _SERVICE_ROUTINES[handler] = routine
    return routine


@guest_code("nt.KiSystemCall64")
def _system_call(vp: Cpu) -> None:
    """The LSTAR entry: KiServiceTable[RAX] read from RAM and called with R10, RDX, R8, R9
    (x64 syscall ABI)."""
    nt = _nt(vp)
    number = vp.rax
    routine = vp.read_u64(nt.service_table + number * 8) if number < SERVICE_LIMIT else 0
    result = vp.call(routine, vp.r10, vp.rdx, vp.r8, vp.r9) if routine else None
    status = result if isinstance(result, int) else int(NtStatus.INVALID_SYSTEM_SERVICE)
    if vp.tracing:
        vp.emit(
            "syscall",
            "nt-dispatch",
            NtStatus.name_of(status),
            number=number,
            service=nt.syscall_names.get(number, "?"),
        )
    vp.rax = status
    vp.sysret()


@guest_code("nt.KiSystemStartupAp")
def _ap_startup(vp: Cpu) -> None:
    """An AP's first VTL0 instruction.  Its context (built by NT, relayed by the SK) set GS base
    to the AP's processor block, through which NT's code finds its kernel."""
    nt = vp.kernel()
    if not isinstance(nt, NtKernel):
        vp.wrong_context("NT's AP start-up without NT loaded")
    nt.ap_init(vp)
    # KiIdleLoop: with nothing to run, the processor enables interrupts and halts until one
    # arrives (Windows Internals 7th ed. part 1 ch. 4, "Idle threads": HalProcessorIdle).
    vp.sti()
    vp.hlt()
