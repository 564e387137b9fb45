"""Kernel Data Protection in the Secure Kernel (vbs-internals §5.2, §6 A6, A28).

**Static KDP** (``MmProtectDriverSection``): PROTECT_KERNEL_DATA_PAGE on build B, and on build A
(which has no such number) REGISTER_PROTECTED_PAGE — the mapping is [U] in vbs-internals §5.2.
Field1 = first page's VA, Field2 = page count, Field3 = flags (bit 0: the model's
MM_PROTECT_DRIVER_SECTION_ALLOW_UNLOAD; unload is not modelled, so no path ever reverses a
protection).  The SK translates each VA itself (NT's tables, or its HLAT tables if the page is
already pinned), and refuses unless every page is VTL0 memory (STATUS_INVALID_PARAMETER),
supervisor and not executable (STATUS_INVALID_PAGE_PROTECTION, as Windows does for an executable
section), and the build has KDP (STATUS_NOT_SUPPORTED otherwise: a Secure Kernel from before 20H1
has no such service.  STATUS_INVALID_DEVICE_STATE is not the SK's answer: MS Learn documents it
for "VSM is currently disabled" only, which NT decides before any secure call).  Then VTL0's
SLAT rights on those pages become R — no W, no KX, no UX — for the whole OS, owner included,
irreversibly; with HVPT the VA → GPA translation is pinned too (:mod:`vbsim.sk.hvpt`).  A VTL0
write afterwards is a SLAT refusal → secure intercept → #GP → NT bugcheck.

**Dynamic KDP** (secure pool; build B only, INITIALIZE_SECURE_POOL exists there alone):

- INITIALIZE_SECURE_POOL: Field1 = first PFN, Field2 = page count, Field3 = the pool's VA in NT
  (each page must translate to its PFN).  The pages become VTL0 read-only; returns a handle.
- COPY_PROTECTED_PAGE (the model's use of that name, [U]: the services behind ExAllocatePool3's
  secure-pool parameters and ExSecurePoolUpdate are not in vbs-internals §2.4): Field1 = pool
  handle, Field2 = tag, Field3 = allocation VA, Field4 = cookie, Field5 = offset, Field6 = size,
  Field7 = PFN of the VTL0 source, Field8 = byte offset of the source in that page, Field9 = flags
  (bit 0: allocate — Field3 ignored, Field5 must be 0, the SK picks the block and records its tag
  and cookie; returns the allocation's VA).  An update must name the exact start of a live block
  of that pool, with its tag and cookie, and stay inside it.  Tags and cookies live in an SK data
  page (VTL1 RAM), never in the VTL0-readable pool.  NT's ExSecurePoolUpdate bugchecks with
  BAD_POOL_CALLER when the SK refuses (vbs-internals §5.2).

Decisions are trace events of kind ``kdp`` (mechanisms ``kdp.static``, ``kdp.policy``,
``securepool.init``, ``securepool.block``, ``securepool.tag``, ``securepool.cookie``,
``securepool.bounds``) and ``securecall`` for argument checks.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hv.defs import HvMapGpaFlags
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk import hvpt, objects
from vbsim.sk import layouts as L
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import Reply
from vbsim.sk.layouts import Config, Mem, ObjectType, read_field, write_field
from vbsim.sk.layouts import SecurePool as PoolLayout
from vbsim.sk.services import allocation
from vbsim.sk.sscn import Service

R = int(HvMapGpaFlags.READABLE)  # HV_MAP_GPA_READABLE (TLFS; vsm-spec §3.1)

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

EXT = "kdp"
POOL_KIND = ObjectType.SECURE_POOL
#: MM_PROTECT_DRIVER_SECTION_ALLOW_UNLOAD (the model's value for the documented flag).
ALLOW_UNLOAD = 0x1
MAX_STATIC_PAGES = 256
MAX_POOL_PAGES = 64
COPY_ALLOCATE = 0x1
POOL_ALIGN = 16
#: A block record in the SK's pool table: pool handle, offset, size, tag, flags, cookie.
POOL_RECORD = struct.Struct("<QIIIIQ")
RECORD_LIVE = 1
RECORDS = PAGE_SIZE // POOL_RECORD.size


@dataclass(frozen=True)
class KdpState:
    """Where KDP's state lives in SK memory (addresses only)."""

    table_va: int  # SK data page holding secure-pool block records (tags, cookies)
    owners_va: int  # one byte per GPA page: layouts.Kdp.NONE / STATIC / POOL
    owners_gpa: int
    pages: int

    def owner(self, vp: Mem, gpn: int) -> int:
        return vp.read(self.owners_va + gpn, 1)[0] if 0 <= gpn < self.pages else L.Kdp.NONE

    def owners(self, vp: Mem) -> bytes:
        """The whole table (one read) for checks over many pages."""
        return vp.read(self.owners_va, self.pages)

    def set_owner(self, vp: Mem, gpns: list[int], owner: int) -> None:
        for gpn in gpns:
            if 0 <= gpn < self.pages:
                vp.write(self.owners_va + gpn, bytes([owner]))


