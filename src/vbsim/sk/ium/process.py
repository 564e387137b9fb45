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
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vbsim.guest.address_space import KernelSpace
from vbsim.hw.faults import ThreadTerminated
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.image import ParsedImage, TrustletPolicy
from vbsim.image.policy import PolicyId
from vbsim.sk.kernel import PoolExhausted
from vbsim.sk.layouts import Field, Mem, Prcb, read_field, write_field
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
_PRCB_SIZE = Prcb.SIZE
assert Prcb.CURRENT_PROCESS.size == 8


@dataclass
class SecureThread:
    cookie: int
    process: SecureProcess
    running: bool = False


@dataclass
class SecureProcess:
    handle: int
    trustlet_id: int
    policy: TrustletPolicy
    image: ParsedImage
    instance: bytes
    tables: PageTables
    image_pfns: list[int]
    private_pfns: list[int]
    routines: dict[str, int]
    mailbox_key: int = 0
    #: Secure sections this trustlet shares with VTL0: index → (trustlet VA, PFNs).
    sections: list[tuple[int, list[int]]] = field(default_factory=list)
    threads: dict[int, SecureThread] = field(default_factory=dict)
    terminated: bool = False
    svn: int = 0
    #: The frames of ``tables`` (from the SK's pool; later mappings add to this list).
    table_pfns: list[int] = field(default_factory=list)
    #: User pages a probe found present and user (``probed_r``) / writable (``probed_w``) in
    #: ``tables`` (VPNs): the SK's cache of its own walks (secure_syscalls._probe).
    probed_r: set[int] = field(default_factory=set)
    probed_w: set[int] = field(default_factory=set)
    #: The VA (in the SK's direct map) of this process's SKPROCESS page (``layouts.SkProcess``):
    #: what the SK decides from (identity, debug and capability policy, mailbox key, mailboxes).
    object_va: int = 0

    def __post_init__(self) -> None:
        self.svn = self.policy.svn or 0

    def read(self, vp: Mem, fld: Field) -> int:
        """A field of the SKPROCESS page, read through the SK's processor now."""
        return read_field(vp, self.object_va, fld)

    def policy_value(self, policy_id: int, default: int = 0) -> int:
        entry = self.policy.find(policy_id)
        if entry is None or isinstance(entry.value, str):
            return default
        return int(entry.value)


def _sk_phys(sk: SecureKernel, vp: Cpu, table_pfns: list[int]) -> PhysAccess:
    """Physical access from the SK: its direct map, through its own VP (VTL1, no SLAT limit).
    Table frames come from the SK's own pool (cleared, marked the SK's, and without any VTL0
    right since phase 1); each is recorded in ``table_pfns``."""

    def alloc() -> int:
        pfn = sk.alloc_frame(vp)
        table_pfns.append(pfn)
        return pfn

    return PhysAccess(
        lambda gpa: vp.read_u64(sk.space.phys_va(gpa)),
        lambda gpa, value: vp.write_u64(sk.space.phys_va(gpa), value),
        alloc,
    )


_WHY = "a trustlet's tables are walked on a processor: ium.page_tables(sk, cpu, process)"


def _no_read(gpa: int) -> int:
    raise RuntimeError(_WHY)


def _no_write(gpa: int, value: int) -> None:
    raise RuntimeError(_WHY)


def _no_alloc() -> int:
    raise RuntimeError(_WHY)


#: What a stored SecureProcess.tables walks through: nothing.  The SK walks a trustlet's tables
#: through the processor it runs on (``page_tables``), never one captured when they were built.
DETACHED = PhysAccess(_no_read, _no_write, _no_alloc)


