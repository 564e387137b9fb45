"""Secure allocations: CREATE_SECURE_ALLOCATION / FILL_SECURE_ALLOCATION — and how the Secure
Kernel treats secure-call parameters (vbs-internals §2.3, §6 A8, A9).

Arguments (vbs-internals §2.3, McGarr's SkBridge examples):

- CREATE_SECURE_ALLOCATION: Field1 = size in bytes.  Returns a secure handle to an SK-owned
  buffer in VTL1 memory, sized in whole pages.
- FILL_SECURE_ALLOCATION: Field1 = handle, Field2 = offset into the allocation, Field3 = the MDL
  describing the VTL0 source buffer (NT's pointer; the SK uses only its offset within its page),
  Field4 = the PFN of the page holding that MDL.  The MDL has the real x64 layout
  (:data:`MDL_HEADER`, 0x30 bytes) followed by its PFN array.

The buffers are carved top-down from an *arena* of SK data pages, right below HVCI's
validated-hash records (``sk.services.hvci``, the SHA-256 per page that earned KX): SK data the
SK acts on, as the data Amar & King overwrote was (vbs-internals §6 A8; which structure sat behind
the real buffer is not public, the model's layout puts HVCI's records there).  The first
allocation therefore ends exactly where the records start.

Everything VTL0 passes is hostile (the SK is in PHASE4 after boot): the handle is looked up and
type-checked; the MDL page and every data page must be VTL0 memory (never SK or trustlet pages:
the SK's page-identity knowledge, ``SecureKernel.own_page``); the MDL is *captured* — copied
once into a VTL1 capture page — before any field is checked, and only the captured copy is
used; ByteOffset, ByteCount, the PFN count and offset + ByteCount are bounded by the MDL's own
size and the allocation.  Before copying, the SK asks NT to make the source pages resident (a
normal call, vbs-internals §2.5: the SK owns no paging), so VTL0 code runs between the checks
and the copy.

Legacy switches (``policy.legacy``) bring back the historical bugs:

- ``unchecked_securecall_params``: no ownership check of the MDL and data PFNs (the SK reads from
  SK or trustlet memory the attacker names) and no bound on ByteCount or the offset: the copy runs
  past the allocation into the SK data after it (CVE-2020-0917 class, unchecked
  ``TransferMdl->ByteCount``);
- ``securecall_double_fetch``: the SK checks the MDL *in VTL0 memory* and reads it again from
  VTL0 memory for the copy, after the normal call.  During that normal call NT's code runs (on a
  compromised NT: the attacker's), so it can enlarge ByteCount or swap a PFN between the check
  and the use — a real time-of-check/time-of-use window.

Decisions are trace events of kind ``securecall`` with mechanisms ``securecall.handle``,
``securecall.pfn``, ``securecall.mdl``, ``securecall.capture`` and ``securecall.legacy``.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk import objects
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import NormalCall, Reply
from vbsim.sk.layouts import Capture, Config, Mem, ObjectType, State, read_field, write_field
from vbsim.sk.layouts import SecureAllocation as AllocationLayout
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

EXT = "allocation"
KIND = ObjectType.SECURE_ALLOCATION

#: x64 MDL header (wdm.h): Next, Size, MdlFlags, AllocationProcessorNumber, Reserved, Process,
#: MappedSystemVa, StartVa, ByteCount, ByteOffset — 0x30 bytes; the PFN array follows.
MDL_HEADER = struct.Struct("<QHHHHQQQII")
assert MDL_HEADER.size == 0x30
MDL_BYTECOUNT_OFFSET = 0x28
MDL_BYTEOFFSET_OFFSET = 0x2C
#: The most PFNs an MDL in one page can carry.
MDL_MAX_PFNS = (PAGE_SIZE - MDL_HEADER.size) // 8

#: Pages of SK memory the secure-allocation arena holds (the model's choice).
ARENA_PAGES = 8
#: Capture pages (VTL1) a secure call may hold at once; a nested call beyond them gets
#: STATUS_NO_MEMORY rather than sharing a buffer.
CAPTURE_SLOTS = 4
#: The model's number for the normal call "get physical pages" (vbs-internals §2.5 names the
#: call — resolving through MmAccessFault — but the enum is not public: the number is [U]).
NORMAL_GET_PHYSICAL_PAGES = 0x0102


@dataclass(frozen=True)
class AllocationState:
    """Where the secure-allocation machinery is in SK memory (addresses only): the arena, the
    capture pages, and the SK state block whose ARENA_TOP and CAPTURE_BUSY fields say how much
    of the arena is handed out, and the capture control page (which capture pages a call
    holds)."""

    arena_va: int
    arena_pages: int
    behind_va: int  # the first SK data page behind the arena (HVCI's hash records)
    state_va: int  # the SK state block (``layouts.State``)
    capture: tuple[int, ...] = ()  # capture page VAs
    control_va: int = 0  # ``layouts.Capture``: which capture pages are held

    def top(self, vp: Mem) -> int:
        """Allocations are carved downward from here (initially ``behind_va``)."""
        return read_field(vp, self.state_va, State.ARENA_TOP) or self.behind_va


@dataclass(frozen=True, slots=True)
class Mdl:
    """An MDL as the SK parsed it (from its captured copy, or — legacy — from VTL0)."""

    size: int
    byte_count: int
    byte_offset: int
    start_va: int
    pfns: tuple[int, ...]


def mdl_bytes(
    pfns: list[int], byte_count: int, byte_offset: int = 0, start_va: int = 0, size: int = -1
) -> bytes:
    """An MDL as NT builds one (``size`` defaults to the header plus the PFN array)."""
    if size < 0:
        size = MDL_HEADER.size + 8 * len(pfns)
    header = MDL_HEADER.pack(0, size & 0xFFFF, 0, 0, 0, 0, 0, start_va, byte_count, byte_offset)
    return header + b"".join((p & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") for p in pfns)


def span_pages(byte_offset: int, byte_count: int) -> int:
    """ADDRESS_AND_SIZE_TO_SPAN_PAGES."""
    return ((byte_offset & PAGE_MASK) + byte_count + PAGE_MASK) >> PAGE_SHIFT


def state(sk: SecureKernel) -> AllocationState:
    value = sk.allocation
    assert isinstance(value, AllocationState)
    return value


# -- helpers shared with the KDP services --------------------------------------------------------
def refuse(
    sk: SecureKernel, vp: Cpu, mechanism: str, reason: str, status: NtStatus, **d: int
) -> Reply:
    sk.emit(vp, "securecall", mechanism, "refused", reason=reason, **d)
    return Reply(status)


def acquire_capture(sk: SecureKernel, vp: Mem) -> int | None:
    """A free capture page (its VA), marked busy in the SK state block; None: all are held."""
    st = state(sk)
    busy = read_field(vp, st.control_va, Capture.BUSY)
    for index, va in enumerate(st.capture):
        if not busy >> index & 1:
            write_field(vp, st.control_va, Capture.BUSY, busy | 1 << index)
            return va
    return None


def release_capture(sk: SecureKernel, vp: Mem, va: int) -> None:
    st = state(sk)
    if va in st.capture:
        busy = read_field(vp, st.control_va, Capture.BUSY)
        index = st.capture.index(va)
        write_field(vp, st.control_va, Capture.BUSY, busy & ~(1 << index))


def capture(sk: SecureKernel, vp: Cpu, slot: int, gpa: int, length: int) -> bytes:
    """Copy ``length`` bytes of VTL0 memory at ``gpa`` into the VTL1 capture page ``slot`` and
    return what the SK now holds (it never reads the VTL0 copy again)."""
    vp.write(slot, vp.read(sk.space.phys_va(gpa), length))
    data = vp.read(slot, length)
    sk.emit(vp, "securecall", "securecall.capture", "captured", gpa=gpa, length=length)
    return data


# -- CREATE_SECURE_ALLOCATION --------------------------------------------------------------------
def create_secure_allocation(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    size = args.fields[0]
    st = state(sk)
    if not 0 < size <= st.arena_pages * PAGE_SIZE:
        return refuse(sk, vp, "securecall.size", "size", NtStatus.INVALID_PARAMETER, size=size)
    pages = -(-size // PAGE_SIZE)
    top = st.top(vp)
    if top - pages * PAGE_SIZE < st.arena_va:
        return refuse(sk, vp, "securecall.size", "arena-full", NtStatus.NO_MEMORY, size=size)
    body = objects.alloc_block(sk, vp)
    handle = objects.insert(sk, vp, KIND, body) if body is not None else None
    if body is None or handle is None:
        if body is not None:
            objects.free_block(sk, vp, body)
        return refuse(sk, vp, "securecall.handle", "table-full", NtStatus.NO_MEMORY, size=size)
    va = top - pages * PAGE_SIZE
    write_field(vp, st.state_va, State.ARENA_TOP, va)
    vp.write(va, bytes(pages * PAGE_SIZE))
    write_field(vp, body, AllocationLayout.VA, va)
    write_field(vp, body, AllocationLayout.SIZE, size)
    write_field(vp, body, AllocationLayout.PAGES, pages)
    sk.emit(vp, "securecall", "securecall.allocation", "created", handle=handle, size=size, va=va)
    return Reply(NtStatus.SUCCESS, [handle])


# -- FILL_SECURE_ALLOCATION ----------------------------------------------------------------------
def _parse(raw: bytes) -> tuple[int, int, int, int]:
    """(Size, StartVa, ByteCount, ByteOffset) of an MDL header."""
    fields = MDL_HEADER.unpack_from(raw)
    return fields[1], fields[7], fields[8], fields[9]


def _read_vtl0_mdl(sk: SecureKernel, vp: Cpu, mdl_gpa: int, count: int) -> Mdl:
    """Legacy: read the MDL straight from VTL0 memory, each time it is needed (no capture)."""
    header = vp.read(sk.space.phys_va(mdl_gpa), MDL_HEADER.size)
    size, start_va, byte_count, byte_offset = _parse(header)
    raw = vp.read(sk.space.phys_va(mdl_gpa + MDL_HEADER.size), 8 * count) if count else b""
    pfns = tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
    return Mdl(size, byte_count, byte_offset, start_va, pfns)


def _captured(vp: Cpu, slot: int, size: int) -> Mdl:
    """The MDL as the capture page in SK memory holds it now (``size`` bytes, checked)."""
    raw = vp.read(slot, size)
    _, start_va, byte_count, byte_offset = _parse(raw)
    count = (size - MDL_HEADER.size) // 8
    pfns = struct.unpack_from(f"<{count}Q", raw, MDL_HEADER.size)
    return Mdl(size, byte_count, byte_offset, start_va, pfns)


def fill_secure_allocation(
    sk: SecureKernel, vp: Cpu, args: SecureCallArgs
) -> Generator[NormalCall, SecureCallArgs, Reply]:
    handle, offset, mdl_pointer, mdl_pfn = args.fields[0:4]
    # The legacy switches are the SK's configuration (in its memory, copied from the boot policy).
    unchecked = sk.config(vp, Config.LEGACY_UNCHECKED) != 0
    double_fetch = sk.config(vp, Config.LEGACY_DOUBLE_FETCH) != 0  # independent of the above
    obj = objects.reference(sk, vp, handle, KIND)
    if isinstance(obj, NtStatus):
        return Reply(obj)
    # The object's body in SK memory says where the buffer is and how big (read now).
    alloc_va = read_field(vp, obj, AllocationLayout.VA)
    alloc_size = read_field(vp, obj, AllocationLayout.SIZE)
    if not unchecked and not sk.vtl0_page(vp, mdl_pfn):
        return refuse(sk, vp, "securecall.pfn", "mdl-pfn", NtStatus.INVALID_PARAMETER, pfn=mdl_pfn)
    if not 0 <= mdl_pfn < sk.ram_pages(vp):
        # Even the legacy SK maps only RAM it knows (a PFN beyond RAM has no mapping).
        return refuse(sk, vp, "securecall.pfn", "no-ram", NtStatus.INVALID_PARAMETER, pfn=mdl_pfn)
    mdl_offset = mdl_pointer & PAGE_MASK
    if mdl_offset + MDL_HEADER.size > PAGE_SIZE:
        return refuse(sk, vp, "securecall.mdl", "header", NtStatus.INVALID_PARAMETER)
    mdl_gpa = (mdl_pfn << PAGE_SHIFT) + mdl_offset
    slot = acquire_capture(sk, vp)
    if slot is None:
        return refuse(sk, vp, "securecall.capture", "no-slot", NtStatus.NO_MEMORY)
    # A call suspended in its normal call is abandoned (GeneratorExit) only when the machine is
    # torn down: then no processor exists to release the slot with, and none is needed.
    abandoned = False
    try:
        if unchecked or double_fetch:
            sk.emit(
                vp,
                "securecall",
                "securecall.legacy",
                "unchecked" if unchecked else "double-fetch",
                mdl_gpa=mdl_gpa,
            )
            mdl = _read_vtl0_mdl(sk, vp, mdl_gpa, 0)
            mdl = _read_vtl0_mdl(sk, vp, mdl_gpa, _pfn_count(mdl, mdl_offset, clamp=True))
        else:
            raw = capture(sk, vp, slot, mdl_gpa, PAGE_SIZE - mdl_offset)
            size = _parse(raw)[0]
            if not MDL_HEADER.size <= size <= len(raw):
                return refuse(
                    sk, vp, "securecall.mdl", "size", NtStatus.INVALID_PARAMETER, size=size
                )
            mdl = _captured(vp, slot, size)
        if not unchecked:
            reply = _check(sk, vp, mdl, offset, alloc_size)
            if reply is not None:
                return reply
        # Make the source resident: NT runs here (vbs-internals §2.5).
        answer = yield NormalCall(NORMAL_GET_PHYSICAL_PAGES, [mdl_pfn, *mdl.pfns[:8]])
        status = answer.fields[0] if answer.fields else int(NtStatus.UNSUCCESSFUL)
        if status != NtStatus.SUCCESS:
            return Reply(status)
        if not (unchecked or double_fetch):
            # The SK works from its captured copy in SK memory, and from the allocation object,
            # as they stand now: what it checked is what a VTL1 writer has not changed since
            # (values a real SK keeps in its own memory across the call, not in registers).
            mdl = _captured(vp, slot, mdl.size)
            alloc_va = read_field(vp, obj, AllocationLayout.VA)
        if double_fetch:
            # The historical bug: the fields are fetched from VTL0 memory a second time.
            again = _read_vtl0_mdl(sk, vp, mdl_gpa, 0)
            mdl = _read_vtl0_mdl(sk, vp, mdl_gpa, _pfn_count(again, mdl_offset, clamp=True))
            sk.emit(
                vp,
                "securecall",
                "securecall.legacy",
                "refetched",
                byte_count=mdl.byte_count,
                pfns=list(mdl.pfns),
            )
        copied = _copy(sk, vp, mdl, alloc_va + offset)
    except GeneratorExit:
        abandoned = True
        raise
    finally:
        if not abandoned:
            release_capture(sk, vp, slot)
    sk.emit(
        vp,
        "securecall",
        "securecall.mdl",
        "filled",
        handle=handle,
        offset=offset,
        byte_count=copied,
    )
    return Reply(NtStatus.SUCCESS, [copied])


def _pfn_count(mdl: Mdl, mdl_offset: int, clamp: bool) -> int:
    count = span_pages(mdl.byte_offset, mdl.byte_count)
    if clamp:
        # Even the legacy SK reads its PFN array from the MDL's page only.
        count = min(count, (PAGE_SIZE - mdl_offset - MDL_HEADER.size) // 8)
    return count


def _check(sk: SecureKernel, vp: Cpu, mdl: Mdl, offset: int, alloc_size: int) -> Reply | None:
    """Every check on the captured MDL; None when it may be used."""
    bad = NtStatus.INVALID_PARAMETER
    if mdl.byte_offset >= PAGE_SIZE:
        return refuse(sk, vp, "securecall.mdl", "byte-offset", bad, byte_offset=mdl.byte_offset)
    if mdl.byte_count == 0 or mdl.byte_count > alloc_size:
        return refuse(sk, vp, "securecall.mdl", "byte-count", bad, byte_count=mdl.byte_count)
    if offset > alloc_size - mdl.byte_count:
        return refuse(
            sk, vp, "securecall.mdl", "offset", bad, offset=offset, byte_count=mdl.byte_count
        )
    count = span_pages(mdl.byte_offset, mdl.byte_count)
    if count > len(mdl.pfns):
        return refuse(sk, vp, "securecall.mdl", "pfn-array", bad, needed=count)
    for pfn in mdl.pfns[:count]:
        if not sk.vtl0_page(vp, pfn):
            return refuse(sk, vp, "securecall.pfn", "data-pfn", bad, pfn=pfn)
    sk.emit(
        vp,
        "securecall",
        "securecall.mdl",
        "validated",
        byte_count=mdl.byte_count,
        byte_offset=mdl.byte_offset,
        pages=count,
    )
    return None


def _copy(sk: SecureKernel, vp: Cpu, mdl: Mdl, dest: int) -> int:
    """Copy ``ByteCount`` bytes described by ``mdl`` to SK address ``dest`` — exactly what the
    (possibly unchecked) fields say: a bad ByteCount writes past the allocation."""
    remaining = mdl.byte_count
    page_offset = mdl.byte_offset & PAGE_MASK
    copied = 0
    ram_pages = sk.ram_pages(vp)
    for pfn in mdl.pfns:
        if remaining <= 0:
            break
        chunk = min(remaining, PAGE_SIZE - page_offset)
        if not 0 <= pfn < ram_pages:
            break  # nothing maps it: the copy stops (no VTL1 mapping exists)
        data = vp.read(sk.space.phys_va((pfn << PAGE_SHIFT) + page_offset), chunk)
        vp.write((dest + copied) & 0xFFFF_FFFF_FFFF_FFFF, data)
        copied += chunk
        remaining -= chunk
        page_offset = 0
    return copied


# -- registration --------------------------------------------------------------------------------
def register(sk: SecureKernel) -> None:
    """Loader: the capture pages, then the arena; HVCI's tables follow it (``register_all``
    registers ``hvci`` next, so its hash records are the pages right behind the arena)."""
    capture_pages = tuple(sk.builder().alloc_data(1)[0] for _ in range(CAPTURE_SLOTS))
    control_va, _ = sk.builder().alloc_data(1)
    arena_va, _ = sk.builder().alloc_data(ARENA_PAGES)
    behind = arena_va + ARENA_PAGES * PAGE_SIZE
    sk.allocation = AllocationState(
        arena_va, ARENA_PAGES, behind, sk.state_va, capture_pages, control_va
    )
    sk.handlers[Service.CREATE_SECURE_ALLOCATION] = create_secure_allocation
    sk.handlers[Service.FILL_SECURE_ALLOCATION] = fill_secure_allocation
