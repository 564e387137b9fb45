"""NT's structure layouts in VTL0 RAM: numbers and layouts only (the NT analogue of ``hv.defs``).

Each structure is described once, field by field, with its offset and size and where that comes
from.  Offsets marked ``[Vergilius 19041]`` are those of Windows 10 2004 / 20H2 x64 (build 19041)
as the Vergilius Project (https://www.vergiliusproject.com/kernels/x64/windows-10/2004) lists
them; they are also the offsets public exploit code of that era hard-codes (EPROCESS
UniqueProcessId 0x440, ActiveProcessLinks 0x448, Token 0x4B8, Protection 0x87A; TOKEN Privileges
0x40).  Where the model compacts or invents a layout it says so (``[model]``): a real EPROCESS has
hundreds of fields the model does not need, and the model keeps only the ones NT decides from.

Behaviour lives elsewhere.  The accessors here are the two one-liners a layout needs: a guest
read/write through a :class:`~vbsim.hw.cpu.Cpu` (``read_field``/``write_field``: NT's own
processor, its paging over VTL0's SLAT) and a host-side read over guest RAM for tools
(:class:`HostReader`: the report, goal checks and tests; never guest code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final, Protocol

from vbsim.guest.address_space import CODE_BASE
from vbsim.layout import Mem
from vbsim.layout import read_field as read_field
from vbsim.layout import write_field as write_field

#: The loads and stores the accessors need (a :class:`vbsim.hw.cpu.Cpu` has them).
Cpu = Mem


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a structure: byte offset, size in bytes, and its public source."""

    name: str
    offset: int
    size: int
    source: str = "Vergilius 19041"


# -- LIST_ENTRY ---------------------------------------------------------------------------------
class LIST_ENTRY:
    """_LIST_ENTRY [Vergilius]: a doubly linked list node, 16 bytes."""

    Flink: Final = Field("Flink", 0x00, 8)
    Blink: Final = Field("Blink", 0x08, 8)
    SIZE: Final = 0x10


# -- EX_FAST_REF --------------------------------------------------------------------------------
#: _EX_FAST_REF on x64 [Vergilius]: Object pointer with RefCnt in the low 4 bits.
FAST_REF_MASK: Final = 0xF
#: ObInitializeFastReference stores the object with MAX_FAST_REFS (15 on x64) cached references
#: (WRK ``ob/fastref.c``; Windows Internals 7th ed. part 1 ch. 8 "Object Manager").
MAX_FAST_REFS: Final = 15


def fast_ref_object(value: int) -> int:
    """The object an EX_FAST_REF points to (the low 4 bits are the cached reference count)."""
    return value & ~FAST_REF_MASK


# -- KPROCESS / EPROCESS --------------------------------------------------------------------------
class EPROCESS:
    """_EPROCESS with its embedded _KPROCESS (Pcb at offset 0)."""

    #: _KPROCESS.Header.Type: the _DISPATCHER_HEADER's object type, ProcessObject for a
    #: process [Vergilius 19041]; PsLookupProcessByProcessId checks it on the object a CID
    #: entry names (ReactOS ntoskrnl/ps/process.c), because threads share the table.
    Type: Final = Field("Pcb.Header.Type", 0x000, 1)
    #: _KPROCESS.DirectoryTableBase (the process's CR3) [Vergilius 19041].
    DirectoryTableBase: Final = Field("Pcb.DirectoryTableBase", 0x028, 8)
    #: _KPROCESS.SecurePid: the handle of the process's VTL1 half (0 for a normal process).
    #: [model] The field exists in _KPROCESS since 1507 (Windows Internals 7th ed. part 1 ch. 3
    #: "Trustlets"); its offset varies by build and the model places it here.
    SecurePid: Final = Field("Pcb.SecurePid", 0x3D0, 8, "model (field per Windows Internals)")
    UniqueProcessId: Final = Field("UniqueProcessId", 0x440, 8)
    ActiveProcessLinks: Final = Field("ActiveProcessLinks", 0x448, 16)
    #: _EPROCESS.Flags: ProcessExiting is bit 2, ProcessDelete bit 3 [Vergilius 19041].
    Flags: Final = Field("Flags", 0x464, 4)
    #: EX_FAST_REF to the primary _TOKEN.
    Token: Final = Field("Token", 0x4B8, 8)
    #: UCHAR ImageFileName[15], NUL-padded.
    ImageFileName: Final = Field("ImageFileName", 0x5A8, 15)
    #: NTSTATUS ExitStatus (STATUS_PENDING while the process lives).
    ExitStatus: Final = Field("ExitStatus", 0x7D4, 4)
    #: _RTL_AVL_TREE VadRoot: the root of the process's VAD tree (:class:`RTL_AVL_TREE`: one
    #: pointer, the root _MMVAD_SHORT's VadNode; 0 for an empty tree).
    VadRoot: Final = Field("VadRoot", 0x7D8, 8)
    #: PVOID VadHint: the node MiLocateAddress found last (a cache NT may ignore).
    VadHint: Final = Field("VadHint", 0x7E0, 8)
    #: ULONGLONG VadCount: the number of nodes in the tree.
    VadCount: Final = Field("VadCount", 0x7E8, 8)
    #: _PS_PROTECTION Protection (one byte, see :class:`PsProtection`).
    Protection: Final = Field("Protection", 0x87A, 1)
    #: [model] The trustlet ID from the image's .tPolicy (Windows keeps it in the secure
    #: process's policy in VTL1 and exposes it through PROCESS_EXTENDED_BASIC_INFORMATION; the
    #: model caches it in the VTL0 object at an offset of its own).  0xFFFFFFFF: not a trustlet.
    TrustletId: Final = Field("TrustletId", 0x9F0, 4, "model")
    #: [model] The secure thread's cookie the SK returned from CREATE_THREAD, which NT passes
    #: with every call into the trustlet (Windows keeps it in _KTHREAD.SecureThreadCookie of the
    #: thread, Windows Internals 7th ed. part 1 ch. 3; the model's processes have one thread).
    SecureThreadCookie: Final = Field("SecureThreadCookie", 0x9F8, 8, "model")
    #: sizeof(_EPROCESS) in build 19041 [Vergilius]: it fits one page.
    SIZE: Final = 0xA40


