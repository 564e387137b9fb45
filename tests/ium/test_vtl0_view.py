"""What VTL0 can and cannot see of an IUM process: one test per row of vbs-internals §7.

VTL0 is probed only through its real interfaces: NT's own objects (the shadow EPROCESS, its page
tables), system calls from a VTL0 process (an administrator holding SeDebugPrivilege, the most
VTL0 ring 3 can be), NT's direct map at ring 0 (K0), and the secure calls NT can make.
"""

from __future__ import annotations

import struct

import pytest

from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.faults import Bugcheck
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.invariants.skstate import HostMem
from vbsim.ium import lsaiso, vmsp
from vbsim.ium.images import LSAISO, VMSP
from vbsim.nt.process import Process, Token, host_view
from vbsim.nt.syscalls import NUMBERS
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.ium.process import IMAGE_BASE, PRIVATE_BASE, PRIVATE_PAGES, thread_object
from vbsim.sk.layouts import SecureThread, ThreadTable, read_field
from vbsim.sk.sscn import Service

from . import kit
from .kit import Machine

FIRST_COOKIE = ThreadTable.FIRST_COOKIE

OWF = bytes(range(0xA0, 0xB0))
KERBEROS = bytes(range(0x40, 0x60))
PFN_MASK = 0x000F_FFFF_FFFF_F000


def protect_message(user: bytes = b"alice") -> bytes:
    return struct.pack("<I", lsaiso.OP_PROTECT) + user.ljust(32, b"\0") + OWF + KERBEROS


@pytest.fixture(scope="module")
def lsa(machine: Machine) -> Process:
    """LsaIso, holding one credential in its private memory."""
    process = machine.started(trustlet_image(LSAISO), 1, LSAISO)
    assert machine.run(process, protect_message()).status == NtStatus.SUCCESS
    return process


@pytest.fixture(scope="module")
def debuggable(machine: Machine) -> Process:
    """A test trustlet whose signed policy allows debugging (Debug = 1)."""
    return machine.started(kit.test_image(5, debug=True), 5, "DebugMe.exe")


@pytest.fixture(scope="module")
def admin(machine: Machine) -> kit.User:
    return kit.spawn(machine)


def secure_call(machine: Machine, service: Service, *fields: int) -> tuple[int, list[int]]:
    assert machine.nt.vsl is not None
    return machine.nt.vsl.call(machine.vp.cpu, service, *fields)


def _lookup(machine: Machine, process: Process, va: int) -> int | None:
    """A debugger's walk of the shadow process's page tables in RAM."""
    from vbsim.hw.pagetable import PageTables, PhysAccess

    ram = machine.system.machine.ram  # type: ignore[union-attr]
    return PageTables(PhysAccess.direct(ram, "debugger"), process.tables.root).lookup(va)


def image_gpa(machine: Machine, process: Process, page: int = 0) -> int:
    """The GPA of an image page, as NT knows it: from the shadow process's own page tables."""
    entry = _lookup(machine, process, IMAGE_BASE + page * PAGE_SIZE)
    assert entry is not None
    return entry & PFN_MASK


# -- process object, identity, threads -----------------------------------------------------------
def test_process_object_is_visible_with_trustlet_id_and_secure_pid(
    machine: Machine, lsa: Process
) -> None:
    assert machine.system.lookup_process(lsa.pid) == lsa
    assert lsa.name == LSAISO and lsa.trustlet_id == 1
    assert lsa.secure_pid != 0
    secure = machine.secure_process(lsa)  # SecurePid is the SK's handle to its SKPROCESS
    assert machine.system.machine is not None
    ram = machine.system.machine.ram
    assert secure.host_handle(ram) == lsa.secure_pid and secure.host_trustlet_id(ram) == 1


def test_nt_query_information_process_says_secure(machine: Machine, lsa: Process) -> None:
    user = kit.spawn(machine, "app.exe", Token("bob"))
    status, value = user.returned("tests.ium.vtl0.query_process", lsa.pid, user.scratch.base)
    assert status == NtStatus.SUCCESS
    assert value & 1 == 1  # IsSecureProcess
    assert value >> 1 == 1  # the trustlet ID NT can query
    status, value = user.returned(
        "tests.ium.vtl0.query_process", user.process.pid, user.scratch.base
    )
    assert (status, value) == (NtStatus.SUCCESS, 0)


