"""NT's side of Isolated User Mode (vbs-internals §3.5, §2.5, §7).

NT starts a trustlet: it reads the image from the trustlet store into section pages (VTL0 RAM),
asks the SK through CREATE_PROCESS (the SK captures, admits, protects and builds the secure address
space), creates the shadow EPROCESS that VTL0 sees (with ``SecurePid`` and the trustlet ID), maps
the image section into the shadow process read-only (§7: image pages are visible to VTL0, private
memory is not: the shadow process has no mapping for it at all), and creates a secure thread.

NT schedules trustlet threads: running one is a resume-thread secure call carrying a message page
(the model's stand-in for ALPC's wait-receive, which is how lsass and LsaIso talk).  NT serves the
SK's normal calls: physical pages on request, and IUM system calls forwarded to NT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.nt import process as ps
from vbsim.nt.layouts import (
    EPROCESS,
    NO_TRUSTLET,
    NORMAL_ALLOCATE_PAGES,
    NORMAL_IUM_SYSCALL,
    read_field,
    write_field,
)
from vbsim.nt.layouts import TRUSTLET_IMAGE_BASE as IMAGE_BASE
from vbsim.nt.pfn import NoPages
from vbsim.nt.process import Process, Token
from vbsim.ntstatus import NtStatus
from vbsim.sk import callargs
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

MAX_MESSAGE = PAGE_SIZE


@dataclass
class TrustletRun:
    status: int
    reply: bytes


#: [model] The PID whose ALPC messages LsaIso's port (LSA_ISO_RPC_SERVER) accepts: lsass's.  A
#: kernel global in NT's .data (Windows checks the ALPC port's owner; the model keeps the owner's
#: PID where a K0 write could change it, as it could the real port object).
LSAISO_PORT_OWNER = "AlpcLsaIsoPortOwner"
#: LsaIso's trustlet ID (vbs-internals §3.2 "Known trustlet IDs": ``LsaIso.exe`` is 1).
LSAISO_TRUSTLET_ID = 1
#: [model] LsaIso's port (the model's ALPC port names the trustlet's PID; 0: LsaIso is not
#: running), a kernel global in NT's .data wininit writes when it starts LsaIso and lsass reads
#: when it decides whether to isolate a logon (Windows: the LSA_ISO_RPC_SERVER port object).
LSAISO_PORT = "AlpcLsaIsoPort"


def trustlet_store(nt: NtKernel) -> dict[str, bytes]:
    """Trustlet images on disk (name → signed PE bytes)."""
    return nt.trustlet_store


def create_secure_process(
    nt: NtKernel,
    vp: Cpu,
    name: str,
    trustlet_id: int,
    mailbox_key: int = 0,
    token: Token | None = None,
    image: bytes | None = None,
) -> tuple[int, Process | None]:
    """CreateProcess with PS_CP_SECURE_PROCESS (trustlet ID); (NTSTATUS, shadow process)."""
    if nt.vsl is None:
        return int(NtStatus.NOT_SUPPORTED), None  # no VBS, no IUM
    data = image if image is not None else trustlet_store(nt).get(name)
    if data is None:
        return int(NtStatus.OBJECT_NAME_NOT_FOUND), None
    if not 0 < len(data) <= 1 << 20:
        return int(NtStatus.INVALID_IMAGE_FORMAT), None
    pages = nt.alloc_kernel_pages(vp, -(-len(data) // PAGE_SIZE) + 1)
    if pages is None:
        return int(NtStatus.NO_MEMORY), None
    *sections, (list_va, list_gpa) = pages
    pfns = []
    for offset, (va, gpa) in zip(range(0, len(data), PAGE_SIZE), sections, strict=True):
        vp.write(va, data[offset : offset + PAGE_SIZE])
        pfns.append(gpa >> PAGE_SHIFT)
    vp.write(list_va, b"".join(p.to_bytes(8, "little") for p in pfns))
    status, outputs = nt.vsl.call(
        vp, Service.CREATE_PROCESS, list_gpa >> PAGE_SHIFT, len(data), trustlet_id, mailbox_key
    )
    if status != NtStatus.SUCCESS:
        for pfn in [*pfns, list_gpa >> PAGE_SHIFT]:  # the section is not needed any more
            vp.write(DIRECT_MAP + (pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
            nt.free_page(vp, pfn)
        if vp.tracing:
            vp.emit(
                "nt",
                "create-secure-process",
                NtStatus.name_of(status),
                image=name,
                trustlet_id=trustlet_id,
            )
        return status, None
    handle = outputs[0]
    eprocess = nt.create_process(vp, name, token or Token("SYSTEM", admin=True)).eprocess
    write_field(vp, eprocess, EPROCESS.SecurePid, handle)
    write_field(vp, eprocess, EPROCESS.TrustletId, trustlet_id)
    process = ps.process_at(vp, eprocess)
    tables = nt.address_space(vp, process)
    for i, pfn in enumerate(pfns):  # the image section, read-only in the shadow process
        tables.map(IMAGE_BASE + i * PAGE_SIZE, pfn << PAGE_SHIFT, int(Pte.US | Pte.NX))
    status, outputs = nt.vsl.call(vp, Service.CREATE_THREAD, handle)
    if status == NtStatus.SUCCESS:
        write_field(vp, process.eprocess, EPROCESS.SecureThreadCookie, outputs[0])
    return status, process


def run_trustlet(
    nt: NtKernel, vp: Cpu, process: Process, message: bytes = b"", selector: int = 0
) -> TrustletRun:
    """Let the trustlet's secure thread run once with ``message``; returns what it replied."""
    cookie = read_field(vp, process.eprocess, EPROCESS.SecureThreadCookie) or None
    if ps.is_exiting(vp, process.eprocess):
        return TrustletRun(int(NtStatus.PROCESS_IS_TERMINATING), b"")
    if nt.vsl is None or cookie is None or len(message) > MAX_MESSAGE:
        return TrustletRun(int(NtStatus.INVALID_PARAMETER), b"")
    pages = nt.alloc_kernel_pages(vp, 2)
    if pages is None:
        return TrustletRun(int(NtStatus.NO_MEMORY), b"")
    (message_va, message_gpa), (reply_va, reply_gpa) = pages
    vp.write(message_va, message)
    args = SecureCallArgs(
        callargs.OP_RESUME_THREAD,
        0,
        cookie,
        [selector, message_gpa >> PAGE_SHIFT, len(message), reply_gpa >> PAGE_SHIFT],
    )
    # The trustlet's thread runs as a thread of its shadow process: NT switches to that process
    # (its EPROCESS current, its DirectoryTableBase in CR3) while the secure thread runs, so a
    # system call IUM forwards (IumGenericSyscall) is served in the trustlet's context.
    with nt.switched_to(vp, process):
        reply = nt.vsl.call_raw(vp, args)
    status = reply.fields[0]
    length = min(reply.fields[1], PAGE_SIZE) if status == NtStatus.SUCCESS else 0
    data = vp.read(reply_va, length)
    # Clear before freeing: the message may carry secrets on their way into VTL1 (lsass's
    # PROTECT request carries the OWF), and a freed VTL0 frame is readable by any K0 attacker.
    vp.write(message_va, bytes(PAGE_SIZE))
    vp.write(reply_va, bytes(PAGE_SIZE))
    for gpa in (message_gpa, reply_gpa):
        nt.free_page(vp, gpa >> PAGE_SHIFT)
    return TrustletRun(status, data)


