"""NT system services reachable through ``syscall`` (numbers are the model build's table).

x64 convention: RAX = number, arguments in R10, RDX, R8, R9; NTSTATUS back in RAX.  Pointers are
user addresses; the kernel copies through them with SMAP's STAC/CLAC.  The numbers here are the
model's own table (real numbers change with every build, vbs-internals "Numbers are build-
specific"); like the secure-call numbers they are configuration, selected by name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK
from vbsim.ium_abi import NT_NUMBERS
from vbsim.nt import process as ps
from vbsim.nt import vad
from vbsim.nt.layouts import Privilege, PsProtection
from vbsim.nt.pfn import NoPages
from vbsim.ntstatus import NtStatus

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

Handler = Callable[["NtKernel", Cpu, list[int]], int]

#: The model build's system-service numbers: the one table in the shared ABI module, which the
#: ntdll stubs and the SK's IUM filter also read.
NUMBERS: Mapping[str, int] = NT_NUMBERS

PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
_PROTECTIONS = MappingProxyType(
    {
        PAGE_READONLY: (False, False),
        PAGE_READWRITE: (True, False),
        PAGE_EXECUTE_READ: (False, True),
        PAGE_EXECUTE_READWRITE: (True, True),
    }
)
MAX_ALLOCATION = 16 << 20


def _cpu(vp: Cpu) -> Cpu:
    """The processor as guest code holds it (host-side callers pass the VP)."""
    return vp


_SUCCESS = int(NtStatus.SUCCESS)


def nt_test_alert(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    return _SUCCESS


def nt_allocate_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(PVOID *BaseAddress, SIZE_T size, ULONG protect) — model's reduced argument list."""
    out_ptr, size, protect = args[0], args[1], args[2]
    process = nt.process_of(vp)
    if process is None or protect not in _PROTECTIONS:
        return int(NtStatus.INVALID_PAGE_PROTECTION if process else NtStatus.INVALID_PARAMETER)
    if not 0 < size <= MAX_ALLOCATION:
        return int(NtStatus.INVALID_PARAMETER)
    writable, executable = _PROTECTIONS[protect]
    if not nt.probe_user(vp, out_ptr, 8, write=True):
        return int(NtStatus.ACCESS_VIOLATION)
    try:
        region = nt.allocate(vp, process, size, writable, executable)
    except NoPages:
        return int(NtStatus.NO_MEMORY)
    if not nt.copy_to_user(vp, out_ptr, region.base.to_bytes(8, "little")):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


def protection_dominates(caller: int, target: int) -> bool:
    """RtlTestProtectedAccess: may a process with PS_PROTECTION ``caller`` get full access to one
    with ``target``?  An unprotected target: yes.  Otherwise the caller's type must be at least
    the target's and its signer at least as trusted (Windows Internals 7th ed. part 1 ch. 3
    "Protected processes"; the model compacts RtlProtectedAccess's signer-dominance masks into
    the signer order of table 3-2)."""
    if not PsProtection.kind(target):
        return True
    return PsProtection.kind(caller) >= PsProtection.kind(target) and PsProtection.signer(
        caller
    ) >= PsProtection.signer(target)


def may_open(nt: NtKernel, vp: Cpu, caller: object, target: object) -> int:
    """PsOpenProcess's checks for PROCESS_VM_READ/WRITE/TERMINATE on another process, from RAM:
    the caller's token must be an administrator's holding SeDebugPrivilege (present and enabled),
    and the target's PS_PROTECTION must not dominate the caller's."""
    from vbsim.nt.process import Process

    assert isinstance(caller, Process) and isinstance(target, Process)
    token = ps.token_of(vp, caller.eprocess)
    if not (ps.is_admin(vp, token) and ps.privilege_held(vp, token, Privilege.SE_DEBUG)):
        return int(NtStatus.ACCESS_DENIED)
    mine = ps.protection_of(vp, caller.eprocess)
    theirs = ps.protection_of(vp, target.eprocess)
    if not protection_dominates(mine, theirs):
        if vp.tracing:
            vp.emit("nt", "ps-protection", "refused", pid=target.pid, protection=theirs)
        return int(NtStatus.ACCESS_DENIED)
    return int(NtStatus.SUCCESS)