def test_threads_exist_with_a_secure_thread_cookie(machine: Machine, lsa: Process) -> None:
    cookie = _cookie(machine, lsa)
    assert cookie >= FIRST_COOKIE
    assert machine.system.sk is not None
    assert machine.system.machine is not None
    mem = HostMem(machine.system.machine.ram, machine.system.sk)
    thread = thread_object(machine.system.sk, mem, cookie)  # the thread table in VTL1 RAM
    assert thread != 0
    assert read_field(mem, thread, SecureThread.COOKIE) == cookie
    assert read_field(mem, thread, SecureThread.PROCESS) == machine.secure_process(lsa).object_va


# -- private memory ------------------------------------------------------------------------------
def test_private_memory_is_not_readable_with_debug_privilege(
    machine: Machine, lsa: Process, admin: kit.User
) -> None:
    seen = b""
    for page in range(PRIVATE_PAGES):
        va = PRIVATE_BASE + page * PAGE_SIZE
        status, data = admin.returned(
            "tests.ium.vtl0.read_process", lsa.pid, va, 64, admin.scratch.base
        )
        assert status == NtStatus.ACCESS_VIOLATION, hex(va)
        assert data == bytes(64)
        seen += data
    # The shadow process has no mapping for the trustlet's private memory at all.
    assert all(_lookup(machine, lsa, PRIVATE_BASE + p * PAGE_SIZE) is None for p in range(8))
    assert OWF not in seen


def test_k0_read_of_a_private_page_is_intercepted_and_bugchecks(fresh: Machine) -> None:
    process = fresh.started(trustlet_image(LSAISO), 1, LSAISO)
    assert fresh.run(process, protect_message()).status == NtStatus.SUCCESS
    assert fresh.system.machine is not None
    private = fresh.secure_process(process).host_private_pfns(fresh.system.machine.ram)
    gpa = private[2] << PAGE_SHIFT  # LsaIso's heap
    assert OWF in fresh.system.machine.ram.read(gpa, PAGE_SIZE)  # the oracle: it is there
    vp = fresh.vp
    assert (vp.vtl, vp.cpl) == (0, 0)
    mark = fresh.mark()
    got: list[bytes] = []
    with pytest.raises(Bugcheck) as stop:
        got.append(vp.read(DIRECT_MAP + gpa, PAGE_SIZE))
    assert got == []  # no data reached VTL0
    assert stop.value.vtl == 0 and stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED
    events = fresh.events_since(mark)
    assert any(
        e.kind == "access" and e.mechanism == "slat" and e.outcome == "denied" and e.vtl == 0
        for e in events
    )
    intercepts = [e for e in events if e.kind == "intercept"]
    assert any(e.vtl == 1 and e.mechanism == "slat" and e.detail["gpa"] == gpa for e in intercepts)
    # NT's KeBugCheckEx, the crash it reports to the hypervisor (vbsim.hv.crash), then HLT and
    # the hypervisor's HLT exit, last
    assert [(e.kind, e.vtl) for e in events[-4:]] == [
        ("bugcheck", 0),
        ("crash", 0),
        ("cpu", 0),
        ("hypervisor", 0),
    ]


# -- image pages ---------------------------------------------------------------------------------
def test_image_pages_are_readable_from_vtl0(
    machine: Machine, lsa: Process, admin: kit.User
) -> None:
    image = trustlet_image(LSAISO)
    status, data = admin.returned(
        "tests.ium.vtl0.read_process", lsa.pid, IMAGE_BASE, 64, admin.scratch.base
    )
    assert (status, data) == (NtStatus.SUCCESS, image[:64])
    # NT itself reads the section page through its direct map (K0), with no intercept.
    mark = machine.mark()
    page = machine.vp.read(DIRECT_MAP + image_gpa(machine, lsa, 1), PAGE_SIZE)
    assert page == image[PAGE_SIZE : 2 * PAGE_SIZE]
    assert not machine.events_since(mark, "intercept")
    assert (
        image_gpa(machine, lsa, 1) >> PAGE_SHIFT
        == machine.secure_process(lsa).host_image_pfns(machine.system.machine.ram)[1]
    )