#: _KOBJECTS.ProcessObject, the dispatcher type of a process (ReactOS ``ketypes.h``, the
#: public KOBJECTS enumeration).
PROCESS_OBJECT: Final = 3
#: _EPROCESS.Flags bits [Vergilius 19041].
PROCESS_EXITING: Final = 1 << 2
PROCESS_DELETE: Final = 1 << 3
#: ImageFileName holds 15 bytes [Vergilius]: longer names are truncated, as Windows does.
IMAGE_NAME_LEN: Final = 15
#: EPROCESS.TrustletId for a process that is not a trustlet [model].
NO_TRUSTLET: Final = 0xFFFF_FFFF


# -- HANDLE_TABLE (PspCidTable) ---------------------------------------------------------------
class HANDLE_TABLE:
    """_HANDLE_TABLE [Vergilius 19041], the fields the executive's handle code uses.

    PspCidTable is one: the table of client IDs, whose handle values are the PIDs (and TIDs)
    Windows hands out and whose entries point at the process (and thread) objects' bodies
    (Windows Internals 7th ed. part 1 ch. 3 "Process internals")."""

    #: The first handle value no table page backs: a lookup at or above it fails before it
    #: touches a table (ExpLookupHandleTableEntry, ReactOS ntoskrnl/ex/handle.c).
    NextHandleNeedingPool: Final = Field("NextHandleNeedingPool", 0x00, 4)
    #: The top-level table's VA; its low 2 bits are the number of levels above the leaf pages.
    TableCode: Final = Field("TableCode", 0x08, 8)
    #: FreeLists[0].FirstFreeHandleEntry (_HANDLE_TABLE_FREE_LIST at 0x40, the pointer at +8):
    #: the free entries are chained through their NextFreeHandleEntry.
    FirstFreeHandleEntry: Final = Field("FreeLists[0].FirstFreeHandleEntry", 0x48, 8)
    #: FreeLists[0].HandleCount.
    HandleCount: Final = Field("FreeLists[0].HandleCount", 0x58, 4)
    SIZE: Final = 0x80


class HANDLE_TABLE_ENTRY:
    """_HANDLE_TABLE_ENTRY [Vergilius 19041], 16 bytes.  LowValue packs Unlocked (bit 0),
    RefCnt (bits 1-16), Attributes (17-19) and ObjectPointerBits (20-63: the object's VA >> 4,
    its top 16 bits implied all ones); HighValue is GrantedAccessBits for a process handle
    table and, while the entry is free, NextFreeHandleEntry."""

    LowValue: Final = Field("LowValue", 0x00, 8)
    HighValue: Final = Field("HighValue / NextFreeHandleEntry", 0x08, 8)
    SIZE: Final = 0x10


#: Handle values are multiples of 4: the low two bits are EXHANDLE.TagBits, which a lookup
#: clears (ReactOS ExpLookupHandleTableEntry; Raymond Chen, "Why are process and thread IDs
#: multiples of four?", The Old New Thing, 2008-02-28).
HANDLE_VALUE_INC: Final = 4
#: Entries per leaf page (4096 / 16) and pointers per mid-level page (4096 / 8); entry 0 of
#: every leaf page is never handed out (it holds the page's _HANDLE_TABLE_ENTRY_INFO pointer,
#: ExpAllocateLowLevelTable in the WRK ``ex/handle.c``), so handle 0 is never valid.
LOWLEVEL_COUNT: Final = 256
MIDLEVEL_COUNT: Final = 512
HANDLE_UNLOCKED: Final = 1
_OBJECT_POINTER_SHIFT: Final = 20
_IMPLIED_HIGH: Final = 0xFFFF_0000_0000_0000


def handle_entry_value(obj: int) -> int:
    """The LowValue of an entry in use that points at ``obj`` (unlocked, no references)."""
    return ((obj & 0xFFFF_FFFF_FFFF) >> 4) << _OBJECT_POINTER_SHIFT | HANDLE_UNLOCKED


def handle_entry_object(low: int) -> int:
    """The object a LowValue points at (0: a free entry)."""
    bits = low >> _OBJECT_POINTER_SHIFT
    return (bits << 4) | _IMPLIED_HIGH if bits else 0


# -- PS_PROTECTION ----------------------------------------------------------------------------
class PsProtectedType(IntEnum):
    """_PS_PROTECTED_TYPE (Windows Internals 7th ed. part 1 ch. 3 "Protected processes")."""

    NONE = 0
    PROTECTED_LIGHT = 1
    PROTECTED = 2


class PsProtectedSigner(IntEnum):
    """_PS_PROTECTED_SIGNER (Windows Internals 7th ed. part 1 ch. 3, table 3-2)."""

    NONE = 0
    AUTHENTICODE = 1
    CODEGEN = 2
    ANTIMALWARE = 3
    LSA = 4
    WINDOWS = 5
    WINTCB = 6
    WINSYSTEM = 7
    APP = 8


class PsProtection:
    """_PS_PROTECTION: Type in bits 0-2, Audit bit 3, Signer bits 4-7 [Vergilius]."""

    TYPE_MASK: Final = 0x07
    AUDIT: Final = 0x08
    SIGNER_SHIFT: Final = 4

    @staticmethod
    def make(kind: PsProtectedType, signer: PsProtectedSigner) -> int:
        return int(kind) | int(signer) << PsProtection.SIGNER_SHIFT

    @staticmethod
    def kind(value: int) -> int:
        return value & PsProtection.TYPE_MASK

    @staticmethod
    def signer(value: int) -> int:
        return (value >> PsProtection.SIGNER_SHIFT) & 0xF


class Protection(IntEnum):
    """The PS_PROTECTION bytes the model uses (Windows Internals 7th ed. part 1 ch. 3)."""

    NONE = 0
    #: RunAsPPL lsass: PsProtectedSignerLsa-Light (0x41).
    PPL = PsProtection.make(PsProtectedType.PROTECTED_LIGHT, PsProtectedSigner.LSA)
    #: An antimalware service (PsProtectedSignerAntimalware-Light, 0x31).
    PPL_ANTIMALWARE = PsProtection.make(
        PsProtectedType.PROTECTED_LIGHT, PsProtectedSigner.ANTIMALWARE
    )
    #: The System process: PsProtectedSignerWinSystem (0x72).
    SYSTEM = PsProtection.make(PsProtectedType.PROTECTED, PsProtectedSigner.WINSYSTEM)


