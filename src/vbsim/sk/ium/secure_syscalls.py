"""The secure services behind ``iumbase``/``iumdll`` (vbs-internals §4.2-§4.4) and the NT services
the SK implements itself for IUM ("special", §2.5).

Arguments come in R10, RDX, R8, R9 as user pointers into the trustlet's own memory; the SK reads and
writes them with SMAP's STAC/CLAC.  Keys are derived from the VSM master keys in SK memory and the
caller's identity (``sk.ium.keys``).

Capabilities (vbs-internals §3.1 policy 10, Appendix A item 8): the real bit assignment is not
public; the model uses bit 0 = secure sections, bit 1 = secure storage, bit 2 = secure devices/DMA,
and also grants secure storage by ID to vmsp (ID 2), as the SK's by-ID allow-list does [S].
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.ium_abi import CRYPTO_REQUEST, OP_DECRYPT, OP_ENCRYPT
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium import keys
from vbsim.sk.ium import process as ium

# At module level (process.py imports the kernel module too): a function-level import costs an
# import-machinery call on every system call.
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import AllowList, FrameList, Storage, read_field
from vbsim.sk.layouts import SkProcess as SkProcessLayout

CAP_SECURE_SECTION, CAP_SECURE_STORAGE, CAP_SECURE_DEVICE = 1, 2, 4
#: Capabilities the SK grants by trustlet ID (vmsp, ID 2, keeps its vTPM state in secure
#: storage; vbs-internals §3.2 and §4): what the loader writes into the allow-list page's grant
#: table (``layouts.AllowList``); the SK decides from that copy.
CAPABILITIES_BY_ID: Mapping[int, int] = MappingProxyType({2: CAP_SECURE_STORAGE})
USER_LIMIT = 1 << 47
MAX_MAILBOX = 4096
MAILBOX_SLOTS = SkProcessLayout.MAILBOX_SLOTS
_U64 = (1 << 64) - 1
assert (Storage.TRUSTLET_ID.offset, Storage.KEY.offset, Storage.GPA.offset) == (0, 8, 16)
_STORAGE_RECORD = struct.Struct("<QQQ")  # Storage record: trustlet ID, key, GPA
_DTB_OFFSET = SkProcessLayout.DIRECTORY_TABLE_BASE.offset


_PS, _RW = int(Pte.PS), int(Pte.RW)
_PROBE_CACHE = SkProcessLayout.PROBE_CACHE
_PROBE_MASK = SkProcessLayout.PROBE_SLOTS - 1
_PROBE_R, _PROBE_W = SkProcessLayout.PROBE_READ, SkProcessLayout.PROBE_WRITE
_PROBE_RW = _PROBE_R | _PROBE_W
_PRESENT_USER = int(Pte.P | Pte.US)
_PRESENT_USER_RW = int(Pte.P | Pte.US | Pte.RW)


def _probe(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, va: int, length: int, write: bool
) -> bool:
    """Every page of ``[va, va+length)`` is a present user page of the calling trustlet (writable
    for a write): a bad pointer is the trustlet's error, never a fault in the Secure Kernel.

    The SK walks the trustlet's tables in SK memory from the DirectoryTableBase its SKPROCESS
    records (ProbeForRead/ProbeForWrite check each call too), unrolled: this is every secure
    system call's hot path.  Four loads per page through the direct map are most of a call's
    cost, so the answer for each page is kept in the SKPROCESS page's probe cache
    (``SkProcess.PROBE_CACHE``, one load), which the SK empties whenever it edits the tables
    (:func:`flush_probes`) — what a TLB holds of the same walks, and like a TLB it is SK memory a
    store can change.  The rights must be set at every level (Intel SDM vol. 3A §4.6: access
    rights combine over the walk); a 1 GiB or 2 MiB leaf ends it early."""
    if not (0 <= length <= 1 << 20 and va > 0 and va + length <= USER_LIMIT):
        return False
    read_u64 = vp.read_u64
    cache = process.object_va + _PROBE_CACHE
    need = _PRESENT_USER_RW if write else _PRESENT_USER
    want = _PROBE_RW if write else _PROBE_R
    page = va & ~0xFFF
    end = va + max(length, 1)
    root = 0
    while page < end:
        vpn = page >> 12
        slot = cache + ((vpn & _PROBE_MASK) << 3)
        cached = read_u64(slot)
        if cached >> 2 == vpn and cached & want == want:
            page += PAGE_SIZE
            continue
        if not root:
            root = DIRECT_MAP + (read_u64(process.object_va + _DTB_OFFSET) & PTE_ADDR_MASK)
        entry = read_u64(root + ((page >> 36) & 0xFF8))
        rights = entry
        if entry & need != need:
            return False
        entry = read_u64(DIRECT_MAP + (entry & PTE_ADDR_MASK) + ((page >> 27) & 0xFF8))
        rights &= entry
        if entry & need != need:
            return False
        if not entry & _PS:
            entry = read_u64(DIRECT_MAP + (entry & PTE_ADDR_MASK) + ((page >> 18) & 0xFF8))
            rights &= entry
            if entry & need != need:
                return False
            if not entry & _PS:
                entry = read_u64(DIRECT_MAP + (entry & PTE_ADDR_MASK) + ((page >> 9) & 0xFF8))
                rights &= entry
                if entry & need != need:
                    return False
        vp.write_u64(slot, vpn << 2 | _PROBE_R | (_PROBE_W if rights & _RW else 0))
        page += PAGE_SIZE
    return True


def flush_probes(vp: Cpu, process: ium.SecureProcess) -> None:
    """Empty the probe cache: the SK just edited the trustlet's tables (its invlpg)."""
    vp.write(process.object_va + _PROBE_CACHE, bytes(8 * SkProcessLayout.PROBE_SLOTS))