def caller_is_admin(nt: NtKernel, vp: Cpu) -> bool:
    """SeTokenIsAdmin on the current process's primary token, read from RAM now."""
    process = nt.process_of(vp)
    return process is not None and ps.is_admin(vp, ps.token_of(vp, process.eprocess))


def caller_holds(nt: NtKernel, vp: Cpu, privilege: Privilege) -> bool:
    """SeSinglePrivilegeCheck on the current process's primary token, read from RAM now."""
    process = nt.process_of(vp)
    return process is not None and ps.privilege_held(
        vp, ps.token_of(vp, process.eprocess), privilege
    )


def _lookup_process(nt: NtKernel, vp: Cpu, pid: int, write: bool) -> tuple[int, object]:
    caller = nt.process_of(vp)
    target = nt.lookup_process(vp, pid)
    if caller is None or target is None:
        return int(NtStatus.INVALID_HANDLE), None
    if caller != target:
        status = may_open(nt, vp, caller, target)
        if status != NtStatus.SUCCESS:
            return status, None
    return int(NtStatus.SUCCESS), target


def _translate_user(
    nt: NtKernel, vp: Cpu, process: object, va: int, write: bool = False
) -> int | None:
    """Software walk of another process's tables (MmProbeAndLock-like): GPA or None.  A write
    needs a writable page, as it would for the process itself."""
    from vbsim.nt.process import Process

    assert isinstance(process, Process)
    value = nt.address_space(vp, process).lookup(va)
    if value is None or not value & 0x4 or (write and not value & 0x2):
        return None
    size_mask = (1 << 12) - 1
    return (value & 0x000F_FFFF_FFFF_F000) | (va & size_mask)


def _transfer(nt: NtKernel, vp: Cpu, args: list[int], write: bool) -> int:
    """NtRead/WriteVirtualMemory(pid, address, buffer, size)."""
    pid, address, buffer, size = args
    if not 0 < size <= 1 << 20:
        return int(NtStatus.INVALID_PARAMETER)
    status, target = _lookup_process(nt, vp, pid, write)
    if status != NtStatus.SUCCESS:
        return status
    caller = nt.process_of(vp)
    if not write and caller != target and caller is not None:
        # EtwTiLogReadWriteVm: a cross-process read is a Threat-Intelligence event, logged if
        # the provider's IsEnabled (in RAM) says so.
        from vbsim.nt import notify
        from vbsim.nt.layouts import EPROCESS, EVENT_READVM_REMOTE, read_field

        cpu = vp
        # PsGetProcessId(caller): the PID as the caller's EPROCESS holds it now
        caller_pid = read_field(cpu, caller.eprocess, EPROCESS.UniqueProcessId)
        notify.etw_ti_log(nt, cpu, EVENT_READVM_REMOTE, caller_pid, pid)

    done = 0
    while done < size:
        va = address + done
        chunk = min(size - done, 4096 - (va & 0xFFF))
        gpa = _translate_user(nt, vp, target, va, write)
        if gpa is None:
            return int(NtStatus.ACCESS_VIOLATION) if done == 0 else 0x8000_000D  # PARTIAL_COPY
        if write:
            data = nt.copy_from_user(vp, buffer + done, chunk)
            if data is None:
                return int(NtStatus.ACCESS_VIOLATION)
            vp.write(DIRECT_MAP + gpa, data)
        else:
            data = vp.read(DIRECT_MAP + gpa, chunk)
            if not nt.copy_to_user(vp, buffer + done, data):
                return int(NtStatus.ACCESS_VIOLATION)
        done += chunk
    return int(NtStatus.SUCCESS)


