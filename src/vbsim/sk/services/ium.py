"""Secure services for Isolated User Mode (vbs-internals §2.4, §3.5, §4.4, §7).

- CREATE_PROCESS: Field1 = PFN of a VTL0 page listing the image's PFNs, Field2 = image length,
  Field3 = requested trustlet ID, Field4 = mailbox key.  The SK captures the image bytes, runs
  SKCI admission (``sk.ium.skci``), takes the image pages read-only from VTL0, re-hashes them,
  builds the address space and returns the secure process handle (EPROCESS.Pcb.SecurePid).  The
  model folds what Windows splits across CREATE_SECURE_IMAGE, CREATE_PROCESS and
  INITIALIZE_PROCESS into this one call for trustlets (the checks and their order are the same).
- CREATE_THREAD: Field1 = process handle → the secure thread cookie.
- Resume thread (operation type 4, cookie = the thread): Field1 = routine selector (0: the image
  entry), Field2 = PFN of a VTL0 message page, Field3 = message length, Field4 = PFN of a VTL0
  reply page.  The message is captured into the trustlet's message page; the trustlet runs at
  VTL1 CPL3; only the reply it chose to write leaves VTL1.
- DEBUG_PROCESS, GET_CONTEXT, DEBUG_READ_WRITE_MEMORY: refused unless the signed Debug policy
  allows it (vbs-internals §3.1 policy 2, §7 "Debugging / injection: No").
- RETRIEVE_MAILBOX: only with the mailbox key given at creation.
- IS_TRUSTLET_RUNNING, RUNDOWN_PROCESS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.image import ImageKind
from vbsim.ntstatus import NtStatus
from vbsim.sk import objects, sipolicy
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.ium import process as ium
from vbsim.sk.ium.skci import admit
from vbsim.sk.kernel import PoolExhausted, Reply, SecureKernel
from vbsim.sk.layouts import ObjectType, read_field, write_field
from vbsim.sk.layouts import SkProcess as SkProcessLayout
from vbsim.sk.services import hvci
from vbsim.sk.sscn import Service

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu

MAX_IMAGE = 1 << 20


def _pfn_list(sk: SecureKernel, vp: Cpu, list_pfn: int, count: int) -> list[int] | None:
    """Capture a PFN list from a VTL0 page; every entry must be a distinct VTL0 page."""
    if not sk.vtl0_page(vp, list_pfn) or not 0 < count <= PAGE_SIZE // 8:
        return None
    raw = vp.read(sk.space.phys_va(list_pfn << PAGE_SHIFT), count * 8)
    pfns = [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(count)]
    if len(set(pfns)) != len(pfns) or not all(sk.vtl0_page(vp, p) for p in pfns):
        return None
    return pfns


def _capture(sk: SecureKernel, vp: Cpu, pfns: list[int], length: int) -> bytes:
    out = bytearray()
    for pfn in pfns:
        take = min(PAGE_SIZE, length - len(out))
        out += vp.read(sk.space.phys_va(pfn << PAGE_SHIFT), take)
    return bytes(out)


def create_process(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    list_pfn, length, requested_id, mailbox_key = args.fields[:4]
    if not 0 < length <= MAX_IMAGE:
        return Reply(NtStatus.INVALID_PARAMETER)
    pfns = _pfn_list(sk, vp, list_pfn, -(-length // PAGE_SIZE))
    if pfns is None:
        sk.emit(vp, "ium", "securecall.pfn", "refused", pfn=list_pfn)
        return Reply(NtStatus.INVALID_PARAMETER)
    data = _capture(sk, vp, pfns, length)
    # The SkuSiPolicy floors and the allow-list as SK memory holds them now.
    admission = admit(
        data,
        requested_id,
        sipolicy.read(sk, vp),
        sk.allowed_ids(vp),
        anchor=hvci.anchor(sk, vp, ImageKind.TRUSTLET),
        at=sk.system_time(vp),
    )
    if sk.tracing(vp):
        for check in admission.passed:  # every check SKCI made, in order, in the trace
            sk.emit(vp, "ium", f"skci.{check}", "passed", trustlet_id=requested_id)
    if not admission.ok or admission.image is None:
        sk.emit(
            vp,
            "ium",
            f"skci.{admission.check}",
            "refused",
            trustlet_id=requested_id,
            status=NtStatus.name_of(admission.status),
            detail=admission.detail,
        )
        return Reply(admission.status)
    # The image pages stay NT's section, but VTL0 may only read them from now on; then hash what
    # is physically there, so nothing NT changed between capture and protection runs.
    if not sk.set_vtl0_rights(vp, pfns, 1):
        return Reply(NtStatus.UNSUCCESSFUL)
    sk.mark_own(vp, pfns)
    import hashlib

    if ium.image_digest(sk, vp, pfns, length) != hashlib.sha256(data).digest():
        sk.emit(vp, "ium", "skci.page-hash", "refused", trustlet_id=requested_id)
        _give_back(sk, vp, pfns)
        return Reply(NtStatus.INVALID_IMAGE_HASH)
    sk.emit(vp, "ium", "skci.page-hash", "passed", trustlet_id=requested_id)
    sk.emit(
        vp,
        "ium",
        "skci.admitted",
        "admitted",
        trustlet_id=requested_id,
        status=NtStatus.name_of(admission.status),
        detail=admission.detail,
    )
    try:
        process = ium.build(sk, vp, admission.image, pfns, requested_id, mailbox_key)
    except PoolExhausted:  # the SK's frame pool ran out while building the process
        _give_back(sk, vp, pfns)
        sk.emit(vp, "ium", "create-process", "pool-exhausted", trustlet_id=requested_id)
        return Reply(NtStatus.INSUFFICIENT_RESOURCES)
    handle = (
        objects.insert(sk, vp, ObjectType.SKPROCESS, process.object_va)
        if process is not None
        else None
    )
    if process is None or handle is None:
        # NT did not supply usable pages (or the handle table is full): the image section is
        # NT's again, as before the call.
        _give_back(sk, vp, pfns)
        return Reply(NtStatus.NO_MEMORY)
    write_field(vp, process.object_va, SkProcessLayout.HANDLE, handle)
    sk.trustlet_images[pfns[0]] = ium.TrustletSymbols(process.image, process.routines)
    sk.emit(
        vp,
        "ium",
        "create-process",
        "created",
        handle=handle,
        trustlet_id=requested_id,
        private_pages=process.read(vp, SkProcessLayout.PRIVATE_COUNT),
    )
    return Reply(NtStatus.SUCCESS, [handle])


def _process(sk: SecureKernel, vp: Cpu, handle: int) -> ium.SecureProcess | None:
    """The live secure process ``handle`` names: the handle table's entry (type SKPROCESS) and
    the SKPROCESS page's TERMINATED field decide, read now."""
    kind, va = objects.lookup(sk, vp, handle)
    if kind != ObjectType.SKPROCESS:
        return None
    process = ium.process_at(sk, vp, va)
    if process is None or process.terminated(vp):
        return None
    return process


