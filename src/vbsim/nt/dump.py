"""NT's memory dumps and hibernation file (vbs-internals §5.3 last bullet, §6 A27, §7).

NT writes them itself from the RAM its VP can read (paging over VTL0's SLAT, through the direct
map).  Pages of VTL1 it cannot read: it asks the Secure Kernel (PREPARE_FOR_CRASHDUMP /
PREPARE_FOR_HIBERNATION, :mod:`vbsim.sk.services.dump`) which VTL1 pages exist and what to store
for each; the SK answers with ciphertext or nothing.  Without VBS every page is NT's.

Kinds (which pages are written):
- :data:`ACTIVE`: an *active memory dump* — the pages in use (NT's PFN database: allocated frames),
  kernel and user, without the free and zeroed lists (Windows 10+ dump option);
- :data:`HIBERNATION`: ``hiberfil.sys`` — the pages in use, which is what must survive power-off;
- :data:`COMPLETE`: a *complete memory dump* — every physical page.

File format (the model's, little-endian): ``b"VBSIMDMP"``, u32 kind, u32 record count, u64 the
SK's dump session (0 without VBS), then records of u64 PFN, u32 flags (:data:`PLAIN`,
:data:`ENCRYPTED` by the SK, :data:`WITHHELD` by the SK), u32 reserved, 4096 bytes.
The file lands on the system disk (``nt.files``), where an administrator — or anyone who
takes the disk — can read it.

System services (the model's numbers, not Windows'; Windows' change with every build):
- ``NtSystemDebugControl(SysDbgGetLiveKernelDump = 37)``: a live dump, active kind, with user pages
  (``LIVE_DUMP_CONTROL_ADD_PAGES.IncludeUserSpaceMemoryPages``); needs SeDebugPrivilege.
- ``NtInitiatePowerAction(PowerActionHibernate = 3)``: write ``hiberfil.sys``; the model's machine
  then resumes at once.  Needs an administrator (SeShutdownPrivilege in the model's token set).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import pfn as mm
from vbsim.nt.layouts import DUMP_ENTRY_GIVEN as ENTRY_GIVEN
from vbsim.nt.layouts import DUMP_LIST_MAX as LIST_MAX
from vbsim.nt.layouts import DUMP_PAGE_ENCRYPTED as PAGE_ENCRYPTED
from vbsim.nt.layouts import DUMP_REQUEST_LIST as REQUEST_LIST
from vbsim.nt.layouts import DUMP_REQUEST_PAGE as REQUEST_PAGE
from vbsim.nt.pfn import NoPages
from vbsim.ntstatus import NtStatus
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

ACTIVE, HIBERNATION, COMPLETE = 1, 2, 3
PLAIN, ENCRYPTED, WITHHELD = 0, 1, 2
MAGIC = b"VBSIMDMP"
HEADER = struct.Struct("<8sIIQ")
RECORD = struct.Struct("<QII")

LIVE_DUMP_PATH = r"C:\Windows\LiveKernelReports\LIVE.dmp"
HIBERFIL_PATH = r"C:\hiberfil.sys"
MEMORY_DMP_PATH = r"C:\Windows\MEMORY.DMP"

#: The model's numbers for the two services (see the module docstring).
NUMBERS: Mapping[str, int] = MappingProxyType(
    {"NtSystemDebugControl": 0x01C7, "NtInitiatePowerAction": 0x00C2}
)
SYSDBG_GET_LIVE_KERNEL_DUMP = 37
POWER_ACTION_HIBERNATE = 3

_SERVICE = MappingProxyType(
    {
        ACTIVE: Service.PREPARE_FOR_CRASHDUMP,
        COMPLETE: Service.PREPARE_FOR_CRASHDUMP,
        HIBERNATION: Service.PREPARE_FOR_HIBERNATION,
    }
)


def files(nt: NtKernel) -> dict[str, bytes]:
    """Files NT wrote to the system disk (path → bytes)."""
    return nt.files


def _secure_list(nt: NtKernel, vp: Cpu, service: Service) -> tuple[dict[int, bool], int]:
    """Ask the SK which VTL1 pages exist (NT may not touch them) and which of them it will give
    ciphertext of; ({pfn: given}, dump session)."""
    assert nt.vsl is not None
    va, gpa = nt.alloc_kernel_page(vp)
    pages: dict[int, bool] = {}
    first, session = 0, 0
    try:
        while True:
            status, out = nt.vsl.call(vp, service, REQUEST_LIST, gpa >> PAGE_SHIFT, first)
            if status != NtStatus.SUCCESS or len(out) < 3:
                break
            total, written, session = out[0], min(out[1], LIST_MAX), out[2]
            raw = vp.read(va, written * 8)
            for i in range(0, len(raw), 8):
                entry = int.from_bytes(raw[i : i + 8], "little")
                pages[entry & ~ENTRY_GIVEN] = bool(entry & ENTRY_GIVEN)
            first += written
            if written == 0 or first >= total:
                break
    finally:
        nt.free_page(vp, gpa >> PAGE_SHIFT)
    return pages, session


def write_dump(nt: NtKernel, vp: Cpu, kind: int) -> bytes:
    """Build a dump of ``kind`` from what NT can read (kernel code at VTL0 CPL0)."""
    secure: dict[int, bool] = {}
    session = 0
    if nt.vsl is not None:
        secure, session = _secure_list(nt, vp, _SERVICE[kind])
    # A complete dump is every page of RAM; a kernel dump the pages NT's PFN database says NT
    # owns, and the VTL1 pages the SK listed (it withholds or encrypts those), in PFN order.
    candidates = (
        list(range(1, mm.limit(vp, nt.free_list_head)))
        if kind == COMPLETE
        else sorted(set(mm.active_pages(vp, nt.pfn_database, nt.free_list_head)) | secure.keys())
    )
    work_va, work_gpa = nt.alloc_kernel_page(vp)
    work_pfn = work_gpa >> PAGE_SHIFT
    records: list[bytes] = []
    try:
        for frame in candidates:
            if frame == work_pfn:
                continue
            if frame in secure and not secure[frame]:
                # The SK said it gives nothing of this page: a withheld record, no call.
                flags, data = WITHHELD, bytes(PAGE_SIZE)
            elif frame in secure:
                assert nt.vsl is not None
                status, out = nt.vsl.call(vp, _SERVICE[kind], REQUEST_PAGE, frame, work_pfn)
                if status != NtStatus.SUCCESS:
                    continue
                flags = ENCRYPTED if out and out[0] == PAGE_ENCRYPTED else WITHHELD
                data = vp.read(work_va, PAGE_SIZE)
            else:
                flags, data = PLAIN, vp.read(DIRECT_MAP + (frame << PAGE_SHIFT), PAGE_SIZE)
            records.append(RECORD.pack(frame, flags, 0) + data)
    finally:
        nt.free_page(vp, work_pfn)
    if vp.tracing:
        vp.emit(
            "nt",
            "dump",
            "written",
            dump_kind=kind,
            pages=len(records),
            from_sk=sum(1 for p in candidates if p in secure),
        )
    return HEADER.pack(MAGIC, kind, len(records), session) + b"".join(records)


def parse(data: bytes) -> list[tuple[int, int, bytes]]:
    """(pfn, flags, page) records of a dump file; [] if it is not one."""
    if len(data) < HEADER.size:
        return []
    magic, _, count, _ = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        return []
    out = []
    offset = HEADER.size
    for _ in range(count):
        if offset + RECORD.size + PAGE_SIZE > len(data):
            break
        pfn, flags, _ = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        out.append((pfn, flags, data[offset : offset + PAGE_SIZE]))
        offset += PAGE_SIZE
    return out


def _store(nt: NtKernel, vp: Cpu, path: str, kind: int) -> int:
    try:
        files(nt)[path] = write_dump(nt, vp, kind)
    except NoPages:  # no page for the SK's list or the work buffer: nothing written
        return int(NtStatus.NO_MEMORY)
    return int(NtStatus.SUCCESS)


def nt_system_debug_control(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(command, ...): only SysDbgGetLiveKernelDump; SeDebugPrivilege required."""
    from vbsim.nt.layouts import Privilege
    from vbsim.nt.syscalls import caller_holds, caller_is_admin

    if not (caller_is_admin(nt, vp) and caller_holds(nt, vp, Privilege.SE_DEBUG)):
        return int(NtStatus.ACCESS_DENIED)
    if args[0] != SYSDBG_GET_LIVE_KERNEL_DUMP:
        return int(NtStatus.INVALID_INFO_CLASS)
    return _store(nt, vp, LIVE_DUMP_PATH, ACTIVE)


def nt_initiate_power_action(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(action, ...): only PowerActionHibernate; an administrator is required."""
    from vbsim.nt.syscalls import caller_is_admin

    if not caller_is_admin(nt, vp):
        return int(NtStatus.ACCESS_DENIED)
    if args[0] != POWER_ACTION_HIBERNATE:
        return int(NtStatus.INVALID_PARAMETER)
    return _store(nt, vp, HIBERFIL_PATH, HIBERNATION)


def register(nt: NtKernel) -> None:
    """Add the two services to NT's system-service table (NtKernel start-up)."""
    for name, handler in (
        ("NtSystemDebugControl", nt_system_debug_control),
        ("NtInitiatePowerAction", nt_initiate_power_action),
    ):
        nt.register_service(name, NUMBERS[name], handler)


def registered(nt: NtKernel) -> bool:
    return all(nt.syscall_names.get(number) == name for name, number in NUMBERS.items())


def syscall(vp: Cpu, name: str, *args: int) -> int:
    """User-mode stub for the two services (ntdll)."""
    vp.rax = NUMBERS[name]
    vp.r10, vp.rdx, vp.r8, vp.r9 = [*args, 0, 0, 0, 0][:4]
    vp.syscall()
    return vp.rax