def read_user(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, va: int, n: int
) -> bytes | None:
    if not _probe(sk, vp, process, va, n, write=False):
        return None
    vp.stac()
    try:
        return vp.read(va, n)
    finally:
        vp.clac()


def write_user(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, va: int, data: bytes) -> bool:
    if not _probe(sk, vp, process, va, len(data), write=True):
        return False
    vp.stac()
    try:
        vp.write(va, data)
    finally:
        vp.clac()
    return True


_SUCCESS, _ACCESS_VIOLATION = int(NtStatus.SUCCESS), int(NtStatus.ACCESS_VIOLATION)
_SVN_OFFSET = SkProcessLayout.SVN.offset
_TID_OFFSET = SkProcessLayout.TRUSTLET_ID.offset
assert SkProcessLayout.SVN.size == 4 and SkProcessLayout.TRUSTLET_ID.size == 8
assert (_TID_OFFSET, _SVN_OFFSET) == (0, 0x1C)
_TID_SVN = struct.Struct("<Q20xI")  # SKPROCESS: TRUSTLET_ID at 0, SVN at 0x1C


def _svn(vp: Cpu, process: ium.SecureProcess) -> int:
    return vp.read_u32(process.object_va + _SVN_OFFSET)


def _tid(vp: Cpu, process: ium.SecureProcess) -> int:
    """The trustlet ID as the SKPROCESS page records it (what every decision uses; one load
    from a page the TLB holds)."""
    return vp.read_u64(process.object_va + _TID_OFFSET)


def ium_get_idk(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]) -> int:
    """IumGetIdk(type, out, out_len): 0 = encryption IDK, 1 = signing IDK (§4.2)."""
    kind, out, out_len = args[0], args[1], args[2]
    if kind not in (0, 1) or out_len < 32:
        return int(NtStatus.INVALID_PARAMETER)
    label = b"idk-signing" if kind else b"idk-encryption"
    # Trustlet ID and SVN in one load of the SKPROCESS header (this is the hot path).
    trustlet_id, svn = _TID_SVN.unpack(vp.read(process.object_va, _TID_SVN.size))
    key = keys.derive(sk, vp, keys.IDK, trustlet_id, svn, label)
    return _SUCCESS if write_user(sk, vp, process, out, key) else _ACCESS_VIOLATION