def state(sk: SecureKernel) -> KdpState:
    value = sk.kdp
    assert isinstance(value, KdpState)
    return value


def is_protected(sk: SecureKernel, vp: Mem, gpn: int) -> bool:
    """Whether KDP (static or secure pool) owns this VTL0 page: no other service may make it
    writable for VTL0 again (read from KDP's table in SK memory)."""
    st = sk.kdp
    return isinstance(st, KdpState) and st.owner(vp, gpn) != L.Kdp.NONE


def protected(sk: SecureKernel, vp: Mem, gpns: list[int]) -> set[int]:
    """The pages of ``gpns`` KDP owns (one read of the table when there are many)."""
    st = sk.kdp
    if not isinstance(st, KdpState) or not gpns:
        return set()
    if len(gpns) <= 8:
        return {gpn for gpn in gpns if st.owner(vp, gpn) != L.Kdp.NONE}
    table = st.owners(vp)
    return {gpn for gpn in gpns if 0 <= gpn < st.pages and table[gpn] != L.Kdp.NONE}


def _kdp(sk: SecureKernel, vp: Cpu, mechanism: str, outcome: str, **d: object) -> None:
    sk.emit(vp, "kdp", mechanism, outcome, **d)


def _refuse(
    sk: SecureKernel, vp: Cpu, mechanism: str, reason: str, status: NtStatus, **d: int
) -> Reply:
    _kdp(sk, vp, mechanism, "refused", reason=reason, status=int(status), **d)
    return Reply(status)


def _enabled(sk: SecureKernel, vp: Cpu) -> bool:
    if sk.config(vp, Config.KDP):
        return True
    _kdp(sk, vp, "kdp.policy", "disabled")
    return False


def _kernel_range(va: int, pages: int) -> bool:
    return not va & PAGE_MASK and va >> 63 == 1 and va + pages * PAGE_SIZE <= 1 << 64


def _data_pages(
    sk: SecureKernel, vp: Cpu, va: int, pages: int, mechanism: str
) -> list[tuple[int, hvpt.Mapping]] | Reply:
    """Translate and vet each page: mapped, VTL0, supervisor, not executable, not KDP's yet."""
    st = state(sk)
    found: list[tuple[int, hvpt.Mapping]] = []
    cr3 = hvpt.vtl0_cr3(sk, vp)
    for i in range(pages):
        page_va = va + i * PAGE_SIZE
        m = hvpt.translate(sk, vp, page_va, cr3)
        if m is None:
            return _refuse(sk, vp, mechanism, "unmapped", NtStatus.INVALID_PARAMETER, va=page_va)
        gpn = m.gpa >> PAGE_SHIFT
        if not sk.vtl0_page(vp, gpn):
            sk.emit(vp, "securecall", "securecall.pfn", "refused", pfn=gpn, va=page_va)
            return _refuse(sk, vp, mechanism, "not-vtl0", NtStatus.INVALID_PARAMETER, pfn=gpn)
        if m.user:
            return _refuse(sk, vp, mechanism, "user-page", NtStatus.INVALID_PARAMETER, va=page_va)
        if not m.nx:
            return _refuse(
                sk, vp, mechanism, "executable", NtStatus.INVALID_PAGE_PROTECTION, va=page_va
            )
        if st.owner(vp, gpn) == L.Kdp.POOL:
            return _refuse(sk, vp, mechanism, "secure-pool", NtStatus.INVALID_PARAMETER, pfn=gpn)
        found.append((page_va, m))
    return found