def test_k0_write_to_an_image_page_is_refused_by_slat(fresh: Machine) -> None:
    process = fresh.started(trustlet_image(LSAISO), 1, LSAISO)
    gpa = image_gpa(fresh, process, 0)
    machine = fresh.system.machine
    assert machine is not None and machine.slat is not None
    assert machine.slat.rights(0, gpa >> PAGE_SHIFT) == 1  # read only, for VTL0
    before = machine.ram.read(gpa, PAGE_SIZE)
    assert before.startswith(b"MZ")
    mark = fresh.mark()
    with pytest.raises(Bugcheck) as stop:
        fresh.vp.write(DIRECT_MAP + gpa, b"PATCHED!")
    assert stop.value.vtl == 0
    assert machine.ram.read(gpa, PAGE_SIZE) == before
    events = fresh.events_since(mark)
    denied = [e for e in events if e.kind == "access" and e.outcome == "denied"]
    assert denied and denied[0].mechanism == "slat" and denied[0].detail["access"] == "write"
    assert any(e.kind == "intercept" and e.vtl == 1 and e.outcome == "refused" for e in events)


def test_write_process_memory_into_a_trustlet_image_fails_cleanly(fresh: Machine) -> None:
    """WriteProcessMemory does not work against a trustlet (§7 "Debugging / injection"): the
    shadow process maps the image read-only, so NT refuses before touching the page."""
    process = fresh.started(trustlet_image(LSAISO), 1, LSAISO)
    machine = fresh.system.machine
    assert machine is not None
    gpa = image_gpa(fresh, process, 0)
    before = machine.ram.read(gpa, PAGE_SIZE)
    admin = kit.spawn(fresh)
    number = NUMBERS["NtWriteVirtualMemory"]
    args = (process.pid, IMAGE_BASE, admin.scratch.base, 8)
    mark = fresh.mark()
    assert admin.returned("tests.ium.vtl0.syscall", number, args) == NtStatus.ACCESS_VIOLATION
    assert machine.ram.read(gpa, PAGE_SIZE) == before
    assert not fresh.events_since(mark, "intercept") and not fresh.events_since(mark, "bugcheck")
    assert fresh.run(process, protect_message()).status == NtStatus.SUCCESS  # all still running


# -- debugging -----------------------------------------------------------------------------------
def test_lsaiso_refuses_debugging(machine: Machine, lsa: Process) -> None:
    cookie = _cookie(machine, lsa)
    buffer_va, buffer_gpa = machine.nt.alloc_kernel_page(machine.vp.cpu)
    mark = machine.mark()
    assert secure_call(machine, Service.DEBUG_PROCESS, lsa.secure_pid)[0] == NtStatus.ACCESS_DENIED
    assert secure_call(machine, Service.GET_CONTEXT, cookie)[0] == NtStatus.ACCESS_DENIED
    status, _ = secure_call(
        machine,
        Service.DEBUG_READ_WRITE_MEMORY,
        lsa.secure_pid,
        PRIVATE_BASE + 2 * PAGE_SIZE,
        buffer_gpa >> PAGE_SHIFT,
        PAGE_SIZE,
        0,
    )
    assert status == NtStatus.ACCESS_DENIED
    assert machine.vp.read(buffer_va, PAGE_SIZE) == bytes(PAGE_SIZE)
    refusals = [e for e in machine.events_since(mark, "ium") if e.mechanism == "policy.debug"]
    assert [e.detail["what"] for e in refusals] == [
        "debug-process",
        "get-context",
        "read-write-memory",
    ]
    assert all(e.outcome == "refused" and e.detail["trustlet_id"] == 1 for e in refusals)


def test_a_debug_policy_trustlet_allows_debugging(machine: Machine, debuggable: Process) -> None:
    cookie = _cookie(machine, debuggable)
    assert machine.run(debuggable, kit.message(kit.OP_ECHO, b"in the message page")).status == 0
    assert secure_call(machine, Service.DEBUG_PROCESS, debuggable.secure_pid)[0] == 0
    assert secure_call(machine, Service.GET_CONTEXT, cookie)[0] == NtStatus.SUCCESS
    buffer_va, buffer_gpa = machine.nt.alloc_kernel_page(machine.vp.cpu)
    status, _ = secure_call(
        machine,
        Service.DEBUG_READ_WRITE_MEMORY,
        debuggable.secure_pid,
        PRIVATE_BASE,  # the message page
        buffer_gpa >> PAGE_SHIFT,
        64,
        0,
    )
    assert status == NtStatus.SUCCESS
    assert b"in the message page" in machine.vp.read(buffer_va, 64)


# -- mailboxes -----------------------------------------------------------------------------------
MAILBOX_KEY = 0x5EC2E7_0001


@pytest.fixture(scope="module")
def vtpm(machine: Machine) -> Process:
    process = machine.started(trustlet_image(VMSP), 2, VMSP, mailbox_key=MAILBOX_KEY)
    run = machine.run(process, struct.pack("<II", vmsp.OP_PUBLISH, 3) + b"endorsement key")
    assert (run.status, run.reply) == (NtStatus.SUCCESS, b"")
    return process


