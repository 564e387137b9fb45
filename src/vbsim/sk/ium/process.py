"""Secure processes (SKPROCESS): a trustlet's address space, owned by the Secure Kernel.

vbs-internals §3.5 and §7: the SK builds the trustlet's page tables in VTL1 memory; its private
pages (stack, heap, data) are taken away from VTL0 in SLAT (no access); its unmodified image pages
are the same physical pages as NT's section and stay readable by VTL0 (R, never W once validated).
Physical pages come from NT through a normal call (the SK owns no memory manager of its own) and
are checked before use: RAM, VTL0-owned, not already VTL1's, not repeated.

A trustlet thread runs when NT's shadow thread enters the SK (``SECURE_CALL_ARGS.OperationType``
resume-thread): the SK switches CR3 to the trustlet's tables and drops to CPL3 in VTL1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vbsim.guest.address_space import DIRECT_MAP, KernelMap
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.image import ParsedImage, TrustletPolicy
from vbsim.image.policy import PolicyId
from vbsim.layout import Loads
from vbsim.sk import objects
from vbsim.sk.kernel import PoolExhausted
from vbsim.sk.layouts import (
    Config,
    Field,
    FrameList,
    Mem,
    Prcb,
    ThreadTable,
    read_field,
    write_field,
)
from vbsim.sk.layouts import SecureThread as ThreadLayout
from vbsim.sk.layouts import SkProcess as SkProcessLayout
from vbsim.sk.services import hvci

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

# The trustlet layout and the normal-call numbers are the IUM ABI (vbsim.ium_abi).
from vbsim.ium_abi import (
    HEAP_VA,
    IMAGE_BASE,
    MESSAGE_VA,
    NORMAL_ALLOCATE_PAGES,
    PRIVATE_BASE,
    PRIVATE_PAGES,
    REPLY_VA,
    SECTION_BASE,
)

__all__ = [
    "HEAP_VA",
    "IMAGE_BASE",
    "MESSAGE_VA",
    "NORMAL_ALLOCATE_PAGES",
    "PRIVATE_BASE",
    "PRIVATE_PAGES",
    "REPLY_VA",
    "SECTION_BASE",
]


_CURRENT = Prcb.CURRENT_PROCESS.offset
_THREAD = Prcb.CURRENT_THREAD.offset
_PRCB_SIZE = Prcb.SIZE
assert Prcb.CURRENT_PROCESS.size == 8


@dataclass(frozen=True)
class TrustletSymbols:
    """What the SK keeps of an image it admitted, as a kernel keeps a loaded module's symbol
    data: the parsed PE (export and section names) and its routines' VAs, derived once from
    the signed bytes SKCI verified (which stay in image pages VTL0 cannot write).  Keyed in
    ``SecureKernel.trustlet_images`` by the image's first frame, the first of the image PFNs an
    SKPROCESS records."""

    image: ParsedImage
    routines: dict[str, int]


@dataclass(slots=True)
class SecureProcess:
    """A reference to a secure process: where its SKPROCESS page is, with the symbol data of
    the image that page names (:func:`process_at`, built at each lookup; the SK keeps no list of
    processes beside its handle table).

    Every value the SK decides from is in VTL1 memory, read through the SK's processor at each
    decision (or from RAM by host tools, the ``host_*`` readers): the SKPROCESS page at
    ``object_va`` (``layouts.SkProcess``: identity, signed policy values, mailbox key and
    mailboxes, termination, the DirectoryTableBase, the image PFNs, the secure sections, the
    frame counts) and its frame-list page (``layouts.FrameList``: private and page-table PFNs).

    What stays here, and why: ``image`` and ``routines`` are the :class:`TrustletSymbols` of
    the image the SKPROCESS page's first image PFN names; no check reads a value from them that
    memory could change.  Whether an object is a process is the handle table's entry type (or
    the pointer a thread object or processor block holds), as SkobReferenceObjectByHandle
    trusts it: an SKPROCESS a VTL1 writer forges that names an admitted image is a process."""

    image: ParsedImage
    routines: dict[str, int]
    #: The VA (in the SK's direct map) of this process's SKPROCESS page (``layouts.SkProcess``).
    object_va: int = 0

    def read(self, vp: Mem, fld: Field) -> int:
        """A field of the SKPROCESS page, read through the SK's processor now."""
        return read_field(vp, self.object_va, fld)

    def trustlet_id(self, vp: Mem) -> int:
        return read_field(vp, self.object_va, SkProcessLayout.TRUSTLET_ID)

    def terminated(self, vp: Mem) -> bool:
        return read_field(vp, self.object_va, SkProcessLayout.TERMINATED) != 0

    def write_terminated(self, vp: Mem) -> None:
        write_field(vp, self.object_va, SkProcessLayout.TERMINATED, 1)

    # -- the address space and frames, in SK memory ------------------------------------------
    def root(self, vp: Mem) -> int:
        """DirectoryTableBase as the SKPROCESS page holds it now."""
        return read_field(vp, self.object_va, SkProcessLayout.DIRECTORY_TABLE_BASE) & _ROOT_MASK

    def _list_va(self, vp: Mem) -> int:
        return DIRECT_MAP + (read_field(vp, self.object_va, SkProcessLayout.FRAME_LIST) << 12)

    def image_pfns(self, vp: Mem) -> list[int]:
        count = min(read_field(vp, self.object_va, SkProcessLayout.IMAGE_COUNT), _IMAGE_MAX)
        return _u64s(vp.read(self.object_va + SkProcessLayout.IMAGE_PFNS, 8 * count))

    def private_pfns(self, vp: Mem) -> list[int]:
        count = min(read_field(vp, self.object_va, SkProcessLayout.PRIVATE_COUNT), FrameList.MAX)
        return _u64s(vp.read(self._list_va(vp) + FrameList.PRIVATE, 8 * count))

    def private_pfn(self, vp: Mem, index: int) -> int | None:
        """Private page ``index`` (0: the message page, 1: the reply page, 2: the heap)."""
        count = min(read_field(vp, self.object_va, SkProcessLayout.PRIVATE_COUNT), FrameList.MAX)
        if not 0 <= index < count:
            return None
        return vp.read_u64(self._list_va(vp) + FrameList.PRIVATE + 8 * index)

    def table_pfns(self, vp: Mem) -> list[int]:
        count = min(read_field(vp, self.object_va, SkProcessLayout.TABLE_COUNT), FrameList.MAX)
        return _u64s(vp.read(self._list_va(vp) + FrameList.TABLES, 8 * count))

    def _append(self, vp: Mem, count_field: Field, base: int, pfns: list[int]) -> bool:
        count = read_field(vp, self.object_va, count_field)
        if count + len(pfns) > FrameList.MAX:
            return False
        raw = b"".join(pfn.to_bytes(8, "little") for pfn in pfns)
        vp.write(self._list_va(vp) + base + 8 * count, raw)
        write_field(vp, self.object_va, count_field, count + len(pfns))
        return True

    def add_private(self, vp: Mem, pfns: list[int]) -> bool:
        """Record private pages; False when the frame list is full (nothing recorded)."""
        return self._append(vp, SkProcessLayout.PRIVATE_COUNT, FrameList.PRIVATE, pfns)

    def add_table(self, vp: Mem, pfn: int) -> bool:
        return self._append(vp, SkProcessLayout.TABLE_COUNT, FrameList.TABLES, [pfn])

    def section_count(self, vp: Mem) -> int:
        count = read_field(vp, self.object_va, SkProcessLayout.SECTION_COUNT)
        return min(count, SkProcessLayout.SECTION_SLOTS)

    def section(self, vp: Mem, index: int) -> tuple[int, list[int]] | None:
        """Secure section ``index``: (trustlet VA, PFNs), as the SKPROCESS page holds it now."""
        if not 0 <= index < self.section_count(vp):
            return None
        entry = self.object_va + SkProcessLayout.SECTIONS + index * SkProcessLayout.SECTION
        va = read_field(vp, entry, SkProcessLayout.SECTION_VA)
        pages = min(read_field(vp, entry, SkProcessLayout.SECTION_PAGES), _SECTION_MAX)
        return va, _u64s(vp.read(entry + SkProcessLayout.SECTION_PFNS, 8 * pages))

    def add_section(self, vp: Mem, va: int, pfns: list[int]) -> int | None:
        """Record a secure section; its index, or None when every slot is taken."""
        index = self.section_count(vp)
        if index >= SkProcessLayout.SECTION_SLOTS or len(pfns) > _SECTION_MAX:
            return None
        entry = self.object_va + SkProcessLayout.SECTIONS + index * SkProcessLayout.SECTION
        write_field(vp, entry, SkProcessLayout.SECTION_VA, va)
        write_field(vp, entry, SkProcessLayout.SECTION_PAGES, len(pfns))
        vp.write(
            entry + SkProcessLayout.SECTION_PFNS, b"".join(p.to_bytes(8, "little") for p in pfns)
        )
        write_field(vp, self.object_va, SkProcessLayout.SECTION_COUNT, index + 1)
        return index

    # -- host side (tools outside the machine read the same bytes from RAM) ------------------
    def host(self, ram: _Ram, fld: Field) -> int:
        gpa = self.object_va - DIRECT_MAP
        return int.from_bytes(ram.read(gpa + fld.offset, fld.size), "little")

    def host_trustlet_id(self, ram: _Ram) -> int:
        return self.host(ram, SkProcessLayout.TRUSTLET_ID)

    def host_terminated(self, ram: _Ram) -> bool:
        return self.host(ram, SkProcessLayout.TERMINATED) != 0

    def host_handle(self, ram: _Ram) -> int:
        return self.host(ram, SkProcessLayout.HANDLE)

    def host_root(self, ram: _Ram) -> int:
        return self.host(ram, SkProcessLayout.DIRECTORY_TABLE_BASE) & _ROOT_MASK

    def host_image_pfns(self, ram: _Ram) -> list[int]:
        count = min(self.host(ram, SkProcessLayout.IMAGE_COUNT), _IMAGE_MAX)
        gpa = self.object_va - DIRECT_MAP + SkProcessLayout.IMAGE_PFNS
        return _u64s(ram.read(gpa, 8 * count))

    def _host_list(self, ram: _Ram, count_field: Field, base: int) -> list[int]:
        count = min(self.host(ram, count_field), FrameList.MAX)
        gpa = (self.host(ram, SkProcessLayout.FRAME_LIST) << 12) + base
        return _u64s(ram.read(gpa, 8 * count))

    def host_private_pfns(self, ram: _Ram) -> list[int]:
        return self._host_list(ram, SkProcessLayout.PRIVATE_COUNT, FrameList.PRIVATE)

    def host_table_pfns(self, ram: _Ram) -> list[int]:
        return self._host_list(ram, SkProcessLayout.TABLE_COUNT, FrameList.TABLES)


