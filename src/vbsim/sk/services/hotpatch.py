"""OBTAIN_PATCH_UNDO_TABLE: the hot-patch undo-table service, where CVE-2020-0917 lived
(vbs-internals §2.4 table B number 69, §6 A8; Amar & King, "Breaking VSM by Attacking
SecureKernel", Black Hat USA 2020).

The record: CVE-2020-0917 was an out-of-bounds write in ``SkmmObtainHotPatchUndoTable`` through an
unchecked ``TransferMdl->ByteCount``; CVE-2020-0918 was ``SkmmUnmapMdl`` on a fully controlled MDL;
the published chain's write primitive was ``LIVEDUMP_ADD_BUFFER``.  The service exists only in
build B's table (68 OBTAIN_PATCH_UNDO_TABLE_SIZE, 69 OBTAIN_PATCH_UNDO_TABLE); the 2019-era table A
has no number for it.

Arguments (the model's; the real signature is not public): Field1 = the TransferMdl (NT's pointer;
the SK uses its offset within its page), Field2 = the PFN of the page holding it.  The MDL
describes the VTL0 buffer that receives the undo table; the reply is the table's size.

The undo table (SK data, ``UNDO_TABLE_PAGES`` pages; model layout: u32 record count, u32 size in
bytes, then the records of applied hot patches — none in the model, so zeros) is copied out page by
page to the MDL's PFNs.

- The fixed SK captures the MDL, demands ``ByteCount >= table size`` (the check the bug lacked),
  a PFN array covering the span, and that every one of those PFNs is VTL0 memory (page identity).
- The legacy SK (``policy.legacy.unchecked_securecall_params``) — **the model's reading [U] of
  Amar & King's one-line description**: it validates the PFNs of ``ByteCount``'s span only, then
  copies the whole table, taking further PFNs from the array beyond that span (attacker bytes after
  the MDL in its VTL0 page) unchecked: the write lands in whatever page the attacker named, the
  Secure Kernel's own included.  ``SkmmUnmapMdl`` (CVE-2020-0918) is not modelled; the chain's
  LIVEDUMP_ADD_BUFFER write is :mod:`vbsim.sk.services.livedump` (scenario A8-LIVEDUMP).

Decisions are trace events of kind ``securecall`` (mechanisms ``securecall.mdl``,
``securecall.pfn``, ``securecall.legacy``, ``securecall.capture``, ``hotpatch.undo``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import Reply
from vbsim.sk.layouts import Config
from vbsim.sk.services import allocation
from vbsim.sk.services.allocation import MDL_HEADER, refuse, span_pages
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

EXT = "hotpatch"
#: The undo table's size in SK pages (the model's: larger than one page, so a one-page buffer is
#: too small for it).
UNDO_TABLE_PAGES = 2
UNDO_TABLE_SIZE = UNDO_TABLE_PAGES * PAGE_SIZE
#: Undo-table header (model layout): record count, size in bytes.
UNDO_HEADER = struct.Struct("<II")


@dataclass(frozen=True)
class HotPatchState:
    table_va: int  # the undo table in SK data pages


def state(sk: SecureKernel) -> HotPatchState:
    value = sk.hotpatch
    assert isinstance(value, HotPatchState)
    return value


def _mdl_from_vtl0(sk: SecureKernel, vp: Cpu, mdl_gpa: int) -> tuple[int, int, list[int]]:
    """Legacy: ByteCount, ByteOffset and every PFN slot left in the MDL's page, read from VTL0."""
    raw = vp.read(sk.space.phys_va(mdl_gpa), PAGE_SIZE - (mdl_gpa & PAGE_MASK))
    fields = MDL_HEADER.unpack_from(raw)
    slots = (len(raw) - MDL_HEADER.size) // 8
    pfns = list(struct.unpack_from(f"<{slots}Q", raw, MDL_HEADER.size))
    return fields[8], fields[9], pfns