# -- TOKEN --------------------------------------------------------------------------------------
class TOKEN:
    """_TOKEN (the fixed part) [Vergilius 19041]; the SIDs live in the variable part after it."""

    TokenId: Final = Field("TokenId", 0x10, 8)
    #: _SEP_TOKEN_PRIVILEGES: Present, Enabled, EnabledByDefault (u64 bitmaps, bit n = LUID n).
    PrivilegesPresent: Final = Field("Privileges.Present", 0x40, 8)
    PrivilegesEnabled: Final = Field("Privileges.Enabled", 0x48, 8)
    PrivilegesEnabledByDefault: Final = Field("Privileges.EnabledByDefault", 0x50, 8)
    SessionId: Final = Field("SessionId", 0x78, 4)
    UserAndGroupCount: Final = Field("UserAndGroupCount", 0x7C, 4)
    #: PSID_AND_ATTRIBUTES UserAndGroups: entry 0 is the user, then the groups.
    UserAndGroups: Final = Field("UserAndGroups", 0x98, 8)
    #: Index into UserAndGroups of the integrity-level SID (S-1-16-x).
    IntegrityLevelIndex: Final = Field("IntegrityLevelIndex", 0xD0, 4)
    #: [model] Where the variable part (SID_AND_ATTRIBUTES array, then SIDs) starts: Windows
    #: allocates it right after the fixed part (Windows Internals 7th ed. part 1 ch. 7 "Tokens").
    VARIABLE_PART: Final = 0x500


class SID_AND_ATTRIBUTES:
    """_SID_AND_ATTRIBUTES [winnt.h]: PSID, then ULONG Attributes (padded to 16 bytes)."""

    Sid: Final = Field("Sid", 0x0, 8, "winnt.h")
    Attributes: Final = Field("Attributes", 0x8, 4, "winnt.h")
    SIZE: Final = 0x10


#: winnt.h group attributes.
SE_GROUP_MANDATORY: Final = 0x1
SE_GROUP_ENABLED_BY_DEFAULT: Final = 0x2
SE_GROUP_ENABLED: Final = 0x4
SE_GROUP_INTEGRITY: Final = 0x20
SE_GROUP_INTEGRITY_ENABLED: Final = 0x40


class Privilege(IntEnum):
    """Privilege LUIDs (wdm.h ``SE_*_PRIVILEGE``); bit ``n`` of the SEP_TOKEN_PRIVILEGES maps."""

    SE_TCB = 7
    SE_LOAD_DRIVER = 10
    SE_DEBUG = 20


def privilege_bit(privilege: Privilege) -> int:
    return 1 << int(privilege)


#: Well-known SIDs (MS-DTYP §2.4.2.4), as (revision 1, identifier authority, sub-authorities).
SID_SYSTEM: Final = (5, (18,))
SID_ADMINISTRATORS: Final = (5, (32, 544))
#: Mandatory integrity levels: S-1-16-RID (MS-DTYP §2.4.2.4).
INTEGRITY_MEDIUM: Final = 0x2000
INTEGRITY_HIGH: Final = 0x3000
INTEGRITY_SYSTEM: Final = 0x4000


def encode_sid(authority: int, subs: tuple[int, ...]) -> bytes:
    """A binary SID (MS-DTYP §2.4.2.2): revision, count, 6-byte big-endian authority, sub-auths."""
    return (
        bytes((1, len(subs)))
        + authority.to_bytes(6, "big")
        + b"".join(s.to_bytes(4, "little") for s in subs)
    )


def sid_string(raw: bytes) -> str:
    """``S-1-<authority>-<sub>...`` of a binary SID."""
    count = raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count)]
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def sid_length(count: int) -> int:
    return 8 + 4 * count


#: [model] The accounts of the model machine and their SIDs: SYSTEM is S-1-5-18; the local
#: accounts get the machine's domain S-1-5-21-1000-1000-1000 with RIDs 500 (the built-in
#: Administrator, MS-DTYP §2.4.2.4) and 1001+ (users).
MACHINE_DOMAIN: Final = (21, 1000, 1000, 1000)
ACCOUNTS: Final[Mapping[str, tuple[int, tuple[int, ...]]]] = MappingProxyType(
    {
        "SYSTEM": SID_SYSTEM,
        "Administrator": (5, (*MACHINE_DOMAIN, 500)),
        "administrator": (5, (*MACHINE_DOMAIN, 500)),
        "admin": (5, (*MACHINE_DOMAIN, 500)),
        "user": (5, (*MACHINE_DOMAIN, 1001)),
        "bob": (5, (*MACHINE_DOMAIN, 1002)),
    }
)


def account_sid(name: str) -> bytes:
    """The binary SID of a model account (unknown names get RID 1999)."""
    authority, subs = ACCOUNTS.get(name, (5, (*MACHINE_DOMAIN, 1999)))
    return encode_sid(authority, subs)


def account_name(raw: bytes) -> str:
    """The account name of a SID of the model machine (the first name registered), or the SID."""
    for name, (authority, subs) in ACCOUNTS.items():
        if encode_sid(authority, subs) == raw:
            return name
    return sid_string(raw)


# -- host-side reading -----------------------------------------------------------------------
class HostMemory(Protocol):
    """Guest RAM as host tools read it (``GuestRam`` has these)."""

    def read(self, gpa: int, length: int) -> bytes: ...
    def write(self, gpa: int, data: bytes) -> object: ...


_Ram = HostMemory