def page_tables(sk: SecureKernel, vp: Cpu, process: SecureProcess) -> PageTables:
    """The trustlet's page tables as the SK edits and walks them now, through ``vp``."""
    root = process.tables.root
    return PageTables(_sk_phys(sk, vp, process.table_pfns), root=root, frames=[])


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
    handle: int,
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
    table_pfns: list[int] = []
    phys = _sk_phys(sk, vp, table_pfns)
    tables = PageTables(phys)
    for index in range(256, 512):  # the kernel half: the Secure Kernel itself
        entry = phys.read_u64(sk.space.pt.root + index * 8)
        if entry:
            phys.write_u64(tables.root + index * 8, entry)
    user_rx = int(Pte.US)  # present, user, read-only, executable
    for i, pfn in enumerate(image_pfns):
        tables.map(IMAGE_BASE + i * PAGE_SIZE, pfn << PAGE_SHIFT, user_rx)
    user_rw = int(Pte.US | Pte.RW | Pte.NX)
    for i, pfn in enumerate(private):
        tables.map(PRIVATE_BASE + i * PAGE_SIZE, pfn << PAGE_SHIFT, user_rw)
    tables.phys = DETACHED  # no processor is kept in the process object
    routines = _routines(image)
    instance = os.urandom(16)  # "a 16-byte random number generated by SK at creation" (§3.3)
    process = SecureProcess(
        handle,
        trustlet_id,
        image.policy,
        image,
        instance,
        tables,
        image_pfns,
        private,
        routines,
        mailbox_key,
        table_pfns=table_pfns,
    )
    # The SKPROCESS page, from the SK's own pool (VTL0 has no right on it).
    process.object_va = sk.space.phys_va(sk.alloc_frame(vp) << PAGE_SHIFT)
    for fld, value in (
        (SkProcessLayout.TRUSTLET_ID, trustlet_id),
        (SkProcessLayout.MAILBOX_KEY, mailbox_key),
        (SkProcessLayout.DEBUG, process.policy_value(PolicyId.DEBUG) & 0xFFFF_FFFF),
        (SkProcessLayout.CAPABILITIES, process.policy_value(PolicyId.CAPABILITY) & 0xFFFF_FFFF),
        (SkProcessLayout.CRASH_DUMP, process.policy_value(PolicyId.CRASH_DUMP) & 0xFFFF_FFFF),
        (SkProcessLayout.SVN, process.svn & 0xFFFF_FFFF),
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


def run_thread(
    sk: SecureKernel, vp: Cpu, thread: SecureThread, routine: str, *args: int
) -> tuple[int, Any]:
    """Run ``routine`` of the trustlet at VTL1 CPL3 on ``vp``; (status, return value)."""
    process = thread.process
    va = process.routines.get(routine)
    if va is None or process.terminated:
        return 0xC000_0008, None  # STATUS_INVALID_HANDLE: no such entry in this image
    saved_cr3 = vp.read_cr(3)
    block = sk.processor_block(vp.index)
    current_before = vp.read_u64(block + _CURRENT)
    vp.write_u64(block + _CURRENT, process.object_va)
    thread.running = True
    vp.mov_to_cr(3, process.tables.root)
    status, value = 0, None
    try:
        # Into the trustlet through the gates: sysret to CPL3, its return comes back by syscall
        # (KeUserModeCallback's pattern, vbsim.hw.cpu.Cpu.user_call).
        value = vp.user_call(va, *args)
    except ThreadTerminated as stop:
        status = 0xC000_0005 if stop.vector is not None else 0xC000_0001
        sk.emit(vp, "ium", "trustlet-fault", "thread-terminated", reason=stop.reason)
    finally:
        thread.running = False
        if vp.vtl == 1 and vp.cpl == 0:
            vp.mov_to_cr(3, saved_cr3)
        vp.write_u64(block + _CURRENT, current_before)
    return status, value


def current(sk: SecureKernel, vp: Cpu) -> SecureProcess | None:
    """The trustlet this VP runs, as its SK processor block names it (read now)."""
    process = sk.process_objects.get(vp.read_u64(sk.prcb_va + vp.index * _PRCB_SIZE + _CURRENT))
    return process if isinstance(process, SecureProcess) else None


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
    return vp.read(KernelSpace.phys_va(pfn << PAGE_SHIFT), length)