def create_thread(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    process = _process(sk, vp, args.fields[0])
    if process is None:
        return Reply(NtStatus.INVALID_HANDLE)
    cookie = ium.create_thread(sk, vp, process)
    if cookie is None:
        return Reply(NtStatus.NO_MEMORY)
    return Reply(NtStatus.SUCCESS, [cookie])


def resume_thread(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    thread = ium.thread_object(sk, vp, args.cookie)
    process = ium.thread_process(sk, vp, thread) if thread else None
    if process is None or process.terminated(vp) or ium.thread_running(sk, vp, thread):
        return Reply(NtStatus.INVALID_HANDLE)
    selector, message_pfn, message_length, reply_pfn = args.fields[:4]
    if (
        message_length > PAGE_SIZE
        or not sk.vtl0_output_page(vp, reply_pfn)
        or (message_length and not sk.vtl0_page(vp, message_pfn))
    ):
        sk.emit(
            vp, "ium", "securecall.pfn", "refused", message_pfn=message_pfn, reply_pfn=reply_pfn
        )
        return Reply(NtStatus.INVALID_PARAMETER)
    message = (
        vp.read(sk.space.phys_va(message_pfn << PAGE_SHIFT), message_length)
        if message_length
        else b""
    )
    message_page, reply_page = process.private_pfn(vp, 0), process.private_pfn(vp, 1)
    if message_page is None or reply_page is None:  # the frame list says otherwise: refuse
        return Reply(NtStatus.INVALID_HANDLE)
    message_gpa = message_page << PAGE_SHIFT
    vp.write(sk.space.phys_va(message_gpa), message + bytes(PAGE_SIZE - len(message)))
    reply_gpa = reply_page << PAGE_SHIFT
    vp.write(sk.space.phys_va(reply_gpa), bytes(PAGE_SIZE))
    names = list(process.routines)
    routine = (
        process.image.entry_name
        if selector == 0
        else (names[selector - 1] if selector <= len(names) else None)
    )
    if routine is None:
        return Reply(NtStatus.INVALID_PARAMETER)
    status, value = ium.run_thread(
        sk, vp, thread, routine, ium.MESSAGE_VA, message_length, ium.REPLY_VA
    )
    reply_length = value if isinstance(value, int) and 0 <= value <= PAGE_SIZE else 0
    reply = vp.read(sk.space.phys_va(reply_gpa), reply_length)
    vp.write(sk.space.phys_va(reply_pfn << PAGE_SHIFT), reply)
    sk.emit(
        vp,
        "ium",
        "resume-thread",
        NtStatus.name_of(status),
        trustlet_id=process.trustlet_id(vp),
        routine=routine,
        reply_length=reply_length,
    )
    return Reply(status, [reply_length])


def _debug_gate(
    sk: SecureKernel, vp: Cpu, process: ium.SecureProcess | None, what: str
) -> Reply | None:
    if process is None:
        return Reply(NtStatus.INVALID_HANDLE)
    if not process.read(vp, SkProcessLayout.DEBUG):  # the signed Debug policy (§3.1 ID 2)
        sk.emit(
            vp, "ium", "policy.debug", "refused", what=what, trustlet_id=process.trustlet_id(vp)
        )
        return Reply(NtStatus.ACCESS_DENIED)
    return None


def debug_process(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    process = _process(sk, vp, args.fields[0])
    refusal = _debug_gate(sk, vp, process, "debug-process")
    return refusal or Reply(NtStatus.SUCCESS)


def get_context(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    thread = ium.thread_object(sk, vp, args.fields[0])
    process = ium.thread_process(sk, vp, thread) if thread else None
    refusal = _debug_gate(sk, vp, process, "get-context")
    return refusal or Reply(NtStatus.SUCCESS, [ium.IMAGE_BASE])


def debug_read_write_memory(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """Field1 = process, Field2 = trustlet VA, Field3 = VTL0 buffer PFN, Field4 = length,
    Field5 = 1 for a write."""
    handle, va, buffer_pfn, length, write = args.fields[:5]
    process = _process(sk, vp, handle)
    refusal = _debug_gate(sk, vp, process, "read-write-memory")
    if refusal is not None or process is None:
        return refusal or Reply(NtStatus.INVALID_HANDLE)
    if not 0 < length <= PAGE_SIZE or not sk.vtl0_page(vp, buffer_pfn):
        return Reply(NtStatus.INVALID_PARAMETER)
    if not write and not sk.vtl0_output_page(vp, buffer_pfn):
        return Reply(NtStatus.INVALID_PARAMETER)
    gpa = _trustlet_gpa(sk, vp, process, va)
    if gpa is None or (gpa & 0xFFF) + length > PAGE_SIZE:
        return Reply(NtStatus.ACCESS_VIOLATION)
    buffer = sk.space.phys_va(buffer_pfn << PAGE_SHIFT)
    if write:
        vp.write(sk.space.phys_va(gpa), vp.read(buffer, length))
    else:
        vp.write(buffer, vp.read(sk.space.phys_va(gpa), length))
    return Reply(NtStatus.SUCCESS)


def _trustlet_gpa(sk: SecureKernel, vp: Cpu, process: ium.SecureProcess, va: int) -> int | None:
    entry = ium.page_tables(sk, vp, process).lookup(va)
    if entry is None:
        return None
    return (entry & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF)


def retrieve_mailbox(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """Field1 = process, Field2 = slot, Field3 = mailbox key, Field4 = VTL0 PFN for the data."""
    handle, slot, key, out_pfn = args.fields[:4]
    process = _process(sk, vp, handle)
    if process is None:
        return Reply(NtStatus.INVALID_HANDLE)
    stored = process.read(vp, SkProcessLayout.MAILBOX_KEY)  # in the SKPROCESS page
    if key != stored or stored == 0:
        sk.emit(vp, "ium", "mailbox.key", "refused", trustlet_id=process.trustlet_id(vp))
        return Reply(NtStatus.ACCESS_DENIED)
    if not sk.vtl0_output_page(vp, out_pfn):
        return Reply(NtStatus.INVALID_PARAMETER)
    data = ium.mailbox(vp, process, slot)
    if data is None:
        return Reply(NtStatus.NOT_FOUND)
    vp.write(sk.space.phys_va(out_pfn << PAGE_SHIFT), data)
    return Reply(NtStatus.SUCCESS, [len(data)])


def create_secure_section(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """VslCreateSecureSection's counterpart (vbs-internals §4.4): Field1 = the trustlet's handle,
    Field2 = the section index it published → the PFNs of the shared pages (VTL0 maps them).
    Only sections the trustlet created itself can be named; its private memory never."""
    process = _process(sk, vp, args.fields[0])
    if process is None:
        return Reply(NtStatus.INVALID_HANDLE)
    section = process.section(vp, args.fields[1])  # the SKPROCESS page's section table, now
    if section is None:
        return Reply(NtStatus.INVALID_PARAMETER)
    _, pfns = section
    return Reply(NtStatus.SUCCESS, [len(pfns), *pfns[:10]])


def is_trustlet_running(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    running = False
    for _, va in objects.entries(sk, vp, ObjectType.SKPROCESS):  # the handle table, now
        if read_field(vp, va, SkProcessLayout.TRUSTLET_ID) == args.fields[0] and not read_field(
            vp, va, SkProcessLayout.TERMINATED
        ):
            running = True
            break
    return Reply(NtStatus.SUCCESS, [int(running)])


def rundown_process(sk: SecureKernel, vp: Cpu, args: SecureCallArgs) -> Reply:
    """Terminate: the trustlet's private pages are cleared before anything else can happen to
    them; they stay VTL1's (termination is VTL0's right — denial of service by design, §7)."""
    process = _process(sk, vp, args.fields[0])
    if process is None:
        return Reply(NtStatus.INVALID_HANDLE)
    for pfn in process.private_pfns(vp):
        vp.write(sk.space.phys_va(pfn << PAGE_SHIFT), bytes(PAGE_SIZE))
    write_field(vp, process.object_va, SkProcessLayout.TERMINATED, 1)
    sk.emit(vp, "ium", "rundown", "terminated", trustlet_id=process.trustlet_id(vp))
    return Reply(NtStatus.SUCCESS)


def register(sk: SecureKernel) -> None:
    sk.handlers[Service.CREATE_PROCESS] = create_process
    sk.handlers[Service.CREATE_THREAD] = create_thread
    sk.handlers[Service.DEBUG_PROCESS] = debug_process
    sk.handlers[Service.GET_CONTEXT] = get_context
    sk.handlers[Service.DEBUG_READ_WRITE_MEMORY] = debug_read_write_memory
    sk.handlers[Service.RETRIEVE_MAILBOX] = retrieve_mailbox
    sk.handlers[Service.IS_TRUSTLET_RUNNING] = is_trustlet_running
    sk.handlers[Service.CREATE_SECURE_SECTION] = create_secure_section
    sk.handlers[Service.RUNDOWN_PROCESS] = rundown_process
    sk.resume_thread = resume_thread


def _give_back(sk: SecureKernel, vp: Cpu, pfns: list[int]) -> None:
    """Return an image section the SK protected to VTL0 with an ordinary page's rights."""
    from vbsim.sk.services.hvci import vtl0_default_rights

    sk.set_vtl0_rights(vp, pfns, vtl0_default_rights(sk, vp))
    sk.unmark_own(vp, pfns)