@dataclass(frozen=True)
class HostReader:
    """Tools' view of NT's structures: guest RAM read at the GPA behind a direct-map VA.

    NT allocates its objects (EPROCESS, TOKEN, callback blocks) from pool pages it reaches
    through its direct map (``DIRECT_MAP + GPA``), so a tool turns a pointer into a GPA by
    subtraction.  Host side only: guest code reads through its Cpu."""

    memory: _Ram
    direct_map: int

    def read(self, va: int, length: int) -> bytes:
        return self.memory.read(va - self.direct_map, length)

    def field(self, base: int, field: Field) -> int:
        return int.from_bytes(self.read(base + field.offset, field.size), "little")

    def u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def set_field(self, base: int, field: Field, value: int) -> None:
        """A debugger's (or the boot configuration's) edit of one field; not guest code."""
        self.memory.write(
            base + field.offset - self.direct_map, value.to_bytes(field.size, "little")
        )


@dataclass(frozen=True)
class HostKernelView:
    """A debugger's view of NT's kernel address space: guest RAM at the GPA that NT's kernel
    page tables, walked in RAM from ``root``, give for a VA (any VA NT maps, not only the
    direct map: ``.data`` globals, driver images).  Read only, and host side only: guest code
    reads through its Cpu.  An unmapped VA reads as zeros, as a debugger shows ``??``."""

    memory: _Ram
    root: int

    def translate(self, va: int) -> tuple[int, int] | None:
        """(the leaf entry, the size of the page it maps) for ``va``; None: not mapped."""
        from vbsim.hw.pagetable import PageTables, PhysAccess

        def read_u64(gpa: int) -> int:
            return int.from_bytes(self.memory.read(gpa, 8), "little")

        return PageTables(PhysAccess(read_u64, _read_only, _no_frames), self.root).translate(va)

    def pte(self, va: int) -> int | None:
        """The leaf entry for ``va`` (None: not mapped)."""
        found = self.translate(va)
        return None if found is None else found[0]

    def read(self, va: int, length: int, /) -> bytes:
        out = bytearray()
        while len(out) < length:
            at = va + len(out)
            take = min(length - len(out), _PAGE - (at & (_PAGE - 1)))
            found = self.translate(at)
            if found is None:
                out += bytes(take)
            else:
                leaf, size = found
                gpa = (leaf & _FRAME_MASK & ~(size - 1)) | (at & (size - 1))
                out += self.memory.read(gpa, take)
        return bytes(out)

    def read_u32(self, va: int, /) -> int:
        return int.from_bytes(self.read(va, 4), "little")

    def read_u64(self, va: int, /) -> int:
        return int.from_bytes(self.read(va, 8), "little")


_PAGE = 0x1000
_FRAME_MASK = 0x000F_FFFF_FFFF_F000


def _read_only(gpa: int, value: int) -> None:
    raise PermissionError("a host view of NT's memory writes nothing")


def _no_frames() -> int:
    raise PermissionError("a host view of NT's memory allocates nothing")


# -- callbacks ----------------------------------------------------------------------------------
#: PspCreateProcessNotifyRoutine: 64 EX_CALLBACK slots (PSP_MAX_CREATE_PROCESS_NOTIFY, WRK
#: ``ps/psp.h``; Windows Internals 7th ed. part 1 ch. 3; the array EDRSandblast enumerates).
PSP_MAX_CREATE_PROCESS_NOTIFY: Final = 64
#: Each slot is an EX_CALLBACK: an EX_FAST_REF to an EX_CALLBACK_ROUTINE_BLOCK.
EX_CALLBACK_SIZE: Final = 8


class EX_CALLBACK_ROUTINE_BLOCK:
    """_EX_CALLBACK_ROUTINE_BLOCK (WRK ``ex/callback.c``): rundown, function, context."""

    RundownProtect: Final = Field("RundownProtect", 0x00, 8, "WRK ex/callback.c")
    Function: Final = Field("Function", 0x08, 8, "WRK ex/callback.c")
    Context: Final = Field("Context", 0x10, 8, "WRK ex/callback.c")
    SIZE: Final = 0x18


# -- ETW ----------------------------------------------------------------------------------------
class ETW_REG_ENTRY:
    """_ETW_REG_ENTRY: what ``nt!EtwThreatIntProvRegHandle`` points to [Vergilius 19041]."""

    GuidEntry: Final = Field("GuidEntry", 0x20, 8)


class ETW_GUID_ENTRY:
    """_ETW_GUID_ENTRY [Vergilius 19041]: the provider GUID and its enable information."""

    Guid: Final = Field("Guid", 0x28, 16)
    #: _TRACE_ENABLE_INFO ProviderEnableInfo; its first ULONG is IsEnabled.  The field
    #: EDRSandblast / "ETW Threat-Intelligence blinding" tools clear.
    ProviderEnableInfo: Final = Field("ProviderEnableInfo.IsEnabled", 0x60, 4)


#: Microsoft-Windows-Threat-Intelligence {F4E1897C-BB5D-5668-F1D8-040F4D8DD344} (the provider's
#: published GUID, ``logman query providers``), in GUID byte order.
THREAT_INT_GUID: Final = bytes.fromhex("7c89e1f45dbb6856f1d8040f4d8dd344")


class ETW_BUFFER:
    """[model] The logger's buffer: u64 event count, then 16-byte events (id, two operands)."""

    Count: Final = Field("Count", 0x0, 8, "model")
    FIRST_EVENT: Final = 0x10
    EVENT_SIZE: Final = 0x10


#: [model] The event id the model logs for a cross-process NtReadVirtualMemory
#: (THREATINT_READVM_REMOTE is event 13 in the Threat-Intelligence manifest).
EVENT_READVM_REMOTE: Final = 13


# -- code integrity -------------------------------------------------------------------------------
class SE_CI_CALLBACKS:
    """``nt!SeCiCallbacks``: the table CiInitialize fills with ci.dll's routines; it lives in
    ntoskrnl's .data, which KDP does not protect (Fortinet, "The Swan Song for Driver Signature
    Enforcement Tampering", 2022).  [model] Only the member the model calls is laid out."""

    CiValidateImageHeader: Final = Field("CiValidateImageHeader", 0x20, 8, "Fortinet 2022")
    SIZE: Final = 0x100


