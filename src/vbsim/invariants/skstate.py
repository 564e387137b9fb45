"""Invariant 6: which Secure Kernel pages may change after PHASE4_INIT, and when.

The SK's own frames (the loader's ``System.sk_space.frames`` at attach time) fall into four
classes:

- **scratch** — pages the SK or the hypervisor rewrite as a matter of course, whatever VTL0 asks:
  the hypercall parameter pages (``sk.params``), each VP's VP-assist page (the hypervisor writes
  the VTL entry reason there) and SynIC message page (intercept and IOMMU-fault messages), and
  the secure-call capture pages of ``sk.services.allocation`` and their control page (VTL0 data
  copied in before any check — a refused call writes them too; a call holds one across its
  normal calls), and the intercept log (the SINT0 handler appends to it whenever VTL0 touches
  memory its SLAT denies).  Not checked.
- **allocation** — pages an *accepted* secure call writes: the secure-allocation arena
  (CREATE/FILL_SECURE_ALLOCATION), the KDP secure-pool record page (COPY_PROTECTED_PAGE), the
  SK state block, HVCI's and KDP's tables (each only by its owner's services), and the object
  manager's pages (``sk.objects``): the handle table, the small-object pool and the secure-thread
  table; the secure-storage records; HVPT's records (only by KDP's services).  They may change
  only inside a secure call that returns STATUS_SUCCESS.
- **tables** — the SK's own page-table frames: the processor sets Accessed/Dirty bits as the SK
  touches memory (its own action), so they are compared with bits 5 and 6 of every entry masked.
- **static** — everything else: code, the IDT, the key pages, the configuration block, the
  SkuSiPolicy floors, the trustlet allow-list, the IUM filter, the secure-call dispatch table,
  the dump-key page, the hypercall page ...  They never change after PHASE4_INIT.

Frames the SK takes later from its pool are not in these fixed classes.  The secure process
objects among them — each SKPROCESS page, its frame list and its mailbox frames — are watched
as allocation pages whose set :func:`object_pages` re-reads from the handle table in RAM after
every accepted secure call (the monitor flags a change made by code a host entry ran in VTL1,
or left at a step's end).  The trustlets' own frames are watched by invariants 1 and 4; the
SECURE_IMAGE bodies only through the handle table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from vbsim.boot.kernel_space import KernelSpace
    from vbsim.hw.ram import GuestRam
    from vbsim.sk.kernel import SecureKernel

#: The services that change HVCI's tables (vbsim.sk.services.hvci).
HVCI_WRITERS = frozenset(
    {
        "FINISH_SECURE_IMAGE_VALIDATION",
        "LOAD_DRIVER",
        "UNLOAD_DRIVER",
        "MAKE_PROTECTED_PAGE_WRITABLE",
        "MAKE_PROTECTED_PAGE_EXECUTABLE",
    }
)

#: The services that change KDP's owner table (vbsim.sk.services.kdp).
KDP_WRITERS = frozenset(
    {"PROTECT_KERNEL_DATA_PAGE", "REGISTER_PROTECTED_PAGE", "INITIALIZE_SECURE_POOL"}
)

#: Per 8-byte entry, clear Accessed (bit 5) and Dirty (bit 6).
_AD_MASK = int.from_bytes(bytes([0x9F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) * 512, "little")


@dataclass
class SkPages:
    static: list[int] = field(default_factory=list)
    tables: list[int] = field(default_factory=list)
    allocation: list[int] = field(default_factory=list)
    scratch: list[int] = field(default_factory=list)
    #: page -> the label it is reported under
    labels: dict[int, str] = field(default_factory=dict)
    #: allocation page -> the services that may change it (absent: any accepted call)
    writers: dict[int, frozenset[str]] = field(default_factory=dict)


def host_gpa(ram: GuestRam, sk: SecureKernel, va: int) -> int | None:
    """The GPA behind SK VA ``va``: a walk of the SK's page tables in RAM from its root (what a
    debugger does); a direct-map VA is its GPA plus the map's base."""
    from vbsim.guest.address_space import DIRECT_MAP

    if DIRECT_MAP <= va < DIRECT_MAP + ram.size:
        return va - DIRECT_MAP
    leaf = PageTables(PhysAccess.direct(ram, "host"), root=sk.space.root).lookup(va)
    if leaf is None:
        return None
    return (leaf & 0x000F_FFFF_FFFF_F000) | (va & (PAGE_SIZE - 1))