def retrieve(machine: Machine, process: Process, slot: int, key: int) -> tuple[int, bytes]:
    va, gpa = machine.nt.alloc_kernel_page(machine.vp.cpu)
    status, outputs = secure_call(
        machine, Service.RETRIEVE_MAILBOX, process.secure_pid, slot, key, gpa >> PAGE_SHIFT
    )
    length = outputs[0] if status == NtStatus.SUCCESS else 16
    return status, machine.vp.read(va, length)


def test_mailbox_is_retrieved_with_the_right_key(machine: Machine, vtpm: Process) -> None:
    assert retrieve(machine, vtpm, 3, MAILBOX_KEY) == (NtStatus.SUCCESS, b"endorsement key")


@pytest.mark.parametrize("key", [0, MAILBOX_KEY + 1, MAILBOX_KEY ^ (1 << 63)])
def test_mailbox_with_the_wrong_key_is_access_denied(
    machine: Machine, vtpm: Process, key: int
) -> None:
    mark = machine.mark()
    assert retrieve(machine, vtpm, 3, key) == (NtStatus.ACCESS_DENIED, bytes(16))
    events = [e for e in machine.events_since(mark, "ium") if e.mechanism == "mailbox.key"]
    assert [e.outcome for e in events] == ["refused"]


def test_a_trustlet_created_without_a_key_has_no_readable_mailbox(
    machine: Machine, lsa: Process
) -> None:
    assert retrieve(machine, lsa, 0, 0)[0] == NtStatus.ACCESS_DENIED


# -- termination (denial of service is VTL0's right) ---------------------------------------------
def test_rundown_terminates_the_trustlet_and_clears_its_memory(fresh: Machine) -> None:
    # ID 4 is this trustlet's alone on the fresh machine (the boot may start LsaIso, ID 1).
    process = fresh.started(kit.test_image(4), 4)
    secret = b"private to the trustlet"
    assert fresh.run(process, kit.message(kit.OP_ECHO, secret)).status == NtStatus.SUCCESS
    secure = fresh.secure_process(process)
    machine = fresh.system.machine
    assert machine is not None
    private = secure.host_private_pfns(machine.ram)
    message_page = private[0] << PAGE_SHIFT
    assert secret in machine.ram.read(message_page, PAGE_SIZE)  # the oracle: it is there
    assert secure_call(fresh, Service.IS_TRUSTLET_RUNNING, 4)[:2] == (0, [1] + [0] * 10)
    mark = fresh.mark()
    assert secure_call(fresh, Service.RUNDOWN_PROCESS, process.secure_pid)[0] == NtStatus.SUCCESS
    assert [e.outcome for e in fresh.events_since(mark, "ium") if e.mechanism == "rundown"] == [
        "terminated"
    ]
    assert secure.host_terminated(machine.ram)
    assert secure_call(fresh, Service.IS_TRUSTLET_RUNNING, 4)[1][0] == 0
    assert fresh.run(process, kit.message(kit.OP_ECHO)).status == NtStatus.INVALID_HANDLE
    assert all(
        machine.ram.read(pfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE) for pfn in private
    )
    # Its memory stays VTL1's: nothing of it returns to VTL0.
    assert machine.slat is not None
    assert all(machine.slat.rights(0, pfn) == 0 for pfn in private)
    status, _ = secure_call(fresh, Service.RUNDOWN_PROCESS, process.secure_pid)
    assert status == NtStatus.INVALID_HANDLE


def test_nt_terminate_process_runs_the_trustlet_down(fresh: Machine) -> None:
    process = fresh.started(kit.test_image(4), 4)
    admin = kit.spawn(fresh)
    number = NUMBERS["NtTerminateProcess"]
    assert admin.returned("tests.ium.vtl0.syscall", number, (process.pid, 0)) == 0
    assert fresh.system.machine is not None
    assert host_view(fresh.system.machine.ram, process.eprocess).exiting
    assert fresh.terminated(process)
    assert secure_call(fresh, Service.IS_TRUSTLET_RUNNING, 4)[1][0] == 0
    assert fresh.run(process, kit.message(kit.OP_ECHO)).status != NtStatus.SUCCESS


def _cookie(machine: Machine, process: Process) -> int:
    from vbsim.nt.process import host_secure_thread_cookie

    assert machine.system.machine is not None
    return host_secure_thread_cookie(machine.system.machine.ram, process.eprocess)