# -- normal calls NT serves for the Secure Kernel (vbs-internals §2.5) -------------------------
def allocate_pages(nt: NtKernel, vp: Cpu, args: list[int]) -> list[int]:
    count = args[0]
    if not 0 < count <= 10:
        return [int(NtStatus.INVALID_PARAMETER)]
    pfns: list[int] = []
    try:
        for _ in range(count):
            pfns.append(nt.alloc_page(vp))
    except NoPages:
        for frame in pfns:
            nt.free_page(vp, frame)
        return [int(NtStatus.NO_MEMORY)]
    return [int(NtStatus.SUCCESS), *pfns]


def ium_generic_syscall(nt: NtKernel, vp: Cpu, args: list[int]) -> list[int]:
    """IumGenericSyscall: run an NT service for a trustlet, in its shadow process's context
    (the process current on this processor while the trustlet's thread runs: run_trustlet)."""
    number, call_args = args[0], args[1:5]
    routine = nt.service_routine(vp, number)  # KiServiceTable, as RAM holds it now
    result = vp.call(routine, *call_args) if routine else None
    return [result if isinstance(result, int) else int(NtStatus.INVALID_SYSTEM_SERVICE)]


def nt_alpc_send_wait_receive_port(nt: NtKernel, vp: Cpu, args: list[int]) -> int:
    """The model's ALPC to a trustlet: (port = the trustlet's PID, request, request length,
    reply buffer of one page: u64 length then data).  Only SYSTEM/administrators may connect
    (LSA_ISO_RPC_SERVER is lsass's); the message reaches the trustlet when NT resumes its thread."""
    from vbsim.syscall_args import fits_user

    port, request, length, reply = args
    from vbsim.nt.syscalls import caller_is_admin

    caller = nt.process_of(vp)
    target = nt.lookup_process(vp, port)
    if caller is None or not caller_is_admin(nt, vp):
        return int(NtStatus.ACCESS_DENIED)
    # Both sides of the decision as the EPROCESSes in RAM say now, not NT's Python handles.
    if target is None:
        return int(NtStatus.INVALID_HANDLE)
    trustlet = read_field(vp, target.eprocess, EPROCESS.TrustletId)
    if trustlet == NO_TRUSTLET:
        return int(NtStatus.INVALID_HANDLE)
    if trustlet == LSAISO_TRUSTLET_ID:
        # LSA_ISO_RPC_SERVER is lsass's port (vbs-internals §4.1 [S]): an administrator reaches
        # LsaIso only by running code inside lsass (SSP injection, as Pass-the-Challenge does).
        # Who is calling: the PID the caller's EPROCESS holds now.  [model] The owner check is
        # the model's stand-in for the port's access check; the caller's identity comes the
        # way ALPC gives a server its client's: the kernel stamps each message with the
        # sender's CLIENT_ID (PORT_MESSAGE.ClientId, from the sending thread's Cid, whose
        # UniqueProcess is its process's UniqueProcessId), read from kernel memory when the
        # message is sent.  So a K0 write of lsass's PID into the caller's UniqueProcessId is
        # believed, as a forged Cid would be on Windows (K0 owns VTL0; LsaIso still holds the
        # OWF, only its use is reached, as A21 reaches it from inside lsass).
        owner = vp.read_u64(nt.variable(LSAISO_PORT_OWNER).va)
        if read_field(vp, caller.eprocess, EPROCESS.UniqueProcessId) != owner:
            return int(NtStatus.ACCESS_DENIED)
    if not 0 <= length <= MAX_MESSAGE or not fits_user(reply, PAGE_SIZE):
        return int(NtStatus.INVALID_PARAMETER)
    message = nt.copy_from_user(vp, request, length) if length else b""
    if message is None:
        return int(NtStatus.ACCESS_VIOLATION)
    run = run_trustlet(nt, vp, target, message)
    if run.status != NtStatus.SUCCESS:
        return run.status
    payload = len(run.reply).to_bytes(8, "little") + run.reply
    if not nt.copy_to_user(vp, reply, payload[:PAGE_SIZE]):
        return int(NtStatus.ACCESS_VIOLATION)
    return int(NtStatus.SUCCESS)


