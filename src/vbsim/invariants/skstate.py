"""Invariant 6: which Secure Kernel pages may change after PHASE4_INIT, and when.

The SK's own frames (``sk.space.frames`` at attach time) fall into four classes:

- **scratch** — pages the SK or the hypervisor rewrite as a matter of course, whatever VTL0 asks:
  the hypercall parameter pages (``sk.params``), each VP's VP-assist page (the hypervisor writes
  the VTL entry reason there) and SynIC message page (intercept and IOMMU-fault messages), and
  the secure-call capture pages of ``sk.services.allocation`` (VTL0 data copied in before any
  check — a refused call writes them too).  Not checked.
- **allocation** — pages an *accepted* secure call writes: the secure-allocation arena
  (CREATE/FILL_SECURE_ALLOCATION) and the KDP secure-pool record page (COPY_PROTECTED_PAGE).
  They may change only inside a secure call that returns STATUS_SUCCESS.
- **tables** — the SK's own page-table frames: the processor sets Accessed/Dirty bits as the SK
  touches memory (its own action), so they are compared with bits 5 and 6 of every entry masked.
- **static** — everything else: code, the IDT, the key pages, the SKPG-like policy page, the
  dump-key page, the hypercall page ...  They never change after PHASE4_INIT.

Frames the SK takes later (trustlet page tables, storage pages) and the trustlets' own page-table
frames are the trustlets' state, not the SK's: they are not checked here (invariant 1 watches
their contents, invariant 4 who runs in them).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from vbsim.hw.ram import GuestRam
    from vbsim.sk.kernel import SecureKernel

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


def _gpn(sk: SecureKernel, va: int) -> int | None:
    leaf = sk.space.pt.lookup(va)
    if leaf is None:
        return None
    return (leaf & 0x000F_FFFF_FFFF_F000) >> PAGE_SHIFT


def classify(sk: SecureKernel) -> SkPages:
    from vbsim.sk.ium import process as ium
    from vbsim.sk.services import allocation, kdp

    own = set(sk.space.frames)
    tables = set(sk.space.pt.frames or [])
    labels: dict[int, str] = {}
    scratch: set[int] = {sk.params.in_gpa >> PAGE_SHIFT, sk.params.out_gpa >> PAGE_SHIFT}
    for number, pages in enumerate(sk.processors):
        scratch.add(pages.assist_gpa >> PAGE_SHIFT)
        scratch.add(pages.sim_gpa >> PAGE_SHIFT)
        labels[pages.assist_gpa >> PAGE_SHIFT] = f"vp{number}.assist"
        labels[pages.sim_gpa >> PAGE_SHIFT] = f"vp{number}.sim"
    alloc: set[int] = set()
    state = sk.ext.get(allocation.EXT)
    if isinstance(state, allocation.AllocationState):
        for va in state.capture:
            gpn = _gpn(sk, va)
            if gpn is not None:
                scratch.add(gpn)
                labels[gpn] = "capture"
        for index in range(state.arena_pages):
            gpn = _gpn(sk, state.arena_va + index * PAGE_SIZE)
            if gpn is not None:
                alloc.add(gpn)
                labels[gpn] = f"arena[{index}]"
        labels[state.policy_gpa >> PAGE_SHIFT] = "policy-page"
    pool = sk.ext.get(kdp.EXT)
    if isinstance(pool, kdp.KdpState):
        gpn = _gpn(sk, pool.table_va)
        if gpn is not None:
            alloc.add(gpn)
            labels[gpn] = "securepool-records"
    trustlet: set[int] = set()
    for process in sk.ext.get("ium.processes", {}).values():
        if isinstance(process, ium.SecureProcess):
            trustlet.update(process.tables.frames or [])
    for gpn in tables:
        labels.setdefault(gpn, "page-table")
    for gpn in sk.space.code_pages:
        labels.setdefault(gpn, "code")
    keys_va = sk.ext.get("keys.va")
    if isinstance(keys_va, int):
        gpn = _gpn(sk, keys_va)
        if gpn is not None:
            labels[gpn] = "vsm-keys"
    labels.setdefault(sk.hypercall_gpa >> PAGE_SHIFT, "hypercall-page")
    static = own - tables - scratch - alloc - trustlet
    return SkPages(
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
