"""LIVEDUMP_START, LIVEDUMP_ADD_BUFFER, LIVEDUMP_ABORT: the live-dump secure services, and the
write primitive of the published Secure Kernel exploit chain (vbs-internals §2.4 numbers 48/49/52
on build A, 54/55/58 on build B; §6 A8; Amar & King, "Breaking VSM by Attacking SecureKernel",
Black Hat USA 2020).

NT's live dump (``nt!IoCaptureLiveDump``) collects VTL0 buffers and asks the Secure Kernel for
what VTL1 may add; the SK keeps a context per dump, and NT adds each buffer to it by MDL.  The
record says the chain shaped the SK pool with CREATE_SECURE_IMAGE and LIVEDUMP_START allocations
and then used LIVEDUMP_ADD_BUFFER as a write-what-where.  How the real service went wrong is not
public; **the model's reading [U]**: NT names the buffer slot, and the unfixed SK writes the
descriptor — the MDL's StartVa, ByteCount and ByteOffset, all the caller's bytes — at that slot
without bounding it by the context's size, so slot ``SLOTS`` lands in the next pool block.  With
the pool shaped so that the next block is another object's body, sixteen attacker bytes replace
its first fields (for a secure allocation: where its buffer is and how big), and that object's
own service then writes wherever the attacker said.

Arguments (the model's; the real layout is not public):

- LIVEDUMP_START: no fields; the reply is the context's secure handle.
- LIVEDUMP_ADD_BUFFER: Field1 = the context's handle, Field2 = the buffer slot, Field3 = the MDL
  (NT's pointer; the SK uses its offset in the page), Field4 = the PFN of the page holding it.
- LIVEDUMP_ABORT: Field1 = the context's handle; the context is freed and its handle closed.

The fixed SK captures the MDL, demands a slot inside the context, a non-empty buffer, a PFN array
covering its span and every PFN VTL0 memory (page identity).  The legacy SK
(``policy.legacy.unchecked_securecall_params``) reads the MDL from VTL0 and checks none of it.
CVE-2020-0918 (``SkmmUnmapMdl`` on a fully controlled MDL) is not modelled: the SK maps nothing
for a live dump here, so there is no mapping for a forged MDL to tear down.

Decisions are trace events of kind ``securecall`` (mechanisms ``securecall.handle``,
``securecall.mdl``, ``securecall.pfn``, ``securecall.legacy``, ``livedump.buffer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk import objects
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import Reply
from vbsim.sk.layouts import Config, LiveDump, ObjectType, read_field, write_field
from vbsim.sk.services import allocation
from vbsim.sk.services.allocation import MDL_HEADER, refuse, span_pages
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

KIND = ObjectType.LIVEDUMP


def livedump_start(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    body = objects.alloc_block(sk, vp)
    handle = objects.insert(sk, vp, KIND, body) if body is not None else None
    if body is None or handle is None:
        if body is not None:
            objects.free_block(sk, vp, body)
        return refuse(sk, vp, "securecall.handle", "table-full", NtStatus.NO_MEMORY)
    sk.emit(vp, "securecall", "livedump.context", "created", handle=handle)
    return Reply(NtStatus.SUCCESS, [handle])


def _descriptor(
    sk: SecureKernel, vp: Cpu, mdl_gpa: int, unchecked: bool
) -> tuple[int, int, int, tuple[int, ...]] | Reply:
    """(StartVa, ByteCount, ByteOffset, PFNs) of the MDL at ``mdl_gpa``: from VTL0 memory as it
    stands (legacy), or from the SK's captured copy (fixed)."""
    length = PAGE_SIZE - (mdl_gpa & PAGE_MASK)
    if unchecked:
        sk.emit(vp, "securecall", "securecall.legacy", "unchecked", mdl_gpa=mdl_gpa)
        raw = vp.read(sk.space.phys_va(mdl_gpa), length)
    else:
        slot = allocation.acquire_capture(sk, vp)
        if slot is None:
            return refuse(sk, vp, "securecall.capture", "no-slot", NtStatus.NO_MEMORY)
        try:
            raw = allocation.capture(sk, vp, slot, mdl_gpa, length)
        finally:
            allocation.release_capture(sk, vp, slot)
    fields = MDL_HEADER.unpack_from(raw)
    size, start_va, byte_count, byte_offset = fields[1], fields[7], fields[8], fields[9]
    if not unchecked and not MDL_HEADER.size <= size <= len(raw):
        return refuse(sk, vp, "securecall.mdl", "size", NtStatus.INVALID_PARAMETER, size=size)
    count = max(0, min(size, len(raw)) - MDL_HEADER.size) // 8
    pfns = tuple(
        int.from_bytes(raw[MDL_HEADER.size + 8 * i : MDL_HEADER.size + 8 * i + 8], "little")
        for i in range(count)
    )
    return start_va, byte_count, byte_offset, pfns


