"""The Secure Kernel's core: its address space, entry, trust timeline and secure-call dispatch.

vbs-internals §1.1 rows 11-15 and §2.2: the SK is entered through VTL calls (entry reason
VtlCall: a secure call from NT) and interrupts (SINT0: secure intercepts).  It trusts VTL0 until
PHASE3_INIT and treats every VTL0 input as hostile from PHASE4_INIT on.  An unknown secure-call
number bugchecks.  Services are looked up in the build's table (``sscn``) and dispatched from a
table of handlers that the service modules register.

A service handler is ``(sk, vp, args) -> Reply``, or a generator that ``yield``s
:class:`NormalCall` requests: the SK then returns to VTL0 with a normal-call request and resumes
the generator when NT VTL-calls back with the reply (vbs-internals §2.5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from vbsim.guest import crash, hvcall, rtc
from vbsim.guest.address_space import DIRECT_MAP, KernelMap
from vbsim.hv import defs
from vbsim.hv.calls.context import encode_context
from vbsim.hv.defs import HvMsr, HvRegisterName, HvVtlEntryReason
from vbsim.hw import code
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import Bugcheck, ThreadTerminated
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Msr, Rflags
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk import callargs
from vbsim.sk import layouts as L
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.layouts import Config, Dispatch, Field, State, read_field, write_field
from vbsim.sk.sscn import Service, ServiceTable

if TYPE_CHECKING:
    from vbsim.guest.image_builder import ImageBuilder
    from vbsim.image import RevocationPolicy
    from vbsim.sk.hvpt import HvptState
    from vbsim.sk.ium.process import TrustletSymbols
    from vbsim.sk.services.allocation import AllocationState
    from vbsim.sk.services.hotpatch import HotPatchState
    from vbsim.sk.services.hvci import Hvci
    from vbsim.sk.services.kdp import KdpState

SINT0_VECTOR = 0x31
#: The SK reports itself as Windows NT 10.0 build 26100 from Microsoft (the old value had the
#: reserved vendor 0; TLFS "Reporting the Guest OS Identity", issue 11 item 7).
GUEST_OS_ID = defs.guest_os_id(10, 0, 26100)
#: First secure handle value (vbs-internals §2.3: handles around 0x1_4000_0000).
FIRST_HANDLE = L.HandleTable.FIRST_HANDLE


class Phase(Enum):
    """The SK's trust timeline; the value in memory is the code (``layouts.State.PHASE``)."""

    LOADED = "loaded"  # image in reserved memory, not entered yet
    PHASE1 = "phase1"  # initialised in VTL1; trusts VTL0
    PHASE3 = "phase3"  # own pages locked away; trusted register values recorded
    PHASE4 = "phase4"  # every VTL0 input is hostile

    @property
    def code(self) -> int:
        return _PHASE_CODES[self]

    @classmethod
    def of(cls, code: int) -> Phase:
        return _PHASES.get(code, Phase.LOADED)


_PHASE_CODES = MappingProxyType(
    {
        Phase.LOADED: L.Phase.LOADED,
        Phase.PHASE1: L.Phase.PHASE1,
        Phase.PHASE3: L.Phase.PHASE3,
        Phase.PHASE4: L.Phase.PHASE4,
    }
)
_PHASES = MappingProxyType({code: phase for phase, code in _PHASE_CODES.items()})
#: The routine an SSCN the build knows but the model does not implement dispatches to.
NOT_IMPLEMENTED_ROUTINE = "sk.SkpNotImplemented"


@dataclass(slots=True)
class Reply:
    status: int = NtStatus.SUCCESS
    outputs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class NormalCall:
    """A request from the SK to NT (vbs-internals §2.5); fields travel in the argument block."""

    number: int
    args: list[int] = field(default_factory=list)


ServiceResult = Reply | Generator[NormalCall, SecureCallArgs, Reply]
Handler = Callable[["SecureKernel", Cpu, SecureCallArgs], ServiceResult]


class PoolExhausted(Exception):
    """The SK's frame pool has no free frame (a modelled resource limit)."""


@dataclass(frozen=True)
class LoaderBlock:
    """What the boot loader hands the SK image while it builds it (vbs-internals §1.1 row 11):
    the boot configuration reduced to the ``Config`` block's values, the build, the processor
    count, the size of RAM, the loader's own store into the image's memory and its registration
    of the per-processor blocks behind GS, the boot entropy it gathered (``entropy``: the
    loader's random bytes, from which the SK's keys are written; Windows Internals 7th ed.,
    Part 2, ch. 12, "Boot entropy"), and the loader's side of the address space it builds the
    image in (``space``).  Host-side values, used only while loading; the SK drops the block
    before it runs (``vbsim.boot.sk_loader``) and keeps only the symbols (``KernelMap``)."""

    space: ImageBuilder
    config: tuple[tuple[Field, int], ...]
    build: str
    processors: int
    ram_pages: int
    write: Callable[[int, bytes], object]
    place_image: Callable[[int, int, object], None]
    entropy: Callable[[int], bytes]