_ROOT_MASK = 0x000F_FFFF_FFFF_F000
_IMAGE_MAX = SkProcessLayout.IMAGE_MAX
_SECTION_MAX = SkProcessLayout.SECTION_MAX_PAGES


def _u64s(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


class _Ram(Protocol):
    def read(self, gpa: int, length: int, /) -> bytes: ...


def policy_value(policy: TrustletPolicy, policy_id: int, default: int = 0) -> int:
    """A numeric value of the signed ``.tPolicy`` (vbs-internals §3.1)."""
    entry = policy.find(policy_id)
    if entry is None or isinstance(entry.value, str):
        return default
    return int(entry.value)


def _sk_phys(sk: SecureKernel, vp: Cpu, process: SecureProcess) -> PhysAccess:
    """Physical access from the SK: its direct map, through its own VP (VTL1, no SLAT limit).
    Table frames come from the SK's own pool (cleared, marked the SK's, and without any VTL0
    right since phase 1); each is recorded in the process's frame list in SK memory.  A full
    list is the pool's limit reached (``PoolExhausted``)."""

    def alloc() -> int:
        pfn = sk.alloc_frame(vp)
        if not process.add_table(vp, pfn):
            sk.free_frame(vp, pfn)
            raise PoolExhausted("trustlet frame list")
        return pfn

    return PhysAccess(
        lambda gpa: vp.read_u64(sk.space.phys_va(gpa)),
        lambda gpa, value: vp.write_u64(sk.space.phys_va(gpa), value),
        alloc,
    )


def page_tables(sk: SecureKernel, vp: Cpu, process: SecureProcess) -> PageTables:
    """The trustlet's page tables as the SK edits and walks them now, through ``vp``."""
    return PageTables(_sk_phys(sk, vp, process), root=process.root(vp), frames=[])


def request_pages(sk: SecureKernel, vp: Cpu, count: int) -> list[int] | None:
    """Physical pages from NT (normal call), validated as hostile input."""
    pfns: list[int] = []
    while len(pfns) < count:
        want = min(count - len(pfns), 10)
        reply = sk.normal_call(vp, NORMAL_ALLOCATE_PAGES, want)
        if reply is None or reply[0] != 0:
            return None
        offered = reply[1 : 1 + want]
        for pfn in offered:
            # Hostile input: a PFN that is the SK's, a trustlet's, KDP's or HVCI-owned code is
            # refused, never cleared (found by the invariant monitor: KDP page theft).
            if not sk.vtl0_page(vp, pfn) or pfn in pfns or not hvci.ordinary_page(sk, vp, pfn):
                sk.emit(vp, "ium", "normalcall.pfn", "refused", pfn=pfn)
                return None
        pfns.extend(offered)
    return pfns


def build(
    sk: SecureKernel,
    vp: Cpu,
    image: ParsedImage,
    image_pfns: list[int],
    trustlet_id: int,
    mailbox_key: int,
) -> SecureProcess | None:
    """Create the trustlet's address space; None if NT did not supply usable pages."""
    assert image.policy is not None
    private = request_pages(sk, vp, PRIVATE_PAGES)
    if private is None:
        return None
    # Private pages leave VTL0 first, then are cleared: NT can neither read nor keep a handle on
    # what the trustlet will store there (vbs-internals §7 "Private memory ... not accessible").
    if not sk.set_vtl0_rights(vp, private, 0):
        return None
    sk.mark_own(vp, private)
    for pfn in private:
        vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
    # The SKPROCESS page and its frame-list page, from the SK's own pool (VTL0 has no right).
    routines = _routines(image)
    process = SecureProcess(image, routines, sk.space.phys_va(sk.alloc_frame(vp) << PAGE_SHIFT))
    write_field(vp, process.object_va, SkProcessLayout.FRAME_LIST, sk.alloc_frame(vp))
    if len(image_pfns) > SkProcessLayout.IMAGE_MAX or not process.add_private(vp, private):
        return None
    raw = b"".join(pfn.to_bytes(8, "little") for pfn in image_pfns)
    vp.write(process.object_va + SkProcessLayout.IMAGE_PFNS, raw)
    write_field(vp, process.object_va, SkProcessLayout.IMAGE_COUNT, len(image_pfns))
    phys = _sk_phys(sk, vp, process)
    tables = PageTables(phys)
    write_field(vp, process.object_va, SkProcessLayout.DIRECTORY_TABLE_BASE, tables.root)
    for index in range(256, 512):  # the kernel half: the Secure Kernel itself
        entry = phys.read_u64(sk.space.root + index * 8)
        if entry:
            phys.write_u64(tables.root + index * 8, entry)
    user_rx = int(Pte.US)  # present, user, read-only, executable
    for i, pfn in enumerate(image_pfns):
        tables.map(IMAGE_BASE + i * PAGE_SIZE, pfn << PAGE_SHIFT, user_rx)
    user_rw = int(Pte.US | Pte.RW | Pte.NX)
    for i, pfn in enumerate(private):
        tables.map(PRIVATE_BASE + i * PAGE_SIZE, pfn << PAGE_SHIFT, user_rw)
    # "a 16-byte random number generated by SK at creation" (§3.3): two RDRANDs.
    instance = vp.rdrand().to_bytes(8, "little") + vp.rdrand().to_bytes(8, "little")
    policy = image.policy
    for fld, value in (
        (SkProcessLayout.TRUSTLET_ID, trustlet_id),
        (SkProcessLayout.MAILBOX_KEY, mailbox_key),
        (SkProcessLayout.DEBUG, policy_value(policy, PolicyId.DEBUG) & 0xFFFF_FFFF),
        (SkProcessLayout.CAPABILITIES, policy_value(policy, PolicyId.CAPABILITY) & 0xFFFF_FFFF),
        (SkProcessLayout.CRASH_DUMP, policy_value(policy, PolicyId.CRASH_DUMP) & 0xFFFF_FFFF),
        (SkProcessLayout.SVN, (policy.svn or 0) & 0xFFFF_FFFF),
    ):
        write_field(vp, process.object_va, fld, value)
    vp.write(process.object_va + SkProcessLayout.INSTANCE.offset, instance)
    return process


def _routines(image: ParsedImage) -> dict[str, int]:
    """Routine name → VA in the trustlet, from the image's exports and entry point."""
    out: dict[str, int] = {}
    text = image.section(".text")
    for export in image.exports:
        if export.name is not None and export.thunk is not None:
            out[export.name] = IMAGE_BASE + _file_offset(image, export.rva)
    if image.entry_name is not None and text is not None:
        out.setdefault(image.entry_name, IMAGE_BASE + _file_offset(image, image.entry_rva))
    return out


def _file_offset(image: ParsedImage, rva: int) -> int:
    """The image is mapped as its raw file bytes (the section object's pages): RVA → offset."""
    for section in image.sections:
        if section.contains_rva(rva):
            return section.raw_offset + (rva - section.virtual_address)
    return rva


def image_digest(sk: SecureKernel, vp: Cpu, pfns: list[int], length: int) -> bytes:
    """SHA-256 of the image bytes as the SK sees them in physical memory now."""
    h = hashlib.sha256()
    remaining = length
    for pfn in pfns:
        chunk = min(PAGE_SIZE, remaining)
        h.update(vp.read(sk.space.phys_va(pfn << PAGE_SHIFT), chunk))
        remaining -= chunk
    return h.digest()


# -- secure threads: objects in the SK's small-object pool, found by cookie ----------------------
def create_thread(sk: SecureKernel, vp: Cpu, process: SecureProcess) -> int | None:
    """A new secure thread of ``process``: its object and its cookie; None when full."""
    count = read_field(vp, sk.threads_va, ThreadTable.COUNT)
    if count >= ThreadTable.MAX:
        return None
    block = objects.alloc_block(sk, vp)
    if block is None:
        return None
    cookie = ThreadTable.FIRST_COOKIE + count
    write_field(vp, block, ThreadLayout.COOKIE, cookie)
    write_field(vp, block, ThreadLayout.PROCESS, process.object_va)
    vp.write_u64(sk.threads_va + ThreadTable.ENTRIES + count * ThreadTable.ENTRY, block)
    write_field(vp, sk.threads_va, ThreadTable.COUNT, count + 1)
    return cookie


def thread_object(sk: SecureKernel, vp: Mem, cookie: int) -> int:
    """The VA of the secure thread ``cookie`` names, read from the thread table now; 0: none."""
    index = cookie - ThreadTable.FIRST_COOKIE
    if not 0 <= index < min(read_field(vp, sk.threads_va, ThreadTable.COUNT), ThreadTable.MAX):
        return 0
    thread = vp.read_u64(sk.threads_va + ThreadTable.ENTRIES + index * ThreadTable.ENTRY)
    if not thread or read_field(vp, thread, ThreadLayout.COOKIE) != cookie:
        return 0
    return thread


def thread_running(sk: SecureKernel, vp: Mem, thread: int) -> bool:
    """Whether any processor block names ``thread`` as the one it runs (read now)."""
    vps = min(read_field(vp, sk.config_va, Config.VPS), PAGE_SIZE // _PRCB_SIZE)
    return any(vp.read_u64(sk.prcb_va + i * _PRCB_SIZE + _THREAD) == thread for i in range(vps))


def process_at(sk: SecureKernel, memory: Loads, va: int) -> SecureProcess | None:
    """A reference to the SKPROCESS at ``va`` (read through ``memory`` now: the SK's processor,
    or a host tool's view of SK memory): the symbol data of the admitted image its first image
    PFN names.  None for no object (0) or an object naming no image the SK admitted."""
    if not va:
        return None
    return _named(sk, memory.read_u64(va + SkProcessLayout.IMAGE_PFNS), va)


def host_process_at(sk: SecureKernel, ram: _Ram, va: int) -> SecureProcess | None:
    """:func:`process_at` for host tools: SK memory read at the GPA behind its direct map."""
    if not va:
        return None
    raw = ram.read(va - DIRECT_MAP + SkProcessLayout.IMAGE_PFNS, 8)
    return _named(sk, int.from_bytes(raw, "little"), va)


def _named(sk: SecureKernel, first_image_pfn: int, va: int) -> SecureProcess | None:
    symbols = sk.trustlet_images.get(first_image_pfn)
    return None if symbols is None else SecureProcess(symbols.image, symbols.routines, va)


def thread_process(sk: SecureKernel, vp: Mem, thread: int) -> SecureProcess | None:
    """The process a thread object names (its SKPROCESS pointer, read now)."""
    return process_at(sk, vp, read_field(vp, thread, ThreadLayout.PROCESS))


def run_thread(sk: SecureKernel, vp: Cpu, thread: int, routine: str, *args: int) -> tuple[int, Any]:
    """Run ``routine`` of the trustlet at VTL1 CPL3 on ``vp``; (status, return value).
    ``thread`` is the secure thread object's VA."""
    process = thread_process(sk, vp, thread)
    va = process.routines.get(routine) if process is not None else None
    if process is None or va is None or process.terminated(vp):
        return 0xC000_0008, None  # STATUS_INVALID_HANDLE: no such entry in this image
    saved_cr3 = vp.read_cr(3)
    block = sk.processor_block(vp.index)
    current_before = vp.read_u64(block + _CURRENT)
    vp.write_u64(block + _CURRENT, process.object_va)
    thread_before = vp.read_u64(block + _THREAD)
    vp.write_u64(block + _THREAD, thread)
    vp.mov_to_cr(3, process.root(vp))  # DirectoryTableBase, read from the SKPROCESS now
    status, value = 0, None
    try:
        # Into the trustlet through the gates: sysret to CPL3, its return comes back by syscall
        # (KeUserModeCallback's pattern, vbsim.hw.cpu.Cpu.user_call).
        value = vp.user_call(va, *args)
    except ThreadTerminated as stop:
        status = 0xC000_0005 if stop.vector is not None else 0xC000_0001
        sk.emit(vp, "ium", "trustlet-fault", "thread-terminated", reason=stop.reason)
    finally:
        vp.write_u64(block + _THREAD, thread_before)
        if vp.vtl == 1 and vp.cpl == 0:
            vp.mov_to_cr(3, saved_cr3)
        vp.write_u64(block + _CURRENT, current_before)
    return status, value


def current(sk: SecureKernel, vp: Cpu) -> SecureProcess | None:
    """The trustlet this VP runs, as its SK processor block names it (read now)."""
    return process_at(sk, vp, current_object(sk, vp))


def current_object(sk: SecureKernel, vp: Cpu) -> int:
    """The SKPROCESS VA this VP's SK processor block names as current (0: none), read now."""
    return vp.read_u64(sk.prcb_va + vp.index * _PRCB_SIZE + _CURRENT)


# -- mailboxes: posted bytes live in SK frames the SKPROCESS page names (vbs-internals §4.4) ------
def _mailbox_entry(process: SecureProcess, slot: int) -> int:
    return process.object_va + SkProcessLayout.MAILBOXES + slot * SkProcessLayout.MAILBOX_ENTRY


def post_mailbox(sk: SecureKernel, vp: Cpu, process: SecureProcess, slot: int, data: bytes) -> bool:
    """Store ``data`` (≤ one page) in mailbox ``slot``: an SK frame, taken on first use."""
    if not 0 <= slot < SkProcessLayout.MAILBOX_SLOTS or len(data) > PAGE_SIZE:
        return False
    entry = _mailbox_entry(process, slot)
    pfn = read_field(vp, entry, SkProcessLayout.MAILBOX_PFN)
    if pfn == 0:
        try:
            pfn = sk.alloc_frame(vp)
        except PoolExhausted:
            return False
        write_field(vp, entry, SkProcessLayout.MAILBOX_PFN, pfn)
    vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), data.ljust(PAGE_SIZE, b"\0"))
    write_field(vp, entry, SkProcessLayout.MAILBOX_LENGTH, len(data))
    return True


def mailbox(vp: Cpu, process: SecureProcess, slot: int) -> bytes | None:
    """The bytes posted to ``slot``, read from SK memory; None if nothing was posted."""
    if not 0 <= slot < SkProcessLayout.MAILBOX_SLOTS:
        return None
    entry = _mailbox_entry(process, slot)
    pfn = read_field(vp, entry, SkProcessLayout.MAILBOX_PFN)
    if pfn == 0:
        return None
    length = min(read_field(vp, entry, SkProcessLayout.MAILBOX_LENGTH), PAGE_SIZE)
    return vp.read(KernelMap.phys_va(pfn << PAGE_SHIFT), length)