def livedump_add_buffer(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    handle, index, mdl_pointer, mdl_pfn = args.fields[0:4]
    unchecked = sk.config(vp, Config.LEGACY_UNCHECKED) != 0
    bad = NtStatus.INVALID_PARAMETER
    context = objects.reference(sk, vp, handle, KIND)
    if isinstance(context, NtStatus):
        return Reply(context)
    index &= 0xFFFF_FFFF  # a ULONG slot number
    if not unchecked and index >= LiveDump.SLOTS:
        return refuse(sk, vp, "livedump.buffer", "slot", bad, slot=index)
    if not unchecked and not sk.vtl0_page(vp, mdl_pfn):
        sk.emit(vp, "securecall", "securecall.pfn", "refused", pfn=mdl_pfn)
        return refuse(sk, vp, "securecall.pfn", "mdl-pfn", bad, pfn=mdl_pfn)
    if not 0 <= mdl_pfn < sk.ram_pages(vp):  # even the legacy SK maps only RAM it knows
        return refuse(sk, vp, "securecall.pfn", "no-ram", bad, pfn=mdl_pfn)
    mdl_offset = mdl_pointer & PAGE_MASK
    if mdl_offset + MDL_HEADER.size > PAGE_SIZE:
        return refuse(sk, vp, "securecall.mdl", "header", bad)
    parsed = _descriptor(sk, vp, (mdl_pfn << PAGE_SHIFT) + mdl_offset, unchecked)
    if isinstance(parsed, Reply):
        return parsed
    start_va, byte_count, byte_offset, pfns = parsed
    if not unchecked:
        if byte_count == 0 or byte_offset >= PAGE_SIZE:
            return refuse(sk, vp, "securecall.mdl", "byte-count", bad, byte_count=byte_count)
        needed = span_pages(byte_offset, byte_count)
        if needed > len(pfns):
            return refuse(sk, vp, "securecall.mdl", "pfn-array", bad, needed=needed)
        for pfn in pfns[:needed]:
            if not sk.vtl0_page(vp, pfn):
                return refuse(sk, vp, "securecall.pfn", "data-pfn", bad, pfn=pfn)
    # The descriptor goes to the slot NT named (bounded above unless the SK is the legacy one).
    entry = context + LiveDump.BUFFERS + index * LiveDump.ENTRY
    write_field(vp, entry, LiveDump.START_VA, start_va)
    write_field(vp, entry, LiveDump.BYTE_COUNT, byte_count)
    write_field(vp, entry, LiveDump.BYTE_OFFSET, byte_offset)
    count = read_field(vp, context, LiveDump.COUNT)
    if index < LiveDump.SLOTS and index >= count:
        write_field(vp, context, LiveDump.COUNT, index + 1)
    sk.emit(
        vp,
        "securecall",
        "livedump.buffer",
        "added",
        handle=handle,
        slot=index,
        entry=entry,
        byte_count=byte_count,
    )
    return Reply(NtStatus.SUCCESS, [index])


def livedump_abort(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    handle = args.fields[0]
    context = objects.reference(sk, vp, handle, KIND)
    if isinstance(context, NtStatus):
        return Reply(context)
    objects.close(sk, vp, handle)
    objects.free_block(sk, vp, context)
    sk.emit(vp, "securecall", "livedump.context", "aborted", handle=handle)
    return Reply(NtStatus.SUCCESS)


def register(sk: SecureKernel) -> None:
    sk.handlers[Service.LIVEDUMP_START] = livedump_start
    sk.handlers[Service.LIVEDUMP_ADD_BUFFER] = livedump_add_buffer
    sk.handlers[Service.LIVEDUMP_ABORT] = livedump_abort