@dataclass
class ProcessorPages:
    assist_gpa: int
    sim_gpa: int


def _table_va(kind: str) -> str:
    return f"sk.table.{kind}"


class SecureKernel:
    """The SK's symbol table: addresses, layouts and routine VAs.  Every value it decides from
    is in VTL1 memory (``vbsim.sk.layouts``); the constructor is the loader, which writes the
    image and copies the boot policy into the SK configuration block.  Neither the machine nor
    the policy is kept."""

    def __init__(
        self,
        loader: LoaderBlock,
        pool: tuple[int, int] | None = None,
        revocation: RevocationPolicy | None = None,
    ) -> None:
        #: The loader's view while the image is built (``LoaderBlock``); None once loaded.
        self.loader: LoaderBlock | None = loader
        #: What the SK keeps of its address space: symbols only (root, routines, code pages).
        self.space: KernelMap = loader.space.kernel_map
        space = loader.space
        #: RAM's size as the loader reported it: for sizing tables at load and for host-side
        #: views.  Run-time decisions read Config.RAM_PAGES from the SK's own page instead.
        self.loader_ram_pages = loader.ram_pages
        # The configuration block: the loader copies the boot policy (vbs-internals §1.1 row 11).
        self.config_va, self.config_gpa = space.alloc_data(1)
        for fld, value in loader.config:
            loader.write(self.config_gpa + fld.offset, value.to_bytes(fld.size, "little"))
        # The SkuSiPolicy floors: copied into an SK page, as the configuration is; SKCI reads
        # them from there at each admission (``sk.sipolicy``).  The value itself is not kept.
        from vbsim.sk import sipolicy

        self.revocation_va, self.revocation_gpa = space.alloc_data(1)
        loader.write(self.revocation_gpa, sipolicy.encode(revocation))
        # The trustlet allow-list and the IUM system-call filter (vbs-internals §3.2, §4.1).
        from vbsim.sk.ium import skci
        from vbsim.sk.ium import syscalls as ium_syscalls

        self.allow_va, self.allow_gpa = space.alloc_data(1)
        ids = sorted(skci.ALLOWED_IDS)
        write = loader.write
        write(self.allow_gpa + L.AllowList.COUNT.offset, len(ids).to_bytes(4, "little"))
        write(self.allow_gpa + L.AllowList.IDS, b"".join(i.to_bytes(4, "little") for i in ids))
        from vbsim.sk.ium.secure_syscalls import CAPABILITIES_BY_ID

        grants = sorted(CAPABILITIES_BY_ID.items())
        write(self.allow_gpa + L.AllowList.GRANT_COUNT.offset, len(grants).to_bytes(4, "little"))
        write(
            self.allow_gpa + L.AllowList.GRANT_ENTRIES,
            b"".join(t.to_bytes(4, "little") + c.to_bytes(4, "little") for t, c in grants),
        )
        self.filter_va, self.filter_gpa = space.alloc_data(1)
        write(self.filter_gpa, ium_syscalls.filter_bitmaps())
        #: Set by the service modules while the image is built (addresses only).
        self._hvci: Hvci | None = None
        self.allocation: AllocationState | None = None
        self.keys_va = 0
        #: The IUM service tables' data page (``sk.ium.syscalls``).
        self.ium_table_va = 0
        self.dump_key_va = 0
        #: kCFG's record page (``sk.services.kcfg``).
        self.kcfg_va = 0
        self.state_va, self.state_gpa = space.alloc_data(1)
        # The SK's physical memory: a range the boot loader reserved for it (``pool``), managed
        # from a free bitmap in an SK data page.  At run time the SK allocates only from it.
        pool_base, pool_count = pool if pool is not None else (0, 0)
        for fld, value in ((Config.POOL_BASE, pool_base), (Config.POOL_COUNT, pool_count)):
            loader.write(self.config_gpa + fld.offset, value.to_bytes(fld.size, "little"))
        #: The pool's size, for host-side views of its bitmap (the SK reads Config.POOL_COUNT).
        self.host_pool_count = pool_count
        self.pool_va, self.pool_gpa = space.alloc_data(1)
        # The SK's page-identity knowledge: one bit per GPA page it took from VTL0.
        own_pages = -(-loader.ram_pages // (8 * PAGE_SIZE))
        self.own_va, self.own_gpa = space.alloc_data(own_pages, contiguous=True)
        self.dispatch_va, self.dispatch_gpa = space.alloc_data(
            Dispatch.SIZE // PAGE_SIZE, contiguous=True
        )
        in_va, in_gpa = space.alloc_data()
        out_va, out_gpa = space.alloc_data()
        self.params = hvcall.ParamPages(in_va, in_gpa, out_va, out_gpa)
        _, self.hypercall_gpa = space.alloc_data()
        self.processors = []
        for _ in range(loader.processors):
            _, assist = space.alloc_data()
            _, sim = space.alloc_data()
            self.processors.append(ProcessorPages(assist, sim))
        self.prcb_va, self.prcb_gpa = space.alloc_data(1)
        for index in range(loader.processors):
            loader.place_image(1, self.processor_block(index), self)
        self.idt = space.build_idt({SINT0_VECTOR: "sk.sint0"}, default="sk.exception")
        self.entry_va = space.install("sk.entry")
        # HV_INITIAL_VP_CONTEXT per VP for EnableVpVtl, built by the loader (as NT's AP contexts).
        contexts = []
        for index in range(loader.processors):
            state = space.initial_state(self.entry_va, idt=self.idt)
            state.gs_base = self.processor_block(index)
            contexts.append(encode_context(state))
        self.contexts: tuple[bytes, ...] = tuple(contexts)
        #: Number ↔ name of the build's services (for traces; dispatch reads the RAM table).
        self.table = ServiceTable(loader.build)
        #: Service → handler code, filled by the service modules while the image is built; the
        #: loader installs each as a routine and writes its VA into the dispatch table.
        self.handlers: dict[Service, Handler] = {}
        # The handle table, the small-object pool and the secure-thread table (``sk.objects``),
        # physically contiguous so host-side tools find each from one GPA.
        self.handles_va, self.handles_gpa = space.alloc_data(L.HandleTable.PAGES, contiguous=True)
        self.objects_va, self.objects_gpa = space.alloc_data(L.ObjectPool.PAGES, contiguous=True)
        loader.write(self.objects_gpa + L.ObjectPool.BITMAP, b"\x01")  # block 0: the bitmap
        self.threads_va, self.threads_gpa = space.alloc_data(1)
        #: Per VP, the services suspended in a normal call, innermost last (a secure call NT makes
        #: while serving a normal call nests inside the outer one).
        self.pending: dict[int, list[Generator[NormalCall, SecureCallArgs, Reply]]] = {}
        #: Addresses of the KDP and HVPT services' structures in SK memory (their modules).
        self.kdp: KdpState | None = None
        self.hvpt: HvptState | None = None
        self.hotpatch: HotPatchState | None = None  # sk.services.hotpatch: the undo table's VA
        #: The images SKCI admitted for trustlets, by their first image frame → their symbol
        #: data (``ium.process.TrustletSymbols``: the parsed PE and routine VAs).  A symbol
        #: table, not a process list: the SK finds a process from its handle entry, a thread
        #: object or its processor block in SK memory, and an SKPROCESS names its image by
        #: the image PFNs it records (``ium.process.process_at``).
        self.trustlet_images: dict[int, TrustletSymbols] = {}
        # Secure-storage records (``layouts.Storage``) and the intercept log
        # (``layouts.InterceptLog``): SK data pages.
        self.storage_va, self.storage_gpa = space.alloc_data(1)
        self.intercepts_va, self.intercepts_gpa = space.alloc_data(1)
        #: Functions run at the end of phase 1 (HVCI's initial SLAT, ...), registered by modules.
        self.phase1_hooks: list[Callable[[SecureKernel, Cpu], None]] = []
        #: The resume-thread operation (IUM); set by the IUM service module.
        self.resume_thread: Handler | None = None
        from vbsim.sk.ium import keys

        keys.provision(self)
        self.syscall_entry = space.install("sk.KiSystemServiceStart")
        from vbsim.sk.services import register_all

        register_all(self)
        self._install_dispatch(loader)
        #: The SK image's own frames (code, data, tables), which phase 1 takes from VTL0: the
        #: loader hands them over when it finishes (``vbsim.boot.sk_loader``).
        self.image_pfns: tuple[int, ...] = ()

    @property
    def hvci(self) -> Hvci:
        """Where HVCI's tables are (``sk.services.hvci``): set while the image is built, so
        always there once the SK exists."""
        if self._hvci is None:
            raise RuntimeError("the SK image is being built: HVCI's tables are not placed yet")
        return self._hvci

    @hvci.setter
    def hvci(self, value: Hvci) -> None:
        self._hvci = value

    def builder(self) -> ImageBuilder:
        """The loader's side of the address space, while the image is built (service modules
        place their tables with it); the SK has none once loaded."""
        assert self.loader is not None, "the SK image is built; it keeps only its KernelMap"
        return self.loader.space

    def _install_dispatch(self, loader: LoaderBlock) -> None:
        """Loader: each handler becomes a routine in SK code; its VA goes into the table."""
        space = loader.space
        code.register(NOT_IMPLEMENTED_ROUTINE, _not_implemented)
        for service, number in self.table.number.items():
            handler = self.handlers.get(service)
            if handler is None:
                va = space.install(NOT_IMPLEMENTED_ROUTINE)
            else:
                name = f"sk.svc.{service.value}"
                code.register(name, _service_routine(handler))
                va = space.install(name)
            loader.write(self.dispatch_gpa + number * Dispatch.ENTRY, va.to_bytes(8, "little"))

    def host_mark_own_pages(self, ram: Any, pfns: list[int]) -> None:
        """The loader marks the SK's frames in its own-page bitmap (one read and one write)."""
        size = -(-self.loader_ram_pages // 8)
        bitmap = bytearray(ram.read(self.own_gpa, size))
        for pfn in pfns:
            if 0 <= pfn < self.loader_ram_pages:
                bitmap[pfn >> 3] |= 1 << (pfn & 7)
        ram.write(self.own_gpa, bytes(bitmap))

    # -- host-side views (tools standing outside the machine read RAM) -----------------------
    def host_phase(self, ram: Any) -> Phase:
        return Phase.of(L.host_field(ram, self.state_gpa, State.PHASE))

    def host_config(self, ram: Any, fld: Field) -> int:
        return L.host_field(ram, self.config_gpa, fld)

    def host_own_pages(self, ram: Any) -> set[int]:
        raw = ram.read(self.own_gpa, -(-self.loader_ram_pages // 8))
        return {i * 8 + b for i, byte in enumerate(raw) if byte for b in range(8) if byte >> b & 1}

    def host_current_object(self, ram: Any, index: int) -> int:
        """The SKPROCESS VA VP ``index``'s processor block names as current (0: none)."""
        return L.host_field(ram, self.prcb_gpa + index * L.Prcb.SIZE, L.Prcb.CURRENT_PROCESS)

    def host_processes(self, ram: Any) -> dict[int, Any]:
        """Secure process handle → its Python side, for every SKPROCESS entry the handle table
        in RAM holds now (host tools; the SK itself resolves handles through its CPU)."""
        from vbsim.sk import objects
        from vbsim.sk.ium.process import host_process_at

        out: dict[int, Any] = {}
        for handle, (kind, va) in objects.host_entries(ram.read, self).items():
            process = host_process_at(self, ram, va) if kind == L.ObjectType.SKPROCESS else None
            if process is not None:
                out[handle] = process
        return out

    def host_trusted(self, ram: Any) -> dict[int, int]:
        count = min(L.host_field(ram, self.state_gpa, State.TRUSTED_COUNT), State.TRUSTED_MAX)
        raw = ram.read(self.state_gpa + State.TRUSTED, count * State.TRUSTED_ENTRY)
        return {
            int.from_bytes(raw[i : i + 4], "little"): int.from_bytes(raw[i + 8 : i + 24], "little")
            for i in range(0, len(raw), State.TRUSTED_ENTRY)
        }

    # -- state in VTL1 memory, read through the SK's own processor --------------------------
    def allowed_ids(self, vp: L.Mem) -> set[int]:
        """The trustlet allow-list as it stands in SK memory (vbs-internals §3.2)."""
        count = min(read_field(vp, self.allow_va, L.AllowList.COUNT), L.AllowList.MAX)
        raw = vp.read(self.allow_va + L.AllowList.IDS, count * L.AllowList.ID_SIZE)
        return {int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)}

    def config(self, vp: L.Mem, fld: Field) -> int:
        return read_field(vp, self.config_va, fld)

    def phase(self, vp: L.Mem) -> Phase:
        return Phase.of(read_field(vp, self.state_va, State.PHASE))

    def set_phase(self, vp: L.Mem, phase: Phase) -> None:
        write_field(vp, self.state_va, State.PHASE, phase.code)

    def trusted(self, vp: L.Mem) -> dict[int, int]:
        """The VTL0 register values HyperGuard recorded at PHASE3 (vbs-internals §5.7)."""
        count = min(read_field(vp, self.state_va, State.TRUSTED_COUNT), State.TRUSTED_MAX)
        raw = vp.read(self.state_va + State.TRUSTED, count * State.TRUSTED_ENTRY)
        out: dict[int, int] = {}
        for i in range(count):
            entry = raw[i * State.TRUSTED_ENTRY : (i + 1) * State.TRUSTED_ENTRY]
            out[int.from_bytes(entry[0:4], "little")] = int.from_bytes(entry[8:24], "little")
        return out

    def record_trusted(self, vp: L.Mem, values: dict[int, int]) -> None:
        raw = bytearray()
        for name, value in list(values.items())[: State.TRUSTED_MAX]:
            raw += name.to_bytes(4, "little") + bytes(4) + value.to_bytes(16, "little")
        vp.write(self.state_va + State.TRUSTED, bytes(raw))
        write_field(vp, self.state_va, State.TRUSTED_COUNT, len(values))

    def own_page(self, vp: L.Mem, pfn: int) -> bool:
        """Whether the SK took ``pfn`` from VTL0 (its own image and data, trustlet memory)."""
        return bool(vp.read(self.own_va + (pfn >> 3), 1)[0] >> (pfn & 7) & 1)

    def own_pages(self, vp: L.Mem) -> list[int]:
        """Every page the SK owns, from its bitmap (one read of the whole map)."""
        raw = vp.read(self.own_va, -(-self.config(vp, Config.RAM_PAGES) // 8))
        return [
            index * 8 + b
            for index, byte in enumerate(raw)
            if byte
            for b in range(8)
            if byte >> b & 1
        ]

    def ram_pages(self, vp: L.Mem) -> int:
        """RAM's size in pages, from the SK's configuration page (the loader wrote it)."""
        return self.config(vp, Config.RAM_PAGES)

    def pool_range(self, vp: L.Mem) -> tuple[int, int]:
        """The SK's frame pool (first PFN, page count), from its configuration page."""
        return self.config(vp, Config.POOL_BASE), self.config(vp, Config.POOL_COUNT)

    def unmark_own(self, vp: L.Mem, pfns: list[int]) -> None:
        pages = self.ram_pages(vp)
        for pfn in pfns:
            if 0 <= pfn < pages:
                va = self.own_va + (pfn >> 3)
                vp.write(va, bytes([vp.read(va, 1)[0] & ~(1 << (pfn & 7)) & 0xFF]))

    def started(self, vp: L.Mem, index: int) -> bool:
        """Whether the SK brought VP ``index``'s VTL1 up (its state block's READY bits)."""
        return bool(read_field(vp, self.state_va, State.READY) >> index & 1)

    def alloc_frame(self, vp: L.Mem) -> int:
        """A zeroed frame from the SK's own pool (the range the loader reserved for it): the free
        bitmap lives in an SK data page.  Bugchecks-worthy exhaustion is reported as
        ``PoolExhausted`` (a modelled resource limit)."""
        pool_base, pool_count = self.pool_range(vp)
        raw = vp.read(self.pool_va + L.Pool.BITMAP, -(-pool_count // 8))
        for index, byte in enumerate(raw):
            if byte != 0xFF:
                bit = next(b for b in range(8) if not byte >> b & 1)
                slot = index * 8 + bit
                if slot >= pool_count:
                    break
                vp.write(self.pool_va + L.Pool.BITMAP + index, bytes([byte | 1 << bit]))
                pfn = pool_base + slot
                vp.write(self.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
                self.mark_own(vp, [pfn])
                return pfn
        raise PoolExhausted("securekernel pool")

    def mark_own(self, vp: L.Mem, pfns: list[int]) -> None:
        pages = self.ram_pages(vp)
        for pfn in pfns:
            if 0 <= pfn < pages:
                va = self.own_va + (pfn >> 3)
                vp.write(va, bytes([vp.read(va, 1)[0] | 1 << (pfn & 7)]))

    # -- loader side ---------------------------------------------------------------------------
    def processor_block(self, index: int) -> int:
        """The VA of VP ``index``'s SK processor block (64 bytes each)."""
        return self.prcb_va + index * L.Prcb.SIZE

    def context(self, index: int = 0) -> bytes:
        """HV_INITIAL_VP_CONTEXT for EnableVpVtl: VTL1 starts at the SK entry, GS base on the
        VP's processor block (the loader built one per VP)."""
        return self.contexts[index]

    @staticmethod
    def phys_va(gpa: int) -> int:
        """The SK's direct-map VA of ``gpa`` (``guest.address_space.DIRECT_MAP``)."""
        return DIRECT_MAP + gpa

    def free_frame(self, vp: L.Mem, pfn: int) -> None:
        """Give a frame back to the SK's pool: cleared, not the SK's any more, its bit free."""
        pool_base, pool_count = self.pool_range(vp)
        slot = pfn - pool_base
        if not 0 <= slot < pool_count:
            return
        vp.write(self.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        va = self.pool_va + L.Pool.BITMAP + (slot >> 3)
        vp.write(va, bytes([vp.read(va, 1)[0] & ~(1 << (slot & 7)) & 0xFF]))
        self.unmark_own(vp, [pfn])

    @staticmethod
    def tracing(vp: Cpu) -> bool:
        return bool(vp.tracing)

    def emit(self, vp: Cpu, kind: str, mechanism: str, outcome: str, **detail: Any) -> None:
        if self.tracing(vp):
            vp.emit(kind, mechanism, outcome, **detail)

    def bugcheck(self, vp: Cpu, code: BugCheck, *params: int) -> None:
        if vp.cpl != 0:  # KeBugCheckEx's privileged instructions fault outside ring 0
            vp.wrong_context("KeBugCheckEx at CPL3")
        self.emit(vp, "bugcheck", "securekernel", code.name, code=int(code), params=list(params))
        crash.notify_hypervisor(vp, int(code), *params)
        crash.stop_processor(vp)
        raise Bugcheck(int(code), code.name, 1, *params)

    # -- processor bring-up --------------------------------------------------------------------
    def init_processor(self, vp: Cpu) -> None:
        """Per-VP VTL1 setup (LVBS mshv_vsm_vtl1.c; vbs-internals §1.1 row 12 on the BSP)."""
        pages = self.processors[vp.index]
        vp.wrmsr(HvMsr.GUEST_OS_ID, GUEST_OS_ID)
        vp.wrmsr(HvMsr.HYPERCALL, self.hypercall_gpa | 1)
        vp.wrmsr(HvMsr.VP_ASSIST_PAGE, pages.assist_gpa | 1)
        vp.wrmsr(HvMsr.SIMP, pages.sim_gpa | 1)
        vp.wrmsr(HvMsr.SINT0, SINT0_VECTOR)
        vp.wrmsr(HvMsr.SCONTROL, 1)
        hvci = self.config(vp, Config.HVCI)
        mbec = self.config(vp, Config.MBEC) or hvci  # HVCI without MBEC: emulated (RUM)
        secure_config = defs.SECCFG_MBEC_ENABLED.mask if mbec else 0
        from vbsim.sk import hvpt

        secure_config |= hvpt.secure_config_bits(self, vp)  # hvdef hardware_hvpt_enabled
        registers = [(int(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0), secure_config)]
        if vp.index == 0:
            # With HVCI no VTL0 page is kernel-executable unless validated: the default mask every
            # page starts with is R|W|UX (vsm-spec §3.4 DefaultVtlProtectionMask, HV_MAP_GPA order).
            default = self.config(vp, Config.VTL0_DEFAULT_MASK)
            config = (
                defs.PCONFIG_ENABLE_VTL_PROTECTION.mask
                | defs.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(0, default)
                | defs.PCONFIG_ZERO_MEMORY_ON_RESET.mask
                | defs.PCONFIG_DENY_LOWER_VTL_STARTUP.mask
            )
            registers.insert(0, (int(HvRegisterName.VSM_PARTITION_CONFIG), config))
        result = hvcall.set_vp_registers(vp, self.params, registers)
        if not result.ok:
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 1, result.status)
        from vbsim.sk import hyperguard

        hyperguard.register_intercepts(self, vp)
        # VTL1's own system-call entry: IUM code enters the SK with ``syscall`` (no hypervisor
        # involved, vbs-internals §2.6).  These MSRs are VTL1's private copies.
        vp.wrmsr(Msr.LSTAR, self.syscall_entry)
        vp.wrmsr(Msr.STAR, (0x0023 << 48) | (0x0010 << 32))
        vp.wrmsr(Msr.SFMASK, int(Rflags.TF | Rflags.IF | Rflags.DF | Rflags.AC))
        if vp.index == 0:
            write_field(vp, self.state_va, State.BOOT_TIME, rtc.read_filetime(vp))
            self.phase1(vp)
        ready = read_field(vp, self.state_va, State.READY)
        write_field(vp, self.state_va, State.READY, ready | 1 << vp.index)
        self.emit(vp, "sk", "init-processor", "ready", vp_index=vp.index)

    def system_time(self, vp: Cpu) -> dt.datetime:
        """The SK's time: the CMOS clock as the SK read it at its initialisation (its state
        page, read now; [model] it does not advance)."""
        return rtc.filetime_to_datetime(read_field(vp, self.state_va, State.BOOT_TIME))

    def phase1(self, vp: Cpu) -> None:
        """SkmiProtectSecureKernelPages and friends (vbs-internals §1.1 row 12)."""
        self.protect_own_pages(vp, int(defs.HvMapGpaFlags.READABLE))
        self.protect_pool(vp)
        for hook in self.phase1_hooks:
            hook(self, vp)
        self.set_phase(vp, Phase.PHASE1)
        self.emit(vp, "boot", "sk-phase1", "done", frames=len(self.image_pfns))

    def protect_own_pages(self, vp: Cpu, flags: int, pages: tuple[int, ...] = ()) -> None:
        """VTL0 gets ``flags`` on the SK image's frames (or on ``pages``, frames the SK took
        later), which become the SK's."""
        gpns = sorted(set(pages or self.image_pfns))
        self.mark_own(vp, gpns)
        result = hvcall.modify_vtl_protection_mask(vp, self.params, gpns, flags)
        if not result.ok:
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 2, result.status)

    def protect_pool(self, vp: Cpu) -> None:
        """Phase 1: VTL0 loses every right on the SK's frame pool; whoever takes a frame from it
        grants what that frame's use needs (HLAT tables: read-only)."""
        pool_base, pool_count = self.pool_range(vp)
        gpns = list(range(pool_base, pool_base + pool_count))
        if gpns:
            result = hvcall.modify_vtl_protection_mask(vp, self.params, gpns, 0)
            if not result.ok:
                self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 5, result.status)

    def vtl0_page(self, vp: L.Mem, pfn: int) -> bool:
        """Whether ``pfn`` is RAM that belongs to VTL0 (not the SK's, not a trustlet's)."""
        return 0 < pfn < self.ram_pages(vp) and not self.own_page(vp, pfn)

    def vtl0_output_page(self, vp: L.Mem, pfn: int) -> bool:
        """Whether the SK may write an answer into ``pfn`` for VTL0: VTL0 RAM that VTL0 could
        write itself.  A page KDP owns or HVCI holds for code is read-only to VTL0 through the
        SLAT the SK programs (vbs-internals §5.1, §5.2); writing it on VTL0's request would make
        the SK a confused deputy that undoes its own protection (found by the hardened soak:
        PREPARE_FOR_CRASHDUMP rewrote a static-KDP page)."""
        from vbsim.sk.services.hvci import ordinary_page

        return self.vtl0_page(vp, pfn) and ordinary_page(self, vp, pfn)

    def set_vtl0_rights(self, vp: Cpu, gpns: list[int], flags: int) -> bool:
        """The only way any VTL0 SLAT right changes: a hypercall issued here, in VTL1."""
        if not gpns:
            return True
        if flags & 0x2 and flags & 0x4 and self.config(vp, Config.HVCI):
            # HVCI's invariant, enforced at the one place every SLAT change passes: a VTL0 page is
            # never writable and kernel-executable at once (vbs-internals §5.1).
            flags &= ~0x4
            self.emit(vp, "hvci", "hvci.w^x", "kx-stripped", pages=len(gpns))
        return hvcall.modify_vtl_protection_mask(vp, self.params, gpns, flags).ok

    # -- secure calls --------------------------------------------------------------------------
    def secure_call(self, vp: Cpu) -> None:
        args = callargs.capture(vp)  # captured: VTL0 cannot change it from here on
        tracing = vp.tracing
        result: Reply | NormalCall
        if args.op == callargs.OP_NORMAL_REPLY:
            stack = self.pending.get(vp.index)
            if not stack:
                result = Reply(NtStatus.INVALID_PARAMETER)
            else:
                result = self._advance(vp, stack.pop(), args)
        elif args.op == callargs.OP_INVOKE_SERVICE:
            # The dispatch table in SK memory decides (a write to it changes dispatch).
            routine = 0
            if 0 <= args.code < Dispatch.ENTRIES:
                routine = vp.read_u64(self.dispatch_va + args.code * Dispatch.ENTRY)
            if routine == 0:
                self.emit(vp, "securecall", "sscn", "unknown", code=args.code)
                self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x10, args.code)
                return
            if tracing:
                service = self.table.service.get(args.code)
                self.emit(
                    vp,
                    "securecall",
                    "dispatch",
                    "entered",
                    service=service.value if service is not None else "?",
                    code=args.code,
                    phase=self.phase(vp).value,
                    routine=routine,
                )
            try:
                outcome = vp.call(routine, args)
            except PoolExhausted:  # the service ran the SK's frame pool dry: it fails
                outcome = self._exhausted(vp, args)
            if isinstance(outcome, Reply):
                result = outcome
            elif isinstance(outcome, Generator):
                result = self._advance(vp, outcome, None)
            else:  # whatever the routine left behind is not a reply (a hijacked entry)
                result = Reply(NtStatus.UNSUCCESSFUL)
        elif args.op == callargs.OP_RESUME_THREAD and self.resume_thread is not None:
            outcome = self.resume_thread(self, vp, args)
            result = outcome if isinstance(outcome, Reply) else self._advance(vp, outcome, None)
        else:
            self.emit(vp, "securecall", "operation-type", "unknown", op=args.op)
            self.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x11, args.op)
            return
        if isinstance(result, NormalCall):
            reply = SecureCallArgs(
                callargs.OP_NORMAL_CALL, args.code, args.cookie, [result.number, *result.args]
            )
            self.emit(vp, "normalcall", "request", "sent", number=result.number)
        else:
            reply = SecureCallArgs(
                callargs.OP_INVOKE_SERVICE, args.code, args.cookie, [result.status, *result.outputs]
            )
            if vp.tracing:  # read again: the service may have switched tracing
                status_name = NtStatus.name_of(result.status)
                self.emit(vp, "securecall", "dispatch", status_name, code=args.code)
        callargs.clear_registers(vp)
        callargs.load(vp, reply)

    def _exhausted(self, vp: Cpu, args: SecureCallArgs | None) -> Reply:
        """A secure call that needed a frame the pool no longer has: STATUS_INSUFFICIENT_RESOURCES
        (what a kernel answers when its allocator fails), and the SK serves the next call."""
        self.emit(vp, "securecall", "sk-pool", "exhausted", code=args.code if args else -1)
        return Reply(NtStatus.INSUFFICIENT_RESOURCES)

    def normal_call(self, vp: Cpu, number: int, *args: int) -> list[int] | None:
        """Ask NT for a service and wait for the answer (vbs-internals §2.5).

        The request leaves in the shared argument registers (everything else cleared), VTL1
        VTL-returns, and this VTL resumes right here when NT VTL-calls back with the reply.  The
        reply is untrusted input: callers validate every value.  None if NT answered with
        something that is not a normal-call reply."""
        request = SecureCallArgs(callargs.OP_NORMAL_CALL, 0, 0, [number, *args])
        callargs.clear_registers(vp)
        callargs.load(vp, request)
        self.emit(vp, "normalcall", "request", "sent", number=number)
        hvcall.vtl_return(vp)
        reply = callargs.capture(vp)
        if reply.op != callargs.OP_NORMAL_REPLY:
            self.emit(vp, "normalcall", "reply", "malformed", op=reply.op)
            return None
        return reply.fields

    def _advance(
        self,
        vp: Cpu,
        generator: Generator[NormalCall, SecureCallArgs, Reply],
        reply: SecureCallArgs | None,
    ) -> Reply | NormalCall:
        try:
            request = next(generator) if reply is None else generator.send(reply)
        except StopIteration as done:
            value = done.value
            return value if isinstance(value, Reply) else Reply(NtStatus.UNSUCCESSFUL)
        except PoolExhausted:
            return self._exhausted(vp, None)
        self.pending.setdefault(vp.index, []).append(generator)
        return request


def _sk(vp: Cpu) -> SecureKernel:
    sk = vp.kernel()
    if not isinstance(sk, SecureKernel):
        vp.wrong_context("Secure Kernel code without the Secure Kernel's GS")
    return sk


@guest_code("sk.entry")
def _entry(vp: Cpu) -> None:
    """VTL1's dispatcher loop on one VP: initialise, then return to VTL0 and serve each entry.

    Every VTL entry resumes right after the ``vtl_return`` below (vsm-spec §5.3 step 6); pending
    interrupts (secure intercepts on SINT0) have been delivered through the IDT by then."""
    sk = _sk(vp)
    vp.actor = "securekernel"
    sk.init_processor(vp)
    assist = sk.phys_va(sk.processors[vp.index].assist_gpa) + defs.VP_ASSIST_ENTRY_REASON_OFFSET
    while True:
        hvcall.vtl_return(vp)
        if vp.read_u32(assist) == HvVtlEntryReason.VTL_CALL:
            sk.secure_call(vp)


@guest_code("sk.sint0")
def _sint0(vp: Cpu, vector: int, error_code: int) -> None:
    from vbsim.sk import intercepts

    intercepts.handle(_sk(vp), vp)


@guest_code("sk.exception")
def _exception(vp: Cpu, vector: int, error_code: int) -> None:
    """A fault in IUM user mode ends the trustlet's thread; one in the Secure Kernel is fatal."""
    sk = _sk(vp)
    cr2 = vp.read_cr(2)  # mov r64, cr2 (the handler runs at CPL0 on a Cpu)
    if vp.interrupted_cpl == 3:
        sk.emit(vp, "ium", "exception-dispatch", "thread-terminated", vector=vector,
                error_code=error_code, cr2=cr2)  # fmt: skip
        raise ThreadTerminated(f"IUM exception {vector} at 0x{cr2:x}", vector, error_code)
    sk.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x20, vector, error_code, cr2)


def _service_routine(handler: Handler) -> Callable[..., ServiceResult]:
    def routine(vp: Cpu, args: SecureCallArgs) -> ServiceResult:
        return handler(_sk(vp), vp, args)

    return routine


def _not_implemented(vp: Cpu, args: SecureCallArgs) -> Reply:
    """The handler of an SSCN the build assigns but the model does not implement."""
    return Reply(NtStatus.NOT_IMPLEMENTED)