#: The image wininit starts for Credential Guard (vbs-internals §1.1 row 16, §5.3).
LSAISO_IMAGE = "LsaIso.exe"


def _feature_enabled(nt: NtKernel, vp: Cpu, name: str) -> bool:
    """Whether the feature a boot trustlet serves is enabled, as the SYSTEM hive in RAM says
    now: LsaIso ⇐ Credential Guard (``LsaCfgFlags``, :func:`vbsim.nt.registry
    .credential_guard_configured`).  A trustlet with no feature the model knows is not started."""
    from vbsim.nt import registry

    if name == LSAISO_IMAGE:
        return registry.credential_guard_configured(nt, vp)
    return False


def start_boot_trustlets(
    nt: NtKernel, vp: Cpu, images: dict[str, tuple[int, bytes]]
) -> dict[str, int]:
    """smss/wininit start the trustlets whose feature is enabled (vbs-internals §1.1 row 16):
    ``images`` are the trustlets installed on disk; whether each starts is read from the SYSTEM
    hive in RAM at this moment (:func:`_feature_enabled`), and VBS must be running (without the
    VSL there is no IUM: ``create_secure_process`` refuses).  LsaIso's PID goes into NT's
    ``AlpcLsaIsoPort`` global, which lsass reads; ``nt.started_trustlets`` is the boot report
    host tools read, nothing NT decides from."""
    started: dict[str, int] = {}
    for name, (trustlet_id, image) in images.items():
        trustlet_store(nt)[name] = image
        if not _feature_enabled(nt, vp, name):
            if vp.tracing:
                vp.emit("boot", "start-trustlet", "not-configured", image=name)
            continue
        status, process = create_secure_process(nt, vp, name, trustlet_id)
        if vp.tracing:
            vp.emit(
                "boot",
                "start-trustlet",
                NtStatus.name_of(status),
                image=name,
                trustlet_id=trustlet_id,
            )
        if process is not None:
            started[name] = process.pid
            if name == LSAISO_IMAGE:
                vp.write_u64(nt.variable(LSAISO_PORT).va, process.pid)
    nt.started_trustlets = started
    return started


def register(nt: NtKernel) -> None:
    from vbsim.nt import syscalls

    nt.variable(LSAISO_PORT_OWNER)  # loader time: the global lsass writes when it starts
    nt.variable(LSAISO_PORT)  # loader time: the global wininit writes when LsaIso starts
    from vbsim.nt import lsass

    lsass.register(nt)  # the LSA's logon buffer, beside the LSA's port globals

    syscalls.register(nt, "NtAlpcSendWaitReceivePort", nt_alpc_send_wait_receive_port)
    if nt.vsl is not None:  # NT's normal calls for IUM, linked into VslpNormalCallTable
        # The SK's "allocate physical pages" request ([model] routine name) and IumGenericSyscall,
        # whose NT side VTL0 stacks show as VslpDispatchIumSyscall (vbs-internals §2.5).
        nt.vsl.register(NORMAL_ALLOCATE_PAGES, "VslpAllocatePhysicalPages", allocate_pages)
        nt.vsl.register(NORMAL_IUM_SYSCALL, "VslpDispatchIumSyscall", ium_generic_syscall)