def nt_read_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    return _transfer(nt, vp, args, write=False)


def nt_write_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    return _transfer(nt, vp, args, write=True)


def nt_terminate_process(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    status, target = _lookup_process(nt, vp, args[0], write=True)
    if status != NtStatus.SUCCESS:
        return status
    from vbsim.nt.process import Process

    assert isinstance(target, Process)
    from vbsim.nt.layouts import EPROCESS, read_field

    secure_pid = read_field(vp, target.eprocess, EPROCESS.SecurePid)
    if secure_pid and nt.vsl is not None:
        # A trustlet's VTL1 half is the Secure Kernel's to run down (vbs-internals §7: VTL0 may
        # terminate a trustlet — denial of service by design — but only through the SK).
        from vbsim.sk.sscn import Service

        nt.vsl.call(vp, Service.RUNDOWN_PROCESS, secure_pid)
    ps.mark_exited(vp, target.eprocess, args[1])
    return int(NtStatus.SUCCESS)


def nt_protect_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(pid, address, size, new protection): VirtualProtectEx — another process needs the same
    access as for writing its memory (admin with SeDebugPrivilege, not a protected process).

    MiProtectVirtualMemory's checks, from the target's VAD tree in RAM now: the range must lie in
    one VAD (STATUS_CONFLICTING_ADDRESSES: "the pages cannot span adjacent regions that were
    allocated by separate calls", VirtualProtectEx), the VAD must not be NoChange
    (STATUS_INVALID_PAGE_PROTECTION: ReactOS ARM3 MiProtectVirtualMemory, WRK
    MiCheckSecuredVad), and every page of the range must be committed (STATUS_NOT_COMMITTED)."""
    pid, address, size, protect = args
    if protect not in _PROTECTIONS or not 0 < size <= MAX_ALLOCATION:
        return int(
            NtStatus.INVALID_PARAMETER
            if protect in _PROTECTIONS
            else NtStatus.INVALID_PAGE_PROTECTION
        )
    if address > vad.HIGHEST_USER_VA or vad.HIGHEST_USER_VA - address < size - 1:
        # NtProtectVirtualMemory's first checks (WRK): STATUS_INVALID_PARAMETER_2 / _3 for a
        # range beyond MM_HIGHEST_USER_ADDRESS (the model folds both into INVALID_PARAMETER).
        return int(NtStatus.INVALID_PARAMETER)
    status, target = _lookup_process(nt, vp, pid, write=True)
    if status != NtStatus.SUCCESS:
        return status
    from vbsim.nt.process import Process

    assert isinstance(target, Process)
    writable, executable = _PROTECTIONS[protect]
    first, last = address & ~0xFFF, (address + size - 1) & ~0xFFF
    node = vad.locate(vp, target.eprocess, first >> PAGE_SHIFT)
    if not node or last >> PAGE_SHIFT > vad.ending_vpn(vp, node):
        return _refuse(vp, pid, address, NtStatus.CONFLICTING_ADDRESSES, "outside-one-vad")
    if vad.no_change(vp, node):
        return _refuse(vp, pid, address, NtStatus.INVALID_PAGE_PROTECTION, "vad-no-change")
    tables = nt.address_space(vp, target)
    entries: list[tuple[int, int, int]] = []
    for page in range(first, last + 0x1000, 0x1000):
        entry = tables.pte_gpa(page)
        leaf = tables.lookup(page)
        if entry is None or leaf is None or not leaf & 0x4:
            return _refuse(vp, pid, page, NtStatus.NOT_COMMITTED, "page-not-committed")
        entries.append((page, entry, leaf))
    phys = nt.phys(vp)
    for page, entry, leaf in entries:
        value = leaf & ~(0x2 | (1 << 63))
        value |= (0x2 if writable else 0) | (0 if executable else 1 << 63)
        phys.write_u64(entry, value)
        vp.invlpg(page)
    # The process may be loaded on another processor: shoot down every TLB (hypercall or IPI).
    nt.flush_all_processors(vp)
    if vp.tracing:
        vp.emit(
            "nt",
            "protect-virtual-memory",
            "changed",
            pid=pid,
            address=address,
            size=size,
            protect=protect,
        )
    return int(NtStatus.SUCCESS)


def _refuse(vp: Cpu, pid: int, address: int, status: NtStatus, reason: str) -> int:
    """A VAD check said no: traced with the mechanism (``vad``) and why."""
    if vp.tracing:
        vp.emit("nt", "vad", "refused", pid=pid, address=address, reason=reason)
    return int(status)


def nt_free_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(base): NtFreeVirtualMemory(MEM_RELEASE, size 0) — release the VAD that starts at
    ``base`` (STATUS_MEMORY_NOT_ALLOCATED without one, STATUS_FREE_VM_NOT_AT_BASE inside one,
    STATUS_INVALID_PAGE_PROTECTION for a NoChange VAD: MiCheckSecuredVad), with every page its
    extent maps; each page is cleared before it goes back to the free list (what one process
    freed must not reach the next)."""
    process = nt.process_of(vp)
    base = args[0]
    if process is None:
        return int(NtStatus.INVALID_PARAMETER)
    node = vad.locate(vp, process.eprocess, base >> PAGE_SHIFT)
    if not node:
        return _refuse(vp, process.pid, base, NtStatus.MEMORY_NOT_ALLOCATED, "no-vad")
    start, end = vad.starting_vpn(vp, node), vad.ending_vpn(vp, node)
    if base & 0xFFF or base >> PAGE_SHIFT != start:
        return _refuse(vp, process.pid, base, NtStatus.FREE_VM_NOT_AT_BASE, "not-at-base")
    if vad.no_change(vp, node):
        return _refuse(vp, process.pid, base, NtStatus.INVALID_PAGE_PROTECTION, "vad-no-change")
    vad.remove(vp, process.eprocess, node)
    tables = nt.address_space(vp, process)
    for vpn in range(start, min(end, start + MAX_ALLOCATION // PAGE_SIZE) + 1):
        va = vpn << PAGE_SHIFT
        leaf = tables.lookup(va)
        if leaf is None or not leaf & 0x4:
            continue
        pfn = (leaf & PTE_ADDR_MASK) >> PAGE_SHIFT
        tables.unmap(va)
        vp.invlpg(va)
        vp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
        nt.free_page(vp, pfn)
    vad.free_node(vp, nt.vad_lookaside, node)
    return int(NtStatus.SUCCESS)


#: MEMORY_BASIC_INFORMATION (winnt.h, x64): BaseAddress, AllocationBase, AllocationProtect,
#: PartitionId, RegionSize, State, Protect, Type — 0x30 bytes.
MEMORY_BASIC_INFORMATION = struct.Struct("<QQIH2xQIII4x")
MEM_COMMIT, MEM_FREE, MEM_PRIVATE = 0x1000, 0x10000, 0x20000
PAGE_NOACCESS = 0x01
#: nt!MmProtectToValue: a VAD's MM_* protection index → the PAGE_* value (WRK ``mi.h``).
MM_PROTECT_TO_VALUE = (0x01, 0x02, 0x10, 0x20, 0x04, 0x08, 0x40, 0x80)


def _page_protect(leaf: int | None) -> int:
    """The PAGE_* value a user PTE gives (present, user; RW, NX), or PAGE_NOACCESS."""
    if leaf is None or not leaf & 0x1 or not leaf & 0x4:
        return PAGE_NOACCESS
    writable, executable = bool(leaf & 0x2), not leaf >> 63 & 1
    if executable:
        return PAGE_EXECUTE_READWRITE if writable else PAGE_EXECUTE_READ
    return PAGE_READWRITE if writable else PAGE_READONLY


def nt_query_virtual_memory(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(pid, address, buffer, length): NtQueryVirtualMemory(MemoryBasicInformation) — reduced
    to the model's four argument registers (the real call also takes the information class and
    a ReturnLength pointer).  The answer comes from the target's VAD tree and page tables in RAM
    now: inside a VAD, the VAD's start and allocation protection, and the run of pages from
    ``address`` with the same PTE protection (MiQueryAddressState); outside one, MEM_FREE up to
    the next VAD.  So a VAD a rootkit unlinked (BlackBone's BBHideVAD) reads as free memory to a
    scanner walking the address space, though its pages are still mapped.  The target needs the
    access a read does (PROCESS_QUERY_INFORMATION: not a protected process above the caller)."""
    pid, address, buffer, length = args
    if length < MEMORY_BASIC_INFORMATION.size:
        return int(NtStatus.INFO_LENGTH_MISMATCH)
    if address > vad.HIGHEST_USER_VA:
        return int(NtStatus.INVALID_PARAMETER)  # STATUS_INVALID_PARAMETER_2 in the WRK
    status, target = _lookup_process(nt, vp, pid, write=False)
    if status != NtStatus.SUCCESS:
        return status
    from vbsim.nt.process import Process

    assert isinstance(target, Process)
    page = address & ~0xFFF
    vpn = page >> PAGE_SHIFT
    node = vad.locate(vp, target.eprocess, vpn)
    if node:
        tables = nt.address_space(vp, target)
        protect = _page_protect(tables.lookup(page))
        end = vad.ending_vpn(vp, node)
        run = 1
        limit = min(end - vpn + 1, MAX_ALLOCATION // PAGE_SIZE)
        while run < limit and _page_protect(tables.lookup(page + run * PAGE_SIZE)) == protect:
            run += 1
        info = MEMORY_BASIC_INFORMATION.pack(
            page,
            vad.starting_vpn(vp, node) << PAGE_SHIFT,
            MM_PROTECT_TO_VALUE[vad.protection(vp, node) & 7],
            0,
            run * PAGE_SIZE,
            MEM_COMMIT,
            protect,
            MEM_PRIVATE,
        )
    else:
        following = vad.next_above(vp, target.eprocess, vpn)
        top = vad.starting_vpn(vp, following) if following else vad.HIGHEST_USER_VPN + 1
        size = (top - vpn) << PAGE_SHIFT
        info = MEMORY_BASIC_INFORMATION.pack(page, 0, 0, 0, size, MEM_FREE, PAGE_NOACCESS, 0)
    if not nt.copy_to_user(vp, buffer, info):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


def nt_create_user_process(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(image name, name length, PULONG64 pid): a new process from the application store, with
    the caller's token (a child inherits its parent's), its image's routines mapped as code."""
    name = _key(nt, vp, args[0], args[1])
    if isinstance(name, int):
        return name
    caller = nt.process_of(vp)
    image = nt.app_store.get(name)
    if caller is None or image is None:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    if not nt.probe_user(vp, args[2], 8, write=True):
        return int(NtStatus.ACCESS_VIOLATION)
    from vbsim.image import ImageFormatError, parse_image

    try:
        parsed = parse_image(image)
    except ImageFormatError:
        return int(NtStatus.INVALID_IMAGE_FORMAT)
    routines = [r for r in (parsed.entry_routine,) if r is not None]
    if not routines:
        return int(NtStatus.INVALID_IMAGE_FORMAT)
    try:
        child = nt.create_process(vp, name, parent=caller)
        nt.map_code(vp, child, routines)
    except NoPages:
        return int(NtStatus.NO_MEMORY)
    nt.copy_to_user(vp, args[2], child.pid.to_bytes(8, "little"))
    return int(NtStatus.SUCCESS)


def _key(nt: NtKernel, vp: Cpu, ptr: int, length: int) -> str | int:
    """The key name at ``ptr``, or the NTSTATUS explaining why it could not be read."""
    if not 0 < length <= 256:
        return int(NtStatus.INVALID_PARAMETER)
    raw = nt.copy_from_user(vp, ptr, length)
    if raw is None:
        return int(NtStatus.ACCESS_VIOLATION)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return int(NtStatus.INVALID_PARAMETER)


def nt_set_value_key(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(PCSTR key, ULONG key length, ULONG64 value): HKLM needs an administrator."""
    process = nt.process_of(vp)
    key = _key(nt, vp, args[0], args[1])
    if isinstance(key, int):
        return key
    if process is None or not caller_is_admin(nt, vp):
        return int(NtStatus.ACCESS_DENIED)
    from vbsim.nt import registry

    if not registry.set_value(nt, _cpu(vp), key, args[2]):
        return int(NtStatus.NO_MEMORY)  # the hive page is full (or the name too long)
    if vp.tracing:
        vp.emit("registry", "nt-registry", "written", key=key, value=args[2])
    return int(NtStatus.SUCCESS)


def nt_query_value_key(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(PCSTR key, ULONG key length, PULONG64 value)."""
    key = _key(nt, vp, args[0], args[1])
    if isinstance(key, int):
        return key
    from vbsim.nt import registry

    value = registry.query(nt, _cpu(vp), key)
    if value is None:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND)
    if not nt.copy_to_user(vp, args[2], (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


def nt_query_information_process(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """(pid, class 0x3F = IsSecureProcess in PROCESS_EXTENDED_BASIC_INFORMATION, PULONG64 out)."""
    target = nt.lookup_process(vp, args[0])
    if target is None:
        return int(NtStatus.INVALID_HANDLE)
    if args[1] != 0x3F:
        return int(NtStatus.INVALID_INFO_CLASS)
    from vbsim.nt.layouts import EPROCESS, NO_TRUSTLET, read_field

    trustlet = read_field(vp, target.eprocess, EPROCESS.TrustletId)
    value = (trustlet << 1 | 1) if trustlet != NO_TRUSTLET else 0
    if not nt.copy_to_user(vp, args[2], value.to_bytes(8, "little")):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


HANDLERS: Mapping[str, Handler] = MappingProxyType(
    {
        "NtTestAlert": nt_test_alert,
        "NtAllocateVirtualMemory": nt_allocate_virtual_memory,
        "NtReadVirtualMemory": nt_read_virtual_memory,
        "NtWriteVirtualMemory": nt_write_virtual_memory,
        "NtTerminateProcess": nt_terminate_process,
        "NtSetValueKey": nt_set_value_key,
        "NtQueryValueKey": nt_query_value_key,
        "NtQueryInformationProcess": nt_query_information_process,
        "NtProtectVirtualMemory": nt_protect_virtual_memory,
        "NtQueryVirtualMemory": nt_query_virtual_memory,
        "NtFreeVirtualMemory": nt_free_virtual_memory,
        "NtCreateUserProcess": nt_create_user_process,
    }
)


def register(nt: NtKernel, name: str, handler: Handler) -> None:
    nt.register_service(name, NUMBERS[name], handler)


def register_all(nt: NtKernel) -> None:
    for name, handler in HANDLERS.items():
        register(nt, name, handler)


_NO_ARGS = (0, 0, 0, 0)


def syscall(vp: Cpu, name: str, *args: int) -> int:
    """User-mode stub (ntdll): load RAX and R10/RDX/R8/R9, ``syscall``, return RAX."""
    vp.rax = NUMBERS[name]
    regs = args + _NO_ARGS if len(args) < 4 else args
    vp.r10, vp.rdx, vp.r8, vp.r9 = regs[0], regs[1], regs[2], regs[3]
    vp.syscall()
    return vp.rax