def ium_crypto(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]) -> int:
    """IumCrypto(request*): EncryptData/DecryptData with the local or per-boot key (§4.3)."""
    raw = read_user(sk, vp, process, args[0], CRYPTO_REQUEST)
    if raw is None:
        return int(NtStatus.ACCESS_VIOLATION)
    op = int.from_bytes(raw[0:4], "little")
    which = int.from_bytes(raw[4:8], "little")
    src, src_len, dst, dst_cap = (
        int.from_bytes(raw[8 + 8 * i : 16 + 8 * i], "little") for i in range(4)
    )
    if op not in (OP_ENCRYPT, OP_DECRYPT) or which not in (keys.LOCAL, keys.PER_BOOT):
        return int(NtStatus.INVALID_PARAMETER)
    data = read_user(sk, vp, process, src, src_len)
    if data is None:
        return int(NtStatus.ACCESS_VIOLATION)
    trustlet_id = _tid(vp, process)
    key = keys.derive(sk, vp, which, trustlet_id, _svn(vp, process), b"iumcrypto")
    aead = AESGCM(key)
    context = trustlet_id.to_bytes(8, "little")
    if op == OP_ENCRYPT:
        nonce = (vp.rdrand().to_bytes(8, "little") + vp.rdrand().to_bytes(8, "little"))[:12]
        result = nonce + aead.encrypt(nonce, data, context)
    else:
        if len(data) < 28:
            return int(NtStatus.INVALID_PARAMETER)
        try:
            result = aead.decrypt(data[:12], data[12:], context)
        except InvalidTag:
            return int(NtStatus.AUTH_TAG_MISMATCH)
    if len(result) > dst_cap:
        return int(NtStatus.BUFFER_TOO_SMALL)
    if not write_user(sk, vp, process, dst, result) or not write_user(
        sk, vp, process, args[0] + 40, len(result).to_bytes(8, "little")
    ):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


def ium_post_mailbox(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]) -> int:
    """IumPostMailbox(slot, data, length): ≤ ~4 KB readable from VTL0 with the key (§4.4)."""
    slot, data_va, length = args[0], args[1], args[2]
    if not 0 <= slot < MAILBOX_SLOTS or not 0 < length <= MAX_MAILBOX:
        return int(NtStatus.INVALID_PARAMETER)
    data = read_user(sk, vp, process, data_va, length)
    if data is None:
        return int(NtStatus.ACCESS_VIOLATION)
    if not ium.post_mailbox(sk, vp, process, slot, data):
        return int(NtStatus.NO_MEMORY)
    return int(NtStatus.SUCCESS)


def granted_by_id(sk: SecureKernel, vp: Cpu, trustlet_id: int) -> int:
    """The capability bits the SK's by-ID grant table (in SK memory, read now) gives
    ``trustlet_id``."""
    base = sk.allow_va
    count = min(read_field(vp, base, AllowList.GRANT_COUNT), AllowList.GRANT_MAX)
    raw = vp.read(base + AllowList.GRANT_ENTRIES, count * AllowList.GRANT_SIZE)
    granted = 0
    for offset in range(0, len(raw), AllowList.GRANT_SIZE):
        if int.from_bytes(raw[offset : offset + 4], "little") == trustlet_id:
            granted |= int.from_bytes(raw[offset + 4 : offset + 8], "little")
    return granted


def _may_store(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess) -> bool:
    capabilities = process.read(vp, SkProcessLayout.CAPABILITIES)
    if capabilities & CAP_SECURE_STORAGE:
        return True
    return bool(granted_by_id(sk, vp, _tid(vp, process)) & CAP_SECURE_STORAGE)


def _capability_refused(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, capability: str
) -> int:
    """The trustlet's signed policy lacks ``capability``: traced, STATUS_ACCESS_DENIED."""
    sk.emit(
        vp,
        "ium",
        "policy.capability",
        "refused",
        capability=capability,
        trustlet_id=process.trustlet_id(vp),
    )
    return int(NtStatus.ACCESS_DENIED)


def _storage_find(sk: SecureKernel, vp: Cpu, trustlet_id: int, key: int) -> int | None:
    """The GPA of item ``key`` of ``trustlet_id`` as the storage records in SK memory name it
    now (``layouts.Storage``, one read of the used records); None: no such item."""
    count = min(vp.read_u32(sk.storage_va + Storage.COUNT.offset), Storage.MAX)
    raw = vp.read(sk.storage_va + Storage.RECORDS, count * Storage.RECORD)
    for owner, item, gpa in _STORAGE_RECORD.iter_unpack(raw):
        if owner == trustlet_id and item == key:
            return int(gpa)
    return None


