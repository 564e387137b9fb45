"""NT processes: an EPROCESS and a TOKEN in VTL0 RAM, an address space of their own.

What NT decides from lives in guest RAM (:mod:`vbsim.nt.layouts`): the process's PID, its link in
``PsActiveProcessHead``'s list, its token pointer (EX_FAST_REF), its PS_PROTECTION byte, its exit
status and flags, and the token's user and groups (SID_AND_ATTRIBUTES) and privilege bitmaps.
Every check reads those bytes through the deciding processor at the moment it decides, so a
kernel write primitive that changes them (token swap, PPL strip) changes NT's next decision.

What a process has allocated is its VAD tree, also in RAM (``EPROCESS.VadRoot``,
:mod:`vbsim.nt.vad`).

The running process is the one the processor block at GS names (``KPCR.CurrentProcess``), and
a thread runs on the CR3 its KPROCESS.DirectoryTableBase holds, both read at each switch.  A
process is found by PID through PspCidTable (:mod:`vbsim.nt.cid`, :func:`find_process`).  The
Python :class:`Process` is only a reference: the EPROCESS VA, with the PID, name and root read
at the moment it was taken, as labels.  Host tools list processes by walking
PsActiveProcessHead in RAM (``System.process_views``), so a process a rootkit unlinked is
missing there as it is from a debugger's list, while a lookup by PID still finds it.
Each process gets its own PML4 whose kernel half (entries 256-511) is the kernel's, as on
Windows x64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.layout import Loads
from vbsim.nt import cid
from vbsim.nt.layouts import (
    EPROCESS,
    IMAGE_NAME_LEN,
    INTEGRITY_HIGH,
    INTEGRITY_MEDIUM,
    INTEGRITY_SYSTEM,
    LIST_ENTRY,
    MAX_FAST_REFS,
    NO_TRUSTLET,
    PROCESS_DELETE,
    PROCESS_EXITING,
    PROCESS_OBJECT,
    SE_GROUP_ENABLED,
    SE_GROUP_ENABLED_BY_DEFAULT,
    SE_GROUP_INTEGRITY,
    SE_GROUP_INTEGRITY_ENABLED,
    SE_GROUP_MANDATORY,
    SID_ADMINISTRATORS,
    SID_AND_ATTRIBUTES,
    TOKEN,
    Cpu,
    Field,
    HostReader,
    Privilege,
    Protection,
    _Ram,
    account_name,
    account_sid,
    encode_sid,
    fast_ref_object,
    privilege_bit,
    read_field,
    sid_length,
    write_field,
)

__all__ = ["Process", "Protection", "Region", "Token", "new_address_space"]

#: ntstatus.h STATUS_PENDING: a live process's ExitStatus.
STATUS_PENDING = 0x103
ADMINISTRATORS_SID = encode_sid(*SID_ADMINISTRATORS)


@dataclass
class Region:
    """What one allocation (:meth:`~vbsim.nt.kernel.NtKernel.allocate`) committed: the caller's
    record of the call's result, as an MDL or an out-parameter would give it.  NT keeps none of
    it: what it decides from later is the VAD (``vad``, its node in RAM) and the PTEs."""

    base: int
    size: int
    writable: bool
    executable: bool
    pfns: list[int] = field(default_factory=list)
    #: The MMVAD_SHORT describing the range (a pool VA in NT's direct map).
    vad: int = 0


@dataclass(frozen=True)
class Token:
    """What a new TOKEN should say (the logon session's request, LsaLogonUser's result).

    Not a token: :func:`build_token` writes one into RAM from it, and nothing reads this again."""

    user: str
    admin: bool = False
    #: SeDebugPrivilege (present and enabled).
    debug_privilege: bool = False
    #: SeLoadDriverPrivilege (present and enabled).
    load_driver: bool = False
    #: SeTcbPrivilege (SYSTEM's "act as part of the operating system").
    tcb: bool = False

    @property
    def privileges(self) -> int:
        bits = 0
        for wanted, privilege in (
            (self.debug_privilege, Privilege.SE_DEBUG),
            (self.load_driver, Privilege.SE_LOAD_DRIVER),
            (self.tcb, Privilege.SE_TCB),
        ):
            if wanted:
                bits |= privilege_bit(privilege)
        return bits

    @property
    def integrity(self) -> int:
        if self.user == "SYSTEM":
            return INTEGRITY_SYSTEM
        return INTEGRITY_HIGH if self.admin else INTEGRITY_MEDIUM


@dataclass(frozen=True, eq=False)
class Process:
    """A reference to a process, as a PEPROCESS is: the EPROCESS VA, with what the object said
    when the reference was taken (:func:`process_at`).  Nothing here is NT's record of the
    process: NT finds processes through PspCidTable (:mod:`vbsim.nt.cid`) and the processor
    block, and every decision reads the EPROCESS and its TOKEN in RAM at the moment it is made.
    The copied fields are labels for traces and tools; two references are equal when they
    name the same object."""

    eprocess: int
    pid: int
    name: str
    #: The address space at KPROCESS.DirectoryTableBase when the reference was taken, for
    #: tools (NT itself re-reads the root at each use: ``NtKernel.address_space``).
    tables: PageTables
    #: EPROCESS.Pcb.SecurePid: the handle of the VTL1 half (0: not a secure process).
    secure_pid: int = 0
    #: EPROCESS.TrustletId (None: not a trustlet).
    trustlet_id: int | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and other.eprocess == self.eprocess

    def __hash__(self) -> int:
        return hash(self.eprocess)


def find_process(memory: Loads, cid_pointer: int, pid: int) -> Process | None:
    """PsLookupProcessByProcessId's decision, read through ``memory`` now: the object
    PspCidTable (the table the pointer at ``cid_pointer`` names) holds for ``pid``, if it is a
    process (its dispatcher header's type; threads share the table) that is not exiting
    (ReactOS ``ntoskrnl/ps/process.c``).  The list is not walked: a process a rootkit unlinked
    from PsActiveProcessHead is still found by PID, as on Windows, and an entry a K0 write
    redirects names the object it now points at."""
    eprocess = cid.lookup(memory, memory.read_u64(cid_pointer), pid)
    if not eprocess or read_field(memory, eprocess, EPROCESS.Type) != PROCESS_OBJECT:
        return None
    return None if is_exiting(memory, eprocess) else process_at(memory, eprocess)


def _no_processor(*_: int) -> Any:
    raise RuntimeError("a process reference walks no tables: use NtKernel.address_space")


#: What a reference's ``tables`` walks through: nothing (NT's editor is NtKernel.address_space).
DETACHED = PhysAccess(_no_processor, _no_processor, _no_processor)
_ROOT_MASK = 0x000F_FFFF_FFFF_F000


def process_at(memory: Loads, eprocess: int) -> Process:
    """A reference to the process whose EPROCESS is at ``eprocess``, read now through
    ``memory`` (NT's processor, or a host tool's kernel view).  One read: the object fits a
    page (EPROCESS.SIZE), so the labels cost one translation."""
    raw = memory.read(eprocess, EPROCESS.SIZE)

    def field_(fld: Field) -> int:
        return int.from_bytes(raw[fld.offset : fld.offset + fld.size], "little")

    name = raw[EPROCESS.ImageFileName.offset :][:IMAGE_NAME_LEN].rstrip(b"\0")
    trustlet = field_(EPROCESS.TrustletId)
    return Process(
        eprocess,
        field_(EPROCESS.UniqueProcessId),
        name.decode("latin-1"),
        PageTables(DETACHED, field_(EPROCESS.DirectoryTableBase) & _ROOT_MASK, []),
        field_(EPROCESS.SecurePid),
        None if trustlet == NO_TRUSTLET else trustlet,
    )


def new_address_space(phys: PhysAccess, kernel_root: int) -> PageTables:
    """A PML4 whose kernel half is the kernel's."""
    tables = PageTables(phys)
    for index in range(256, 512):
        entry = phys.read_u64(kernel_root + index * 8)
        if entry:
            phys.write_u64(tables.root + index * 8, entry)
    return tables


# -- building (NT, at its CPU) --------------------------------------------------------------------
def build_token(cpu: Cpu, va: int, token_id: int, spec: Token) -> None:
    """SepCreateToken into the zeroed page at ``va``: fixed part, then the variable part
    (SID_AND_ATTRIBUTES[user, Administrators?, integrity], then the SIDs)."""
    sids: list[tuple[bytes, int]] = [(account_sid(spec.user), 0)]
    if spec.admin:
        attrs = SE_GROUP_MANDATORY | SE_GROUP_ENABLED_BY_DEFAULT | SE_GROUP_ENABLED
        sids.append((ADMINISTRATORS_SID, attrs))
    sids.append(
        (encode_sid(16, (spec.integrity,)), SE_GROUP_INTEGRITY | SE_GROUP_INTEGRITY_ENABLED)
    )
    array = va + TOKEN.VARIABLE_PART
    sid_at = array + len(sids) * SID_AND_ATTRIBUTES.SIZE
    for index, (sid, attributes) in enumerate(sids):
        entry = array + index * SID_AND_ATTRIBUTES.SIZE
        cpu.write(sid_at, sid)
        write_field(cpu, entry, SID_AND_ATTRIBUTES.Sid, sid_at)
        write_field(cpu, entry, SID_AND_ATTRIBUTES.Attributes, attributes)
        sid_at += (len(sid) + 7) & ~7
    write_field(cpu, va, TOKEN.TokenId, token_id)
    privileges = spec.privileges
    write_field(cpu, va, TOKEN.PrivilegesPresent, privileges)
    write_field(cpu, va, TOKEN.PrivilegesEnabled, privileges)
    write_field(cpu, va, TOKEN.PrivilegesEnabledByDefault, privileges)
    write_field(cpu, va, TOKEN.UserAndGroupCount, len(sids))
    write_field(cpu, va, TOKEN.UserAndGroups, array)
    write_field(cpu, va, TOKEN.IntegrityLevelIndex, len(sids) - 1)


def copy_token(cpu: Cpu, source: int, va: int, token_id: int) -> None:
    """SeCopyAccessToken (a child's primary token is a copy of its parent's): the bytes, with
    the variable part's pointers rebased onto the copy and a fresh TokenId."""
    cpu.write(va, cpu.read(source, PAGE_SIZE))
    delta = va - source
    count = read_field(cpu, va, TOKEN.UserAndGroupCount)
    array = read_field(cpu, va, TOKEN.UserAndGroups) + delta
    write_field(cpu, va, TOKEN.UserAndGroups, array)
    for index in range(min(count, 16)):
        entry = array + index * SID_AND_ATTRIBUTES.SIZE
        write_field(
            cpu,
            entry,
            SID_AND_ATTRIBUTES.Sid,
            read_field(cpu, entry, SID_AND_ATTRIBUTES.Sid) + delta,
        )
    write_field(cpu, va, TOKEN.TokenId, token_id)


def build_eprocess(
    cpu: Cpu, va: int, pid: int, name: str, token: int, protection: int, cr3: int
) -> None:
    """PspAllocateProcess / PspInitializeProcess into the zeroed page at ``va``."""
    write_field(cpu, va, EPROCESS.Type, PROCESS_OBJECT)
    write_field(cpu, va, EPROCESS.UniqueProcessId, pid)
    write_field(cpu, va, EPROCESS.Token, token | MAX_FAST_REFS)
    write_field(cpu, va, EPROCESS.Protection, protection)
    write_field(cpu, va, EPROCESS.DirectoryTableBase, cr3)
    write_field(cpu, va, EPROCESS.ExitStatus, STATUS_PENDING)
    write_field(cpu, va, EPROCESS.TrustletId, NO_TRUSTLET)
    raw = name.encode("latin-1", "replace")[:IMAGE_NAME_LEN]
    cpu.write(va + EPROCESS.ImageFileName.offset, raw.ljust(IMAGE_NAME_LEN, b"\0"))


def insert_tail(cpu: Cpu, head: int, entry: int) -> None:
    """InsertTailList(head, entry)."""
    last = read_field(cpu, head, LIST_ENTRY.Blink)
    write_field(cpu, entry, LIST_ENTRY.Flink, head)
    write_field(cpu, entry, LIST_ENTRY.Blink, last)
    write_field(cpu, last, LIST_ENTRY.Flink, entry)
    write_field(cpu, head, LIST_ENTRY.Blink, entry)


def remove_entry(cpu: Cpu, entry: int) -> None:
    """RemoveEntryList(entry)."""
    flink = read_field(cpu, entry, LIST_ENTRY.Flink)
    blink = read_field(cpu, entry, LIST_ENTRY.Blink)
    write_field(cpu, blink, LIST_ENTRY.Flink, flink)
    write_field(cpu, flink, LIST_ENTRY.Blink, blink)
    write_field(cpu, entry, LIST_ENTRY.Flink, entry)
    write_field(cpu, entry, LIST_ENTRY.Blink, entry)


#: A list walk gives up after this many entries (a corrupted, cyclic list must not hang NT).
MAX_WALK = 4096


def walk_processes(cpu: Cpu, head: int) -> Iterator[int]:
    """The EPROCESS VAs on ``PsActiveProcessHead``'s list, in order (CONTAINING_RECORD)."""
    link = read_field(cpu, head, LIST_ENTRY.Flink)
    for _ in range(MAX_WALK):
        if link == head or not link:
            return
        yield link - EPROCESS.ActiveProcessLinks.offset
        link = read_field(cpu, link, LIST_ENTRY.Flink)


# -- deciding (NT, at its CPU, at the moment of the decision) ----------------------------
def token_of(cpu: Cpu, eprocess: int) -> int:
    """PsReferencePrimaryToken: the TOKEN the EPROCESS's fast reference designates."""
    return fast_ref_object(read_field(cpu, eprocess, EPROCESS.Token))


def privilege_held(cpu: Cpu, token: int, privilege: Privilege) -> bool:
    """SePrivilegeCheck on a primary token: the privilege must be present and enabled (since
    Windows 10 1607 the kernel checks Present as well as Enabled: "Abusing Token Privileges for
    LPE", Pierini/Alexander 2017)."""
    bit = privilege_bit(privilege)
    present = read_field(cpu, token, TOKEN.PrivilegesPresent)
    enabled = read_field(cpu, token, TOKEN.PrivilegesEnabled)
    return bool(present & enabled & bit)


def member_of(cpu: Cpu, token: int, sid: bytes) -> bool:
    """SeTokenIsAdmin-style group test: an enabled group with exactly ``sid``."""
    count = min(read_field(cpu, token, TOKEN.UserAndGroupCount), 64)
    array = read_field(cpu, token, TOKEN.UserAndGroups)
    for index in range(1, count):  # entry 0 is the user
        entry = array + index * SID_AND_ATTRIBUTES.SIZE
        if not read_field(cpu, entry, SID_AND_ATTRIBUTES.Attributes) & SE_GROUP_ENABLED:
            continue
        if cpu.read(read_field(cpu, entry, SID_AND_ATTRIBUTES.Sid), len(sid)) == sid:
            return True
    return False


def is_admin(cpu: Cpu, token: int) -> bool:
    """The token has BUILTIN\\Administrators (S-1-5-32-544) enabled."""
    return member_of(cpu, token, ADMINISTRATORS_SID)


def protection_of(cpu: Cpu, eprocess: int) -> int:
    return read_field(cpu, eprocess, EPROCESS.Protection)


def is_exiting(cpu: Loads, eprocess: int) -> bool:
    return bool(read_field(cpu, eprocess, EPROCESS.Flags) & (PROCESS_EXITING | PROCESS_DELETE))


def mark_exited(cpu: Cpu, eprocess: int, status: int) -> None:
    """PspExitProcess: ExitStatus, and ProcessExiting in Flags."""
    write_field(cpu, eprocess, EPROCESS.ExitStatus, status & 0xFFFF_FFFF)
    flags = read_field(cpu, eprocess, EPROCESS.Flags)
    write_field(cpu, eprocess, EPROCESS.Flags, flags | PROCESS_EXITING)


# -- host side (tools, goal checks, tests; never guest code) ------------------------------------
@dataclass(frozen=True)
class ProcessView:
    """What an EPROCESS and its TOKEN say in RAM now (a debugger's ``!process``)."""

    eprocess: int
    pid: int
    name: str
    token: int
    user: str
    admin: bool
    privileges: int
    protection: int
    exit_status: int
    exiting: bool
    secure_pid: int
    trustlet_id: int | None

    def holds(self, privilege: Privilege) -> bool:
        return bool(self.privileges & privilege_bit(privilege))


def host_view(ram: _Ram, eprocess: int) -> ProcessView:
    """Read the EPROCESS at ``eprocess`` (a direct-map VA) and its token from guest RAM."""
    from vbsim.guest.address_space import DIRECT_MAP

    reader = HostReader(ram, DIRECT_MAP)
    token = fast_ref_object(reader.field(eprocess, EPROCESS.Token))
    count = min(reader.field(token, TOKEN.UserAndGroupCount), 64)
    array = reader.field(token, TOKEN.UserAndGroups)
    user_sid = reader.field(array, SID_AND_ATTRIBUTES.Sid)
    header = reader.read(user_sid, 8)
    user = account_name(reader.read(user_sid, sid_length(header[1])))
    admin = False
    for index in range(1, count):
        entry = array + index * SID_AND_ATTRIBUTES.SIZE
        sid = reader.field(entry, SID_AND_ATTRIBUTES.Sid)
        attributes = reader.field(entry, SID_AND_ATTRIBUTES.Attributes)
        if attributes & SE_GROUP_ENABLED and reader.read(sid, 16) == ADMINISTRATORS_SID:
            admin = True
    trustlet = reader.field(eprocess, EPROCESS.TrustletId)
    raw_name = reader.read(eprocess + EPROCESS.ImageFileName.offset, IMAGE_NAME_LEN)
    return ProcessView(
        eprocess,
        reader.field(eprocess, EPROCESS.UniqueProcessId),
        raw_name.rstrip(b"\0").decode("latin-1"),
        token,
        user,
        admin,
        reader.field(token, TOKEN.PrivilegesPresent) & reader.field(token, TOKEN.PrivilegesEnabled),
        reader.field(eprocess, EPROCESS.Protection),
        reader.field(eprocess, EPROCESS.ExitStatus),
        bool(reader.field(eprocess, EPROCESS.Flags) & (PROCESS_EXITING | PROCESS_DELETE)),
        reader.field(eprocess, EPROCESS.SecurePid),
        None if trustlet == NO_TRUSTLET else trustlet,
    )


def host_processes(ram: _Ram, head_va: int, head_gpa: int) -> list[ProcessView]:
    """Every process on PsActiveProcessHead's list as RAM holds it (``!process 0 0``).  The head
    lives in NT's .data (``head_va`` at ``head_gpa``); the EPROCESSes in the direct map."""
    from vbsim.guest.address_space import DIRECT_MAP

    reader = HostReader(ram, DIRECT_MAP)
    views: list[ProcessView] = []
    link = int.from_bytes(ram.read(head_gpa, 8), "little")
    while link and link != head_va and len(views) < MAX_WALK:
        eprocess = link - EPROCESS.ActiveProcessLinks.offset
        views.append(host_view(ram, eprocess))
        link = reader.field(link, LIST_ENTRY.Flink)
    return views


def host_secure_thread_cookie(ram: _Ram, eprocess: int) -> int:
    """EPROCESS.SecureThreadCookie as RAM holds it (host side; 0: no secure thread)."""
    from vbsim.guest.address_space import DIRECT_MAP

    return HostReader(ram, DIRECT_MAP).field(eprocess, EPROCESS.SecureThreadCookie)