def _gpn(ram: GuestRam, sk: SecureKernel, va: int) -> int | None:
    gpa = host_gpa(ram, sk, va)
    return None if gpa is None else gpa >> PAGE_SHIFT


def classify(sk: SecureKernel, space: KernelSpace) -> SkPages:
    """The classes of the SK's frames; ``space`` is the loader's side of its address space."""
    from vbsim.sk import hvpt
    from vbsim.sk.ium import process as ium
    from vbsim.sk.services import allocation, kdp

    ram = space.ram
    own = set(space.frames)
    tables = set(space.pt.frames or [])
    labels: dict[int, str] = {}
    scratch: set[int] = {sk.params.in_gpa >> PAGE_SHIFT, sk.params.out_gpa >> PAGE_SHIFT}
    for number, pages in enumerate(sk.processors):
        scratch.add(pages.assist_gpa >> PAGE_SHIFT)
        scratch.add(pages.sim_gpa >> PAGE_SHIFT)
        labels[pages.assist_gpa >> PAGE_SHIFT] = f"vp{number}.assist"
        labels[pages.sim_gpa >> PAGE_SHIFT] = f"vp{number}.sim"
    alloc: set[int] = set()
    state = sk.allocation
    if isinstance(state, allocation.AllocationState):
        for va in state.capture:
            gpn = _gpn(ram, sk, va)
            if gpn is not None:
                scratch.add(gpn)
                labels[gpn] = "capture"
        gpn = _gpn(ram, sk, state.control_va)
        if gpn is not None:  # held across a call's normal calls (VTL0 runs meanwhile)
            scratch.add(gpn)
            labels[gpn] = "capture-control"
        for index in range(state.arena_pages):
            gpn = _gpn(ram, sk, state.arena_va + index * PAGE_SIZE)
            if gpn is not None:
                alloc.add(gpn)
                labels[gpn] = f"arena[{index}]"
        labels[sk.hvci.hashes_gpa >> PAGE_SHIFT] = "hvci-hash-records"
    pool = sk.kdp
    if isinstance(pool, kdp.KdpState):
        gpn = _gpn(ram, sk, pool.table_va)
        if gpn is not None:
            alloc.add(gpn)
            labels[gpn] = "securepool-records"
    # SK state an accepted secure call changes (vbsim.sk.layouts): the state block, the own-page
    # bitmap, the frame pool's bitmap and HVCI's tables.  Its configuration, allow-list, IUM
    # filter and dispatch table are static (never change after boot).
    from vbsim.sk.layouts import Dispatch, HandleTable, Hvci, ObjectPool, table_pages

    writers: dict[int, frozenset[str]] = {}

    def span(gpa: int, pages: int, label: str, owners: frozenset[str] | None = None) -> None:
        for index in range(pages):
            alloc.add((gpa >> PAGE_SHIFT) + index)
            labels[(gpa >> PAGE_SHIFT) + index] = f"{label}[{index}]" if pages > 1 else label
            if owners is not None:
                writers[(gpa >> PAGE_SHIFT) + index] = owners

    span(sk.state_gpa, 1, "sk-state")
    # The object manager (vbsim.sk.objects): handles, small objects, secure threads.
    span(sk.handles_gpa, HandleTable.PAGES, "handle-table")
    span(sk.objects_gpa, ObjectPool.PAGES, "object-pool")
    span(sk.threads_gpa, 1, "thread-table")
    # Secure-storage records: written by IumSecureStoragePut inside a resumed trustlet thread
    # (a secure call that returns its status).
    span(sk.storage_gpa, 1, "secure-storage-records")
    # HVPT's records (root, enabled VPs, pinned ranges): only KDP's services pin after phase 1.
    hvpt_state = sk.hvpt
    if isinstance(hvpt_state, hvpt.HvptState):
        span(hvpt_state.records_gpa, 1, "hvpt-records", KDP_WRITERS)
    # The intercept log is written by the SK's SINT0 handler, not by a secure call: VTL0 makes
    # entries by touching memory its SLAT denies, by design.  Scratch.
    scratch.add(sk.intercepts_gpa >> PAGE_SHIFT)
    labels[sk.intercepts_gpa >> PAGE_SHIFT] = "intercept-log"
    # The processor blocks (vbsim.sk.layouts Prcb) hold each VP's current trustlet and thread
    # across the normal calls a secure system call makes: VTL0 may never answer one (a dead or
    # overwritten NT), and the block then keeps the trustlet's values by design.  Scratch.
    scratch.add(sk.prcb_gpa >> PAGE_SHIFT)
    labels[sk.prcb_gpa >> PAGE_SHIFT] = "processor-blocks"
    # The own-page and frame-pool bitmaps change in refused calls too: a trustlet creation that
    # fails after the SK withdrew VTL0's rights keeps the frames (giving them back would need a
    # clear-and-return path the model does not have).  Judged as scratch for now (issue 10).
    for index in range(-(-sk.loader_ram_pages // (8 * PAGE_SIZE))):
        scratch.add((sk.own_gpa >> PAGE_SHIFT) + index)
        labels[(sk.own_gpa >> PAGE_SHIFT) + index] = f"own-pages[{index}]"
    scratch.add(sk.pool_gpa >> PAGE_SHIFT)
    labels[sk.pool_gpa >> PAGE_SHIFT] = "frame-pool"
    count = table_pages(sk.loader_ram_pages)
    span(sk.hvci.states_gpa, count, "hvci-page-states", HVCI_WRITERS)
    span(sk.hvci.rights_gpa, count, "hvci-rights", HVCI_WRITERS)
    span(sk.hvci.hashes_gpa, Hvci.HASH_PAGES, "hvci-hash-records", HVCI_WRITERS)
    if sk.kdp is not None:
        span(sk.kdp.owners_gpa, table_pages(sk.loader_ram_pages), "kdp-owners", KDP_WRITERS)
    labels[sk.config_gpa >> PAGE_SHIFT] = "sk-config"
    labels[sk.allow_gpa >> PAGE_SHIFT] = "trustlet-allow-list"
    labels[sk.revocation_gpa >> PAGE_SHIFT] = "sku-si-policy"
    labels[sk.filter_gpa >> PAGE_SHIFT] = "ium-filter"
    for index in range(Dispatch.SIZE // PAGE_SIZE):
        labels[(sk.dispatch_gpa >> PAGE_SHIFT) + index] = f"securecall-dispatch[{index}]"
    trustlet: set[int] = set()
    for process in sk.host_processes(ram).values():
        if isinstance(process, ium.SecureProcess):
            trustlet.update(process.host_table_pfns(ram))
    for gpn in tables:
        labels.setdefault(gpn, "page-table")
    for gpn in space.code_pages:
        labels.setdefault(gpn, "code")
    keys_va = sk.keys_va
    if keys_va:
        gpn = _gpn(ram, sk, keys_va)
        if gpn is not None:
            labels[gpn] = "vsm-keys"
    labels.setdefault(sk.hypercall_gpa >> PAGE_SHIFT, "hypercall-page")
    static = own - tables - scratch - alloc - trustlet
    return SkPages(
        writers=writers,
        static=sorted(static),
        tables=sorted(tables - trustlet - scratch),
        allocation=sorted(alloc),
        scratch=sorted(scratch),
        labels=labels,
    )


def digest(ram: GuestRam, pfn: int) -> int:
    base = pfn << PAGE_SHIFT
    return zlib.crc32(ram.view[base : base + PAGE_SIZE])


def table_digest(ram: GuestRam, pfn: int) -> int:
    base = pfn << PAGE_SHIFT
    value = int.from_bytes(ram.view[base : base + PAGE_SIZE], "little") & _AD_MASK
    return zlib.crc32(value.to_bytes(PAGE_SIZE, "little"))


def digests(ram: GuestRam, pages: list[int], tables: bool = False) -> list[int]:
    fn = table_digest if tables else digest
    return [fn(ram, pfn) for pfn in pages]


# -- host-side views of SK state in VTL1 RAM (for the monitor, the report, tests) ----------------
@dataclass(frozen=True)
class HvciView:
    """HVCI's tables as they stand in VTL1 memory right now."""

    states: bytes
    rights: bytes
    hashes: dict[int, bytes]


def hvci_view(ram: GuestRam, sk: SecureKernel) -> HvciView:
    from vbsim.sk.layouts import host_hash_records

    state = sk.hvci
    return HvciView(
        ram.read(state.states_gpa, state.pages),
        ram.read(state.rights_gpa, state.pages),
        host_hash_records(ram, state.hashes_gpa),
    )


class HostMem:
    """The SK's virtual memory read from outside (RAM through the SK's own page tables, walked
    by the host): lets a tool or test ask an SK accessor what it would decide now."""

    def __init__(self, ram: GuestRam, sk: SecureKernel) -> None:
        self.ram, self.sk = ram, sk

    def _gpa(self, va: int) -> int:
        gpa = host_gpa(self.ram, self.sk, va)
        if gpa is None:
            raise ValueError(f"SK VA {va:#x} is not mapped")
        return gpa

    def read(self, va: int, length: int, /) -> bytes:
        out = bytearray()
        while len(out) < length:
            take = min(length - len(out), PAGE_SIZE - ((va + len(out)) & (PAGE_SIZE - 1)))
            out += self.ram.read(self._gpa(va + len(out)), take)
        return bytes(out)

    def write(self, va: int, data: bytes | bytearray, /) -> None:
        done = 0
        while done < len(data):
            take = min(len(data) - done, PAGE_SIZE - ((va + done) & (PAGE_SIZE - 1)))
            self.ram.write(self._gpa(va + done), bytes(data[done : done + take]))
            done += take

    def read_u32(self, va: int, /) -> int:
        return int.from_bytes(self.read(va, 4), "little")

    def write_u32(self, va: int, value: int, /) -> None:
        self.write(va, value.to_bytes(4, "little"))

    def read_u64(self, va: int, /) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def write_u64(self, va: int, value: int, /) -> None:
        self.write(va, value.to_bytes(8, "little"))


def object_pages(sk: SecureKernel, ram: GuestRam) -> dict[int, str]:
    """The pages of the SK's secure process objects as its handle table names them now (RAM,
    host side): each SKPROCESS page, its frame-list page and the frames its mailbox directory
    names (the posted bytes, secrets).  Taken from the SK's pool after attach, so they are not
    in the fixed classes; the monitor watches them as allocation pages whose set it re-reads
    after every accepted secure call (a sixth audit changed a running trustlet's ID and
    mailbox key from K1 without a violation)."""
    from vbsim.guest.address_space import DIRECT_MAP
    from vbsim.sk.ium import process as ium
    from vbsim.sk.layouts import SkProcess

    out: dict[int, str] = {}
    for handle, process in sk.host_processes(ram).items():
        if not isinstance(process, ium.SecureProcess):
            continue
        gpa = process.object_va - DIRECT_MAP
        if not 0 <= gpa < ram.size:
            continue
        out[gpa >> PAGE_SHIFT] = f"skprocess {handle:#x}"
        page = ram.read(gpa, PAGE_SIZE)
        frame_list = _u64(page, SkProcess.FRAME_LIST.offset)
        if frame_list and frame_list << PAGE_SHIFT < ram.size:
            out[frame_list] = f"skprocess {handle:#x} frame list"
        for slot in range(SkProcess.MAILBOX_SLOTS):
            at = SkProcess.MAILBOXES + slot * SkProcess.MAILBOX_ENTRY
            pfn = _u64(page, at + SkProcess.MAILBOX_PFN.offset)
            if pfn and pfn << PAGE_SHIFT < ram.size:
                out[pfn] = f"skprocess {handle:#x} mailbox {slot}"
    return out


def _u64(page: bytes, offset: int) -> int:
    return int.from_bytes(page[offset : offset + 8], "little")


def object_digests(ram: GuestRam, pages: dict[int, str]) -> dict[int, int]:
    return {gpn: zlib.crc32(ram.read(gpn << PAGE_SHIFT, PAGE_SIZE)) for gpn in pages}