# -- static KDP ----------------------------------------------------------------------------------
def protect_kernel_data(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    va, pages, flags = args.fields[0], args.fields[1], args.fields[2]
    if not _enabled(sk, vp):
        return Reply(NtStatus.NOT_SUPPORTED)
    bad = NtStatus.INVALID_PARAMETER
    if flags & ~ALLOW_UNLOAD:
        return _refuse(sk, vp, "kdp.static", "flags", bad, flags=flags)
    if not 0 < pages <= MAX_STATIC_PAGES or not _kernel_range(va, pages):
        return _refuse(sk, vp, "kdp.static", "range", bad, va=va, pages=pages)
    found = _data_pages(sk, vp, va, pages, "kdp.static")
    if isinstance(found, Reply):
        return found
    st = state(sk)
    new = [
        (page_va, m) for page_va, m in found if st.owner(vp, m.gpa >> PAGE_SHIFT) != L.Kdp.STATIC
    ]
    gpns = [m.gpa >> PAGE_SHIFT for _, m in new]
    if not new:
        # MS Learn MmProtectDriverSection: STATUS_ALREADY_COMMITTED, "the specified section is
        # already protected" (nothing changes: the protection is irreversible anyway).
        return _refuse(sk, vp, "kdp.static", "already-protected", NtStatus.ALREADY_COMMITTED)
    if not sk.set_vtl0_rights(vp, gpns, R):
        return _refuse(sk, vp, "kdp.static", "slat", NtStatus.UNSUCCESSFUL)
    st.set_owner(vp, gpns, L.Kdp.STATIC)
    pinned = hvpt.pin(sk, vp, new, "kdp.static", rights=R)
    _kdp(
        sk,
        vp,
        "kdp.static",
        "protected",
        va=va,
        pages=pages,
        gpns=gpns,
        already=pages - len(new),
        slat="R",
        hvpt=pinned,
    )
    return Reply(NtStatus.SUCCESS, [pages])


# -- dynamic KDP: the secure pool ----------------------------------------------------------------
def initialize_secure_pool(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    base, pages, va = args.fields[0], args.fields[1], args.fields[2]
    if not _enabled(sk, vp):
        return Reply(NtStatus.NOT_SUPPORTED)
    bad = NtStatus.INVALID_PARAMETER
    if not 0 < pages <= MAX_POOL_PAGES or not _kernel_range(va, pages):
        return _refuse(sk, vp, "securepool.init", "range", bad, va=va, pages=pages)
    found = _data_pages(sk, vp, va, pages, "securepool.init")
    if isinstance(found, Reply):
        return found
    st = state(sk)
    for i, (page_va, m) in enumerate(found):
        gpn = m.gpa >> PAGE_SHIFT
        if gpn != base + i:
            return _refuse(sk, vp, "securepool.init", "mapping", bad, va=page_va, pfn=gpn)
        if st.owner(vp, gpn) == L.Kdp.STATIC:
            return _refuse(sk, vp, "securepool.init", "kdp-static", bad, pfn=gpn)
    gpns = [base + i for i in range(pages)]
    if not sk.set_vtl0_rights(vp, gpns, R):
        return _refuse(sk, vp, "securepool.init", "slat", NtStatus.UNSUCCESSFUL)
    for gpn in gpns:  # VTL0 can no longer write them: now the SK clears them
        vp.write(sk.space.phys_va(gpn << PAGE_SHIFT), bytes(PAGE_SIZE))
    st.set_owner(vp, gpns, L.Kdp.POOL)
    body = objects.alloc_block(sk, vp)
    handle = objects.insert(sk, vp, POOL_KIND, body) if body is not None else None
    if body is None or handle is None:
        if body is not None:
            objects.free_block(sk, vp, body)
        return _refuse(sk, vp, "securepool.init", "handle-table", NtStatus.NO_MEMORY)
    write_field(vp, body, PoolLayout.BASE_PFN, base)
    write_field(vp, body, PoolLayout.VA, va)
    write_field(vp, body, PoolLayout.PAGES, pages)
    pinned = hvpt.pin(sk, vp, found, "kdp.securepool", rights=R)
    _kdp(sk, vp, "securepool.init", "created", handle=handle, va=va, pages=pages, hvpt=pinned)
    return Reply(NtStatus.SUCCESS, [handle])


def _records(sk: SecureKernel, vp: Cpu) -> list[tuple[int, int, int, int, int, int]]:
    raw = vp.read(state(sk).table_va, PAGE_SIZE)
    return [POOL_RECORD.unpack_from(raw, i * POOL_RECORD.size) for i in range(RECORDS)]


def _place_block(
    sk: SecureKernel, vp: Cpu, pool: int, pool_va: int, pool_size: int, args: SecureCallArgs
) -> tuple[str, int, int] | Reply:
    """Where COPY_PROTECTED_PAGE writes: a new block (COPY_ALLOCATE: its record is written and
    the pool's cursor advanced) or a live block the caller names with its tag and cookie;
    (outcome, offset in the pool, the VA returned) or the refusal."""
    handle, tag, alloc_va, cookie, offset, size, _, _, flags = args.fields[0:9]
    bad = NtStatus.INVALID_PARAMETER
    st = state(sk)
    records = _records(sk, vp)
    if flags & COPY_ALLOCATE:
        if offset:
            return _refuse(sk, vp, "securepool.block", "offset", bad, offset=offset)
        start = read_field(vp, pool, PoolLayout.NEXT)
        block = -(-size // POOL_ALIGN) * POOL_ALIGN
        free = next((i for i, r in enumerate(records) if not r[4] & RECORD_LIVE), None)
        if start + block > pool_size or free is None:
            return _refuse(sk, vp, "securepool.block", "pool-full", NtStatus.NO_MEMORY)
        write_field(vp, pool, PoolLayout.NEXT, start + block)
        record = (handle, start, size, tag, RECORD_LIVE, cookie)
        vp.write(st.table_va + free * POOL_RECORD.size, POOL_RECORD.pack(*record))
        return "allocated", start, pool_va + start
    relative = (alloc_va - pool_va) & 0xFFFF_FFFF_FFFF_FFFF
    match = next(
        (r for r in records if r[4] & RECORD_LIVE and r[0] == handle and r[1] == relative),
        None,
    )
    if relative >= pool_size or match is None:
        return _refuse(sk, vp, "securepool.block", "not-a-block", bad, allocation=alloc_va)
    if match[3] != tag:
        return _refuse(sk, vp, "securepool.tag", "tag", NtStatus.ACCESS_DENIED, tag=tag)
    if not hmac.compare_digest(match[5].to_bytes(8, "little"), cookie.to_bytes(8, "little")):
        return _refuse(sk, vp, "securepool.cookie", "cookie", NtStatus.ACCESS_DENIED)
    if offset > match[2] or size > match[2] - offset:
        return _refuse(sk, vp, "securepool.bounds", "outside-block", bad, offset=offset, size=size)
    _kdp(sk, vp, "securepool.cookie", "accepted", allocation=alloc_va)
    return "updated", relative + offset, alloc_va


def copy_protected_page(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    handle, tag, _, _, _, size, src_pfn, src_offset, flags = args.fields[0:9]
    if not _enabled(sk, vp):
        return Reply(NtStatus.NOT_SUPPORTED)
    pool = objects.reference(sk, vp, handle, POOL_KIND)
    if isinstance(pool, NtStatus):
        return Reply(pool)
    bad = NtStatus.INVALID_PARAMETER
    if flags & ~COPY_ALLOCATE or tag >> 32:
        return _refuse(sk, vp, "securepool.block", "flags", bad, flags=flags)
    if not 0 < size <= PAGE_SIZE or src_offset >= PAGE_SIZE or src_offset + size > PAGE_SIZE:
        return _refuse(sk, vp, "securepool.bounds", "source", bad, size=size)
    if not sk.vtl0_page(vp, src_pfn):
        sk.emit(vp, "securecall", "securecall.pfn", "refused", pfn=src_pfn)
        return _refuse(sk, vp, "securepool.bounds", "source-pfn", bad, pfn=src_pfn)
    # The pool object's body in SK memory (read now): where the pool is, how big, its cursor.
    pool_va, base_pfn = (
        read_field(vp, pool, PoolLayout.VA),
        read_field(vp, pool, PoolLayout.BASE_PFN),
    )
    pool_size = read_field(vp, pool, PoolLayout.PAGES) * PAGE_SIZE
    # The capture slot first: a call refused for want of one must leave no record behind
    # (allocating the block and then failing would leak a live record nobody holds).
    slot = allocation.acquire_capture(sk, vp)
    if slot is None:
        return _refuse(sk, vp, "securepool.block", "no-capture-slot", NtStatus.NO_MEMORY)
    try:
        placed = _place_block(sk, vp, pool, pool_va, pool_size, args)
        if isinstance(placed, Reply):
            return placed
        outcome, dest, result = placed
        data = allocation.capture(sk, vp, slot, (src_pfn << PAGE_SHIFT) + src_offset, size)
    finally:
        allocation.release_capture(sk, vp, slot)
    vp.write(sk.space.phys_va((base_pfn << PAGE_SHIFT) + dest), data)
    _kdp(sk, vp, "securepool.block", outcome, handle=handle, allocation=result, size=size)
    return Reply(NtStatus.SUCCESS, [result])


def register(sk: SecureKernel) -> None:
    table_va, _ = sk.builder().alloc_data(1)
    owners_va, owners_gpa = sk.builder().alloc_data(
        L.table_pages(sk.loader_ram_pages), contiguous=True
    )
    sk.kdp = KdpState(table_va, owners_va, owners_gpa, sk.loader_ram_pages)
    sk.handlers[Service.PROTECT_KERNEL_DATA_PAGE] = protect_kernel_data
    if Service.PROTECT_KERNEL_DATA_PAGE not in sk.table:
        # Build A has no PROTECT_KERNEL_DATA_PAGE; static KDP uses REGISTER_PROTECTED_PAGE there.
        sk.handlers[Service.REGISTER_PROTECTED_PAGE] = protect_kernel_data
    sk.handlers[Service.INITIALIZE_SECURE_POOL] = initialize_secure_pool
    sk.handlers[Service.COPY_PROTECTED_PAGE] = copy_protected_page
    hvpt.allocate(sk)
    sk.phase1_hooks.append(hvpt.setup)