# -- processor control region ---------------------------------------------------------------------
class KPCR:
    """NT's per-processor block at GS base (``processor_block``), one per VP, ``SIZE`` apart.

    Windows reaches the running process through ``gs:[0x188]`` (_KPCR.Prcb at 0x180, its
    CurrentThread at +8) and then _KTHREAD.ApcState.Process (0x98 + 0x20) [Vergilius 19041]:
    two loads through GS.  [model] The model's processes run one thread, so its block holds the
    current _EPROCESS directly: the same decision input (which address space and which token a
    system call acts for), one load instead of two."""

    #: [model] The running thread's process (KTHREAD.ApcState.Process's stand-in); 0: none.
    CurrentProcess: Final = Field("CurrentProcess", 0x00, 8, "model (KTHREAD.ApcState.Process)")
    SIZE: Final = 0x40


# -- driver objects --------------------------------------------------------------------------------
#: IRP_MJ_DEVICE_CONTROL, the major function NtDeviceIoControlFile dispatches to (wdm.h).
IRP_MJ_DEVICE_CONTROL: Final = 0x0E


class IRP:
    """_IRP [Vergilius 19041], the fields a METHOD_BUFFERED device-control request uses: the
    I/O manager's SystemBuffer (AssociatedIrp), the completion status and byte count the driver
    sets (IoStatus), and the current stack location (Tail.Overlay.CurrentStackLocation)."""

    SystemBuffer: Final = Field("AssociatedIrp.SystemBuffer", 0x18, 8)
    Status: Final = Field("IoStatus.Status", 0x30, 4)
    Information: Final = Field("IoStatus.Information", 0x38, 8)
    CurrentStackLocation: Final = Field("Tail.Overlay.CurrentStackLocation", 0xB8, 8)
    SIZE: Final = 0xD0


class IO_STACK_LOCATION:
    """_IO_STACK_LOCATION [Vergilius 19041]: Parameters.DeviceIoControl (IRP_MJ_DEVICE_CONTROL)."""

    MajorFunction: Final = Field("MajorFunction", 0x00, 1)
    OutputBufferLength: Final = Field("Parameters.DeviceIoControl.OutputBufferLength", 0x08, 4)
    InputBufferLength: Final = Field("Parameters.DeviceIoControl.InputBufferLength", 0x10, 4)
    IoControlCode: Final = Field("Parameters.DeviceIoControl.IoControlCode", 0x18, 4)
    SIZE: Final = 0x48


class DRIVER_OBJECT:
    """_DRIVER_OBJECT [Vergilius 19041], 0x150 bytes: what the I/O manager calls a driver
    through.  DriverEntry is called at DriverInit and every IRP at MajorFunction[major] —
    read from this object at each call, which is why overwriting a MajorFunction entry (an IRP
    hook) redirects a device's requests."""

    DriverStart: Final = Field("DriverStart", 0x18, 8)
    DriverSize: Final = Field("DriverSize", 0x20, 4)
    #: The driver's _KLDR_DATA_TABLE_ENTRY on PsLoadedModuleList.
    DriverSection: Final = Field("DriverSection", 0x28, 8)
    #: _UNICODE_STRING DriverName ("\\Driver\\<name>"): Length (u16), then Buffer at +8.
    DriverNameLength: Final = Field("DriverName.Length", 0x38, 2)
    DriverNameBuffer: Final = Field("DriverName.Buffer", 0x40, 8)
    DriverInit: Final = Field("DriverInit", 0x58, 8)
    DriverUnload: Final = Field("DriverUnload", 0x68, 8)
    #: PDRIVER_DISPATCH MajorFunction[28] (IRP_MJ_MAXIMUM_FUNCTION + 1).
    MajorFunction: Final = Field("MajorFunction", 0x70, 8 * 28)
    SIZE: Final = 0x150

    @staticmethod
    def major(function: int) -> int:
        """The offset of MajorFunction[function]."""
        return 0x70 + 8 * function


# -- the object manager's namespace ---------------------------------------------------------------
class OBJECT_DIRECTORY:
    """_OBJECT_DIRECTORY [Vergilius 19041]: HashBuckets[37], chains of directory entries; the
    lock and the rest after 0x128 are not modelled."""

    HashBuckets: Final = Field("HashBuckets", 0x00, 8 * 37)
    BUCKETS: Final = 37
    SIZE: Final = 0x158


class OBJECT_DIRECTORY_ENTRY:
    """_OBJECT_DIRECTORY_ENTRY [Vergilius 19041]: one object in a bucket's chain."""

    ChainLink: Final = Field("ChainLink", 0x00, 8)
    Object: Final = Field("Object", 0x08, 8)
    HashValue: Final = Field("HashValue", 0x10, 4)
    SIZE: Final = 0x18


# -- PE images as the loader maps them (headers at the image base) -------------------------------
_PE = "Microsoft Learn, PE Format"


class IMAGE_DOS_HEADER:
    """The MS-DOS header's one field NT reads: the offset of the PE signature [PE Format,
    "MS-DOS Stub (Image Only)": "at location 0x3c"]."""

    e_lfanew: Final = Field("e_lfanew", 0x3C, 4, _PE)


class IMAGE_NT_HEADERS64:
    """The "PE\\0\\0" signature (4 bytes), then the COFF file header [PE Format, "COFF File
    Header (Object and Image)": NumberOfSections at 2, SizeOfOptionalHeader at 16], then the
    optional header; the section table follows the optional header."""

    Signature: Final = Field("Signature", 0x00, 4, _PE)
    #: IMAGE_FILE_MACHINE_AMD64 [PE Format, "Machine Types"].
    Machine: Final = Field("FileHeader.Machine", 0x04, 2, _PE)
    NumberOfSections: Final = Field("FileHeader.NumberOfSections", 0x06, 2, _PE)
    SizeOfOptionalHeader: Final = Field("FileHeader.SizeOfOptionalHeader", 0x14, 2, _PE)
    OPTIONAL_HEADER_AT: Final = 0x18
    #: The optional header's Magic, first field: 0x20B for PE32+ [PE Format, "Optional Header
    #: Standard Fields"].
    Magic: Final = Field("OptionalHeader.Magic", 0x18, 2, _PE)
    SIGNATURE: Final = int.from_bytes(b"PE\0\0", "little")
    MACHINE_AMD64: Final = 0x8664
    MAGIC_PE32_PLUS: Final = 0x20B
    #: sizeof(IMAGE_OPTIONAL_HEADER64), the SizeOfOptionalHeader of a PE32+ image.
    OPTIONAL_HEADER_SIZE: Final = 0xF0
    #: "the Windows loader limits the number of sections to 96" [PE Format, COFF File Header].
    MAX_SECTIONS: Final = 96