def _storage_page(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, key: int) -> int | None:
    """The VTL1 page holding secure-storage item ``key`` of this trustlet ID (created on demand:
    a page from NT, taken from VTL0, and a new record)."""
    trustlet_id = process.trustlet_id(vp)
    gpa = _storage_find(sk, vp, trustlet_id, key)
    if gpa is not None:
        return gpa
    count = vp.read_u32(sk.storage_va + Storage.COUNT.offset)
    if count >= Storage.MAX:
        return None
    pages = ium.request_pages(sk, vp, 1)
    if pages is None or not sk.set_vtl0_rights(vp, pages, 0):
        return None
    sk.mark_own(vp, pages)
    gpa = pages[0] << PAGE_SHIFT
    vp.write(sk.space.phys_va(gpa), bytes(PAGE_SIZE))
    record = sk.storage_va + Storage.RECORDS + count * Storage.RECORD
    vp.write(record, _STORAGE_RECORD.pack(trustlet_id, key & _U64, gpa))
    vp.write_u32(sk.storage_va + Storage.COUNT.offset, count + 1)
    return gpa


def ium_secure_storage_put(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    key, data_va, length = args[0], args[1], args[2]
    if not _may_store(sk, vp, process):
        return _capability_refused(sk, vp, process, "secure-storage")
    if not 0 < length <= PAGE_SIZE - 8:
        return int(NtStatus.INVALID_PARAMETER)
    data = read_user(sk, vp, process, data_va, length)
    if data is None:
        return int(NtStatus.ACCESS_VIOLATION)
    gpa = _storage_page(sk, vp, process, key)
    if gpa is None:
        return int(NtStatus.NO_MEMORY)
    vp.write(sk.space.phys_va(gpa), length.to_bytes(8, "little") + data)
    return int(NtStatus.SUCCESS)


def ium_secure_storage_get(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    key, out, capacity = args[0], args[1], args[2]
    if not _may_store(sk, vp, process):
        return _capability_refused(sk, vp, process, "secure-storage")
    gpa = _storage_find(sk, vp, process.trustlet_id(vp), key)
    if gpa is None:
        return int(NtStatus.NOT_FOUND)
    length = vp.read_u64(sk.space.phys_va(gpa))
    if length > min(capacity, PAGE_SIZE - 8):  # the item frame's own bound, whatever it says
        return int(NtStatus.BUFFER_TOO_SMALL)
    data = vp.read(sk.space.phys_va(gpa) + 8, length)
    return int(
        NtStatus.SUCCESS if write_user(sk, vp, process, out, data) else NtStatus.ACCESS_VIOLATION
    )


MAX_SECTION_PAGES = 16


def ium_create_secure_section(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    """IumCreateSecureSection(size, PULONG64 va, PULONG64 index): pages shared between the
    trustlet and VTL0 (vbs-internals §4.4: a TOCTOU surface by design).  Needs the secure-section
    capability.  The pages stay readable and writable for VTL0; a VTL0 driver reaches them through
    the CREATE_SECURE_SECTION secure call with the trustlet's handle and the section index."""
    size, out_va, out_index = args[0], args[1], args[2]
    if not process.read(vp, SkProcessLayout.CAPABILITIES) & CAP_SECURE_SECTION:
        return _capability_refused(sk, vp, process, "secure-section")
    pages = -(-size // PAGE_SIZE)
    sections = process.section_count(vp)
    if not 0 < pages <= MAX_SECTION_PAGES or sections >= SkProcessLayout.SECTION_SLOTS:
        return int(NtStatus.INVALID_PARAMETER)
    if not (
        _probe(sk, vp, process, out_va, 8, write=True)
        and _probe(sk, vp, process, out_index, 8, write=True)
    ):
        return int(NtStatus.ACCESS_VIOLATION)
    pfns = ium.request_pages(sk, vp, pages)
    if pfns is None:
        return int(NtStatus.NO_MEMORY)
    base = ium.SECTION_BASE + sections * 16 * PAGE_SIZE
    tables = ium.page_tables(sk, vp, process)
    for i, pfn in enumerate(pfns):
        vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        tables.map(base + i * PAGE_SIZE, pfn << PAGE_SHIFT, int(Pte.US | Pte.RW | Pte.NX))
    flush_probes(vp, process)  # the tables changed: probe them afresh
    # New table frames come from the SK's pool (ium.process._sk_phys): VTL0 has no right.
    index = process.add_section(vp, base, pfns)
    if index is None:
        return int(NtStatus.INVALID_PARAMETER)
    sk.emit(
        vp,
        "ium",
        "secure-section",
        "created",
        trustlet_id=process.trustlet_id(vp),
        pages=pages,
        shared_with="vtl0",
    )
    write_user(sk, vp, process, out_va, base.to_bytes(8, "little"))
    write_user(sk, vp, process, out_index, index.to_bytes(8, "little"))
    return int(NtStatus.SUCCESS)


HANDLERS = MappingProxyType(
    {
        "IumGetIdk": ium_get_idk,
        "IumCrypto": ium_crypto,
        "IumPostMailbox": ium_post_mailbox,
        "IumCreateSecureSection": ium_create_secure_section,
        "IumSecureStorageGet": ium_secure_storage_get,
        "IumSecureStoragePut": ium_secure_storage_put,
    }
)


# -- NT services the SK handles itself for IUM ("special") --------------------------------------
PROCESS_IS_SECURE_CLASS = 0x3F


def nt_query_information_process(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    """Only the restricted classes (§2.5 "special"): here, IsSecureProcess for itself."""
    if args[1] != PROCESS_IS_SECURE_CLASS:
        return int(NtStatus.INVALID_INFO_CLASS)
    value = (process.trustlet_id(vp) << 1) | 1
    return int(
        NtStatus.SUCCESS
        if write_user(sk, vp, process, args[2], value.to_bytes(8, "little"))
        else NtStatus.ACCESS_VIOLATION
    )


def nt_allocate_virtual_memory(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    """Trustlet memory is the SK's to map: pages from NT, taken from VTL0, mapped RW/NX.  No
    executable allocations: IUM has no dynamic code."""
    out, size, protect = args[0], args[1], args[2]
    if protect not in (0x02, 0x04):  # PAGE_READONLY, PAGE_READWRITE
        return int(NtStatus.INVALID_PAGE_PROTECTION)
    pages = -(-size // PAGE_SIZE)
    if not 0 < pages <= 16:
        return int(NtStatus.INVALID_PARAMETER)
    pfns = ium.request_pages(sk, vp, pages)
    if pfns is None or not sk.set_vtl0_rights(vp, pfns, 0):
        return int(NtStatus.NO_MEMORY)
    sk.mark_own(vp, pfns)
    count = process.read(vp, SkProcessLayout.PRIVATE_COUNT)
    if count + len(pfns) > FrameList.MAX:
        return int(NtStatus.NO_MEMORY)
    base = ium.HEAP_VA + PAGE_SIZE * (count - 2) + 0x10_0000
    flags = int(Pte.US | Pte.NX) | (int(Pte.RW) if protect == 0x04 else 0)
    tables = ium.page_tables(sk, vp, process)
    for i, pfn in enumerate(pfns):
        vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        tables.map(base + i * PAGE_SIZE, pfn << PAGE_SHIFT, flags)
    flush_probes(vp, process)  # the tables changed: probe them afresh
    process.add_private(vp, pfns)
    # New table frames come from the SK's pool (ium.process._sk_phys): VTL0 has no right.
    return int(
        NtStatus.SUCCESS
        if write_user(sk, vp, process, out, base.to_bytes(8, "little"))
        else NtStatus.ACCESS_VIOLATION
    )


def nt_terminate_process(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, args: list[int]
) -> int:
    process.write_terminated(vp)
    return int(NtStatus.SUCCESS)


SPECIAL = MappingProxyType(
    {
        "NtQueryInformationProcess": nt_query_information_process,
        "NtAllocateVirtualMemory": nt_allocate_virtual_memory,
        "NtTerminateProcess": nt_terminate_process,
    }
)