def _captured(sk: SecureKernel, vp: Cpu, mdl_gpa: int) -> tuple[int, int, list[int]] | Reply:
    slot = allocation.acquire_capture(sk, vp)
    if slot is None:
        return refuse(sk, vp, "securecall.capture", "no-slot", NtStatus.NO_MEMORY)
    try:
        raw = allocation.capture(sk, vp, slot, mdl_gpa, PAGE_SIZE - (mdl_gpa & PAGE_MASK))
    finally:
        allocation.release_capture(sk, vp, slot)
    fields = MDL_HEADER.unpack_from(raw)
    size, byte_count, byte_offset = fields[1], fields[8], fields[9]
    if not MDL_HEADER.size <= size <= len(raw):
        return refuse(sk, vp, "securecall.mdl", "size", NtStatus.INVALID_PARAMETER, size=size)
    count = (size - MDL_HEADER.size) // 8
    return byte_count, byte_offset, list(struct.unpack_from(f"<{count}Q", raw, MDL_HEADER.size))


def obtain_patch_undo_table(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    mdl_pointer, mdl_pfn = args.fields[0], args.fields[1]
    unchecked = sk.config(vp, Config.LEGACY_UNCHECKED) != 0
    bad = NtStatus.INVALID_PARAMETER
    if not sk.vtl0_page(vp, mdl_pfn):
        sk.emit(vp, "securecall", "securecall.pfn", "refused", pfn=mdl_pfn)
        return refuse(sk, vp, "securecall.pfn", "mdl-pfn", bad, pfn=mdl_pfn)
    mdl_offset = mdl_pointer & PAGE_MASK
    if mdl_offset + MDL_HEADER.size > PAGE_SIZE:
        return refuse(sk, vp, "securecall.mdl", "header", bad)
    mdl_gpa = (mdl_pfn << PAGE_SHIFT) + mdl_offset
    if unchecked:
        sk.emit(vp, "securecall", "securecall.legacy", "unchecked", mdl_gpa=mdl_gpa)
        byte_count, byte_offset, pfns = _mdl_from_vtl0(sk, vp, mdl_gpa)
        checked = span_pages(byte_offset & PAGE_MASK, byte_count)
    else:
        parsed = _captured(sk, vp, mdl_gpa)
        if isinstance(parsed, Reply):
            return parsed
        byte_count, byte_offset, pfns = parsed
        if byte_offset or byte_count < UNDO_TABLE_SIZE:
            # The check CVE-2020-0917 lacked: the buffer must hold the whole table.
            return refuse(sk, vp, "securecall.mdl", "byte-count", bad, byte_count=byte_count)
        checked = span_pages(0, UNDO_TABLE_SIZE)
        if checked > len(pfns):
            return refuse(sk, vp, "securecall.mdl", "pfn-array", bad, needed=checked)
    for pfn in pfns[:checked]:
        if not sk.vtl0_page(vp, pfn):
            return refuse(sk, vp, "securecall.pfn", "data-pfn", bad, pfn=pfn)
    table = vp.read(state(sk).table_va, UNDO_TABLE_SIZE)
    written = []
    ram_pages = sk.ram_pages(vp)
    for index in range(UNDO_TABLE_PAGES):
        if index >= len(pfns) or not 0 <= pfns[index] < ram_pages:
            break  # nothing maps it: the copy stops
        chunk = table[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
        vp.write(sk.space.phys_va(pfns[index] << PAGE_SHIFT), chunk)
        written.append(pfns[index])
    sk.emit(
        vp,
        "securecall",
        "hotpatch.undo",
        "copied",
        byte_count=byte_count,
        checked_pages=checked,
        pfns=written,
    )
    return Reply(NtStatus.SUCCESS, [UNDO_TABLE_SIZE])


def register(sk: SecureKernel) -> None:
    """Loader: the undo table's pages (contiguous), with its header (no patches applied)."""
    loader = sk.loader
    assert loader is not None
    table_va, table_gpa = sk.builder().alloc_data(UNDO_TABLE_PAGES, contiguous=True)
    loader.write(table_gpa, UNDO_HEADER.pack(0, UNDO_TABLE_SIZE))
    sk.hotpatch = HotPatchState(table_va)
    sk.handlers[Service.OBTAIN_PATCH_UNDO_TABLE] = obtain_patch_undo_table