class IMAGE_SECTION_HEADER:
    """One row of the section table, 40 bytes [PE Format, "Section Table (Section
    Headers)"]."""

    Name: Final = Field("Name", 0x00, 8, _PE)
    VirtualSize: Final = Field("Misc.VirtualSize", 0x08, 4, _PE)
    VirtualAddress: Final = Field("VirtualAddress", 0x0C, 4, _PE)
    SizeOfRawData: Final = Field("SizeOfRawData", 0x10, 4, _PE)
    Characteristics: Final = Field("Characteristics", 0x24, 4, _PE)
    SIZE: Final = 40
    #: IMAGE_SCN_MEM_EXECUTE [PE Format, "Section Flags"].
    MEM_EXECUTE: Final = 0x2000_0000
    #: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ | IMAGE_SCN_MEM_WRITE: a .data.
    DATA: Final = 0x0000_0040 | 0x4000_0000 | 0x8000_0000


# -- loaded modules -------------------------------------------------------------------------------
class KLDR_DATA_TABLE_ENTRY:
    """_KLDR_DATA_TABLE_ENTRY, the nodes of ``nt!PsLoadedModuleList`` [Vergilius 19041]."""

    InLoadOrderLinks: Final = Field("InLoadOrderLinks", 0x00, 16)
    DllBase: Final = Field("DllBase", 0x30, 8)
    EntryPoint: Final = Field("EntryPoint", 0x38, 8)
    SizeOfImage: Final = Field("SizeOfImage", 0x40, 4)
    #: _UNICODE_STRING BaseDllName: Length (u16), MaximumLength (u16), Buffer (pointer at +8).
    BaseDllNameLength: Final = Field("BaseDllName.Length", 0x58, 2)
    BaseDllNameBuffer: Final = Field("BaseDllName.Buffer", 0x60, 8)
    #: The image's section (for a driver NT maps, the model's IMAGE_SECTION record below).
    SectionPointer: Final = Field("SectionPointer", 0x70, 8)
    #: [model] The name's UTF-16 characters follow the entry in the same pool block.
    NAME_AT: Final = 0x100
    #: [model] The image's section record, after the name in the same pool block.
    SECTION_AT: Final = 0x400
    SIZE: Final = 0xA0


class IMAGE_SECTION:
    """[model] What NT keeps about a driver image's section that it decides from at unload:
    the handle the Secure Kernel returned from CREATE_SECURE_IMAGE (0: no secure image, HVCI
    off).  Windows keeps that handle with the image's section object and passes it in every
    later secure call about the image (McGarr, "Windows Internals: Dissecting Secure Image
    Objects - Part 1", 2023); the structure it sits in is not public, so the offset is the
    model's."""

    SecureImageHandle: Final = Field("SecureImageHandle", 0x00, 8)
    SIZE: Final = 0x08


# -- virtual address descriptors ----------------------------------------------------------------
class RTL_BALANCED_NODE:
    """_RTL_BALANCED_NODE [Vergilius 19041]: Children[2] (Left, Right), then ParentValue, whose
    low two bits are Red (bit 0) / Balance (bits 0-1) and the rest the parent's address."""

    Left: Final = Field("Left", 0x00, 8)
    Right: Final = Field("Right", 0x08, 8)
    ParentValue: Final = Field("ParentValue", 0x10, 8)
    #: The flag bits of ParentValue (the parent is 8-byte aligned).
    PARENT_FLAGS: Final = 0x3
    SIZE: Final = 0x18


class RTL_AVL_TREE:
    """_RTL_AVL_TREE [Vergilius 19041]: one pointer, ``Root`` (an _RTL_BALANCED_NODE)."""

    Root: Final = Field("Root", 0x00, 8)
    SIZE: Final = 0x8


class MMVAD_SHORT:
    """_MMVAD_SHORT [Vergilius 19041], 0x40 bytes: a private allocation's VAD (``VadS`` pool).

    The 48-bit VPNs are split: StartingVpn/EndingVpn hold bits 0-31, StartingVpnHigh/
    EndingVpnHigh bits 32-39 (Windows 8.1+; how MiLocateAddress and every public VAD walker
    rebuild them).  EndingVpn is inclusive (the VPN of the last page)."""

    VadNode: Final = Field("VadNode", 0x00, 0x18)
    StartingVpn: Final = Field("StartingVpn", 0x18, 4)
    EndingVpn: Final = Field("EndingVpn", 0x1C, 4)
    StartingVpnHigh: Final = Field("StartingVpnHigh", 0x20, 1)
    EndingVpnHigh: Final = Field("EndingVpnHigh", 0x21, 1)
    CommitChargeHigh: Final = Field("CommitChargeHigh", 0x22, 1)
    ReferenceCount: Final = Field("ReferenceCount", 0x24, 4)
    PushLock: Final = Field("PushLock", 0x28, 8)
    #: u.LongFlags: _MMVAD_FLAGS (:class:`MMVAD_FLAGS`).
    LongFlags: Final = Field("u.LongFlags", 0x30, 4)
    #: u1.LongFlags1: _MMVAD_FLAGS1 (:class:`MMVAD_FLAGS1`).
    LongFlags1: Final = Field("u1.LongFlags1", 0x34, 4)
    EventList: Final = Field("EventList", 0x38, 8)
    SIZE: Final = 0x40


class MMVAD_FLAGS:
    """_MMVAD_FLAGS bit fields [Vergilius 19041]: Lock 0, LockContended 1, DeleteInProgress 2,
    NoChange 3, VadType 4-6, Protection 7-11 (an MM_* protection index, :class:`MmProtect`),
    PreferredNode 12-17, PageSize 18-19, PrivateMemory 20."""

    NO_CHANGE: Final = 1 << 3
    VAD_TYPE_SHIFT: Final = 4
    VAD_TYPE_MASK: Final = 0x7
    PROTECTION_SHIFT: Final = 7
    PROTECTION_MASK: Final = 0x1F
    PRIVATE_MEMORY: Final = 1 << 20


class MMVAD_FLAGS1:
    """_MMVAD_FLAGS1 [Vergilius 19041]: CommitCharge bits 0-30, MemCommit bit 31."""

    COMMIT_CHARGE_MASK: Final = (1 << 31) - 1
    MEM_COMMIT: Final = 1 << 31


class MmProtect(IntEnum):
    """The MM_* protection indexes a VAD's Protection field holds (WRK ``mi.h``; the index into
    ``nt!MmProtectToValue``, which turns them back into PAGE_* values)."""

    NOACCESS = 0
    READONLY = 1
    EXECUTE = 2
    EXECUTE_READ = 3
    READWRITE = 4
    WRITECOPY = 5
    EXECUTE_READWRITE = 6
    EXECUTE_WRITECOPY = 7


#: VadNone, the _MI_VAD_TYPE of private memory [Vergilius 19041].
VAD_TYPE_NONE: Final = 0
#: [model] NT's lookaside list of free MMVAD_SHORT blocks: one pointer in NT's .data, the first
#: free block (each free block's first 8 bytes point to the next).  Windows allocates VADs from
#: nonpaged pool (ExAllocatePoolWithTag, tag 'VadS', Windows Internals 7th ed. part 1 ch. 5
#: "Virtual address descriptors"); the model carves pool pages into 0x40-byte blocks without pool
#: headers.
VAD_BLOCK: Final = MMVAD_SHORT.SIZE


# -- physical memory: the PFN database ------------------------------------------------------------
class MMLISTS(IntEnum):
    """_MMLISTS, the page lists a PFN entry's PageLocation names (Windows Internals 7th ed.
    part 1 ch. 5 "Page frame number database"; Vergilius 19041 _MMLISTS).  The model uses three:
    a never-used page is on the zeroed list, a page NT freed is on the free list (zeroed again
    when handed out), a page NT owns is active; pages that are not NT's to hand out (the loader's
    and firmware's, the Secure Kernel's pool, the host reserve) are on the bad page list, which
    is what Windows does with a page it must never use."""

    ZeroedPageList = 0
    FreePageList = 1
    BadPageList = 5
    ActiveAndValid = 6


class MMPFN:
    """[model] One 8-byte entry per physical page of RAM in ``MmPfnDatabase`` (a real _MMPFN is
    0x30 bytes [Vergilius 19041]; the model keeps the two members the allocator decides from):
    ``u1.Flink`` (the next page's PFN on the free list, 0 ends it: PFN 0 is never handed out) in
    bits 0-47, and ``u3.e1.PageLocation`` (:class:`MMLISTS`) in bits 56-63."""

    SIZE: Final = 8
    FLINK_MASK: Final = (1 << 48) - 1
    LOCATION_SHIFT: Final = 56


class MMPFNLIST:
    """_MMPFNLIST [Vergilius 19041] for ``nt!MmFreePageListHead``: Total (the page count) at 0,
    Flink at 0x10 (the first PFN).  [model] Then, at 0x20, the next never-used PFN (pages from it
    to MmHighestPhysicalPage are zeroed and free without being linked: MiInitializePfnDatabase
    links every free page at boot, the model links a page only once it was used) and at 0x28 the
    limit (MmHighestPhysicalPage + 1)."""

    Total: Final = Field("Total", 0x00, 8)
    Flink: Final = Field("Flink", 0x10, 8)
    NextFresh: Final = Field("NextFresh", 0x20, 8, "model")
    Limit: Final = Field("Limit", 0x28, 8, "model")
    SIZE: Final = 0x30


# -- NT's side of the VTL0/VTL1 ABI ---------------------------------------------------------------
# Numbers both kernels apply, as NT's binary has them compiled in (the Secure Kernel has its own
# copy; tests/nt/test_abi.py checks the two agree).  Sources as in the SK's modules: the model's
# numbers where the real ones are not public ([U] in vbs-internals).

#: [model] winload places ntoskrnl's boot image in the first 256 GiB of CODE_BASE's PML4 slot;
#: the SK takes every executable page in that range as boot-image code (vbsim.sk.services.hvci).
BOOT_IMAGE_SPAN: Final = 256 << 30

# -- kernel Control Flow Guard (kCFG) --------------------------------------------------------------
# The bitmap of valid indirect-call targets, a format both kernels apply (NT checks and fills it,
# the Secure Kernel protects it and sets bits for drivers loaded later: vbsim.nt.kcfg,
# vbsim.sk.services.kcfg).  It is user-mode CFG's: the compiler lists a binary's address-taken
# functions in the load configuration's GuardCFFunctionTable ("a sorted list of relative virtual
# addresses", MS Learn "PE metadata" and "Control Flow Guard for platform security"), and the
# loader turns the list into a bitmap with two bits per 16-byte granule of VA: one for the
# granule's aligned first byte, one for the other fifteen (corsix.org, "Control flow guard",
# 2015: "every two bits correspond to sixteen bytes").  Kernel CFG "is implemented almost
# identically to regular CFG" (Windows Internals 7th ed. part 1 ch. 7 "Kernel CFG"), its bitmap's
# VA in nt!guard_icall_bitmap (McGarr, "The Current State of Exploit Development,
# part 1", 2020).  ntoskrnl's guard_check_icall, as public decompilations of it read: a target
# without the sign bit (a user address) fails; guard_icall_bitmap 0 passes everything else; else
# the u64 at bitmap + 8 * (target >> 9) is loaded and bit (target >> 3) mod 64 tested for an
# aligned target, both bits of its pair for an unaligned one.

#: The granule one pair of bits describes, and the VA one u64 of the bitmap covers (32 pairs).
KCFG_GRANULE: Final = 16
KCFG_QWORD_SPAN: Final = 512
#: [model] The kernel VA the bitmap covers: NT's boot image (256 KiB from CODE_BASE: the model's
#: ntoskrnl has one code page) and the first 8 MiB of the driver region (vbsim.nt.drivers
#: DRIVER_BASE, right after the boot-image span: some 100 driver loads).  Windows reserves bitmap
#: VA for all of kernel space and backs it where images are (MiInitializeKernelCfg); the model
#: keeps these two windows dense, one after the other, and any other address has no valid target.
KCFG_WINDOWS: Final = ((CODE_BASE, 256 << 10), (CODE_BASE + BOOT_IMAGE_SPAN, 8 << 20))
#: The bitmap's size in 4 KiB pages (33).
KCFG_BITMAP_PAGES: Final = sum(span // KCFG_QWORD_SPAN * 8 for _, span in KCFG_WINDOWS) // 4096
#: FAST_FAIL_GUARD_ICALL_CHECK_FAILURE (winnt.h): KERNEL_SECURITY_CHECK_FAILURE's first
#: parameter, "Indirect call guard check detected invalid control transfer" (MS Learn, Bug Check
#: 0x139).
FAST_FAIL_GUARD_ICALL_CHECK_FAILURE: Final = 10


def kcfg_slot(target: int) -> tuple[int, int] | None:
    """Where ``target``'s bits are: (byte offset in the bitmap of the u64 holding them, the
    number of the pair's first bit in it); None outside the covered windows."""
    first = 0
    for base, span in KCFG_WINDOWS:
        if base <= target < base + span:
            offset = target - base
            return first + offset // KCFG_QWORD_SPAN * 8, (offset >> 3) & 62
        first += span // KCFG_QWORD_SPAN * 8
    return None


def kcfg_valid(qword: int, target: int) -> bool:
    """guard_check_icall's test of the u64 ``qword`` that holds ``target``'s pair: an aligned
    target needs the pair's first bit, an unaligned one both bits."""
    bit = (target >> 3) & 63
    if not target & (KCFG_GRANULE - 1):
        return bool(qword >> bit & 1)
    even = bit & ~1
    return bool(qword >> even & 1 and qword >> (even | 1) & 1)


class KCFG_CONTROL:
    """[model] The page before the bitmap, holding ``nt!guard_icall_bitmap`` (McGarr 2020): the
    bitmap's VA once kCFG is enabled, 0 before (and for good when the Secure Kernel refused it:
    MiInitializeKernelCfg, decompiled, sets it only after VslInitializeSecureKernelCfg
    succeeded).  Which section of ntoskrnl holds the variable on Windows, and what protects it,
    is not in the public record; a writable one would turn kCFG off with one write, which no
    public source reports, so the model places it where the Secure Kernel protects the bitmap."""

    GuardIcallBitmap: Final = Field("guard_icall_bitmap", 0x00, 8, "McGarr 2020; offset: model")


class GUARD_CF_FUNCTION_TABLE:
    """[model] ntoskrnl's GuardCFFunctionTable (GFIDS) as its image holds it in NT's data: a u32
    count, then one u32 RVA (from CODE_BASE, the image's base in the model) per valid target,
    sorted (MS Learn "PE metadata": the table is sorted RVAs; no per-entry flags here)."""

    Count: Final = Field("Count", 0x00, 4, "model")
    ENTRIES: Final = 0x04
    ENTRY: Final = 4


#: [model] Normal-call numbers the SK sends NT: "give me physical pages" (IUM), IumGenericSyscall
#: (the real number is not public), and the KDP/secure-allocation MDL's physical pages.
NORMAL_ALLOCATE_PAGES: Final = 1
NORMAL_IUM_SYSCALL: Final = 2
NORMAL_GET_PHYSICAL_PAGES: Final = 0x0102
#: [model] COPY_PROTECTED_PAGE flag: allocate in the secure pool.
COPY_ALLOCATE: Final = 0x1
#: [model] The hibernate/dump secure calls' sub-requests and answers (vbsim.sk.services.dump).
DUMP_REQUEST_LIST: Final = 0
DUMP_REQUEST_PAGE: Final = 1
DUMP_PAGE_WITHHELD: Final = 0
DUMP_PAGE_ENCRYPTED: Final = 1
DUMP_LIST_MAX: Final = 4096 // 8
DUMP_ENTRY_GIVEN: Final = 1 << 63
#: [model] Where the SK maps a trustlet's image in its VTL1 user address space (NT mirrors the
#: layout in the VTL0 shadow process).
TRUSTLET_IMAGE_BASE: Final = 0x0000_7FF6_0000_0000
#: [model] LsaIso's RPC messages (LSA_ISO_RPC_SERVER): PROTECT and RESPOND, the user name field.
LSAISO_OP_PROTECT: Final = 1
LSAISO_OP_RESPOND: Final = 2
LSAISO_USER_LEN: Final = 32


class MDL:
    """_MDL on x64 (wdm.h): Next, Size, MdlFlags, AllocationProcessorNumber, Reserved, Process,
    MappedSystemVa, StartVa, ByteCount, ByteOffset — 0x30 bytes; the PFN array follows."""

    Size: Final = Field("Size", 0x08, 2, "wdm.h")
    StartVa: Final = Field("StartVa", 0x20, 8, "wdm.h")
    ByteCount: Final = Field("ByteCount", 0x28, 4, "wdm.h")
    ByteOffset: Final = Field("ByteOffset", 0x2C, 4, "wdm.h")
    HEADER: Final = 0x30


def mdl_bytes(
    pfns: list[int], byte_count: int, byte_offset: int = 0, start_va: int = 0, size: int = -1
) -> bytes:
    """An MDL as NT builds one (``size`` defaults to the header plus the PFN array)."""
    if size < 0:
        size = MDL.HEADER + 8 * len(pfns)
    header = bytearray(MDL.HEADER)
    header[MDL.Size.offset : MDL.Size.offset + 2] = (size & 0xFFFF).to_bytes(2, "little")
    header[MDL.StartVa.offset : MDL.StartVa.offset + 8] = start_va.to_bytes(8, "little")
    header[MDL.ByteCount.offset : MDL.ByteCount.offset + 4] = (byte_count & 0xFFFF_FFFF).to_bytes(
        4, "little"
    )
    header[MDL.ByteOffset.offset : MDL.ByteOffset.offset + 4] = (
        byte_offset & 0xFFFF_FFFF
    ).to_bytes(4, "little")
    return bytes(header) + b"".join((p & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") for p in pfns)
