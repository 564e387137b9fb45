"""System calls from IUM (vbs-internals §2.5, §2.6, §4; Appendix A items 7 and 8), Iumbase
crypto, and a trustlet trying to read VTL0 kernel memory.

The test trustlet's code (``kit``) issues real ``syscall`` instructions at VTL1 CPL3: numbers with
bit 27 set go to the Secure Kernel's secure service table, every other number through the IUM
filter (disabled / forwarded to NT by a normal call / handled in the SK).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vbsim.boot.chain import system_values as hive
from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import GuestTermination
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.ium import iumbase, vmsp
from vbsim.ium.images import VMSP
from vbsim.nt.kernel import NtKernel
from vbsim.nt.process import Process, Token
from vbsim.nt.syscalls import NUMBERS
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium.process import HEAP_VA, PRIVATE_BASE, PRIVATE_PAGES
from vbsim.sk.ium.syscalls import (
    IUM_FILTER,
    NORMAL_IUM_SYSCALL,
    SECURE_NUMBERS,
    SECURE_SYSCALL_BIT,
    Kind,
)
from vbsim.trace import Event

from . import kit
from .kit import Machine

INVALID_SERVICE = NtStatus.INVALID_SYSTEM_SERVICE
assert INVALID_SERVICE == 0xC000_001C


@pytest.fixture(scope="module")
def trustlet(machine: Machine) -> Process:
    """A test trustlet, ID 4, with no capabilities in its policy."""
    return machine.started(kit.test_image(4), 4)


def run_calls(
    machine: Machine, process: Process, *calls: tuple[int, ...]
) -> tuple[list[int], bytes]:
    run = machine.run(process, kit.syscalls_message(*calls))
    assert run.status == NtStatus.SUCCESS
    statuses = kit.syscall_statuses(run.reply, len(calls))
    return statuses, run.reply[8 * len(calls) :]


def filter_events(machine: Machine, mark: int) -> list[Event]:
    return machine.events_since(mark, "ium-syscall")


# -- the IUM syscall filter ----------------------------------------------------------------------
def test_a_disabled_nt_service_is_invalid_system_service(
    machine: Machine, trustlet: Process
) -> None:
    assert IUM_FILTER["NtSetValueKey"] is Kind.DISABLED
    registry = hive(machine.system)
    mark = machine.mark()
    name = b"HKLM\\SYSTEM\\written-from-ium"
    key_va = PRIVATE_BASE + 8 + kit.RECORD.size + 64  # inside the message page (trustlet memory)
    statuses, _ = run_calls(machine, trustlet, (NUMBERS["NtSetValueKey"], key_va, len(name), 1))
    assert statuses == [INVALID_SERVICE]
    assert hive(machine.system) == registry
    events = filter_events(machine, mark)
    assert [(e.mechanism, e.outcome) for e in events] == [("ium.syscall-filter", "disabled")]
    assert events[0].detail["service"] == "NtSetValueKey" and events[0].vtl == 1
    assert not machine.events_since(mark, "normalcall")  # NT never heard of it


def test_a_forwarded_nt_service_reaches_nt_through_a_normal_call(
    machine: Machine, trustlet: Process
) -> None:
    assert IUM_FILTER["NtTestAlert"] is Kind.FORWARDED
    mark = machine.mark()
    statuses, _ = run_calls(machine, trustlet, (NUMBERS["NtTestAlert"],))
    assert statuses == [NtStatus.SUCCESS]
    events = machine.events_since(mark)
    normal = [e for e in events if e.kind == "normalcall"]
    assert ("request", "sent", 1) in [(e.mechanism, e.outcome, e.vtl) for e in normal]
    served = [e for e in normal if e.mechanism == "nt-dispatch"]
    assert [(e.outcome, e.vtl, e.detail["number"]) for e in served] == [
        ("serviced", 0, NORMAL_IUM_SYSCALL)
    ]
    filtered = [e for e in events if e.kind == "ium-syscall"]
    assert [(e.outcome, e.detail["service"]) for e in filtered] == [("forwarded", "NtTestAlert")]
    # NT ran it after the SK asked, and the SK answered the trustlet after NT replied.
    assert served[0].seq < filtered[0].seq


def test_a_special_nt_service_is_handled_in_the_secure_kernel(
    machine: Machine, trustlet: Process
) -> None:
    assert IUM_FILTER["NtQueryInformationProcess"] is Kind.SPECIAL
    mark = machine.mark()
    number = NUMBERS["NtQueryInformationProcess"]
    statuses, out = run_calls(machine, trustlet, (number, 0, 0x3F, kit.OUT_VA))
    assert statuses == [NtStatus.SUCCESS]
    assert int.from_bytes(out[:8], "little") == (4 << 1) | 1  # secure, trustlet ID 4
    assert not machine.events_since(mark, "normalcall")  # NT was not involved
    filtered = filter_events(machine, mark)
    assert [(e.outcome, e.detail["service"]) for e in filtered] == [
        ("special", "NtQueryInformationProcess")
    ]


def test_a_vtl0_process_calling_a_secure_syscall_number_gets_invalid_system_service(
    machine: Machine,
) -> None:
    user = kit.spawn(machine, "app.exe", Token("bob"))
    number = SECURE_NUMBERS["IumCrypto"]
    assert number == SECURE_SYSCALL_BIT | 0x05 == 0x0800_0005
    mark = machine.mark()
    status = user.returned("tests.ium.vtl0.syscall", number, (HEAP_VA, 0, 0, 0))
    assert status == INVALID_SERVICE
    dispatched = [e for e in machine.events_since(mark, "syscall") if e.mechanism == "nt-dispatch"]
    assert [(e.vtl, e.detail["number"], e.outcome) for e in dispatched] == [
        (0, number, "STATUS_INVALID_SYSTEM_SERVICE")
    ]
    assert not machine.events_since(mark, "ium-syscall")  # the SK never saw it


# -- capabilities --------------------------------------------------------------------------------
def test_secure_storage_needs_the_capability(machine: Machine, trustlet: Process) -> None:
    mark = machine.mark()
    run = machine.run(trustlet, kit.message(kit.OP_STORE, struct.pack("<I", 1) + b"sealed"))
    put, get = struct.unpack("<II", run.reply)
    assert (put, get) == (NtStatus.ACCESS_DENIED, NtStatus.ACCESS_DENIED)
    refusals = [e for e in machine.events_since(mark, "ium") if e.mechanism == "policy.capability"]
    assert [(e.detail["capability"], e.detail["trustlet_id"]) for e in refusals] == [
        ("secure-storage", 4),
        ("secure-storage", 4),
    ]


def test_vmsp_may_use_secure_storage(machine: Machine) -> None:
    process = machine.started(trustlet_image(VMSP), 2, VMSP)
    mark = machine.mark()
    run = machine.run(process, struct.pack("<II", vmsp.OP_SEAL, 1) + b"vTPM state")
    assert run.status == NtStatus.SUCCESS and len(run.reply) > 4  # a sealed blob, no error code
    services = [
        (e.detail["service"], e.outcome)
        for e in machine.events_since(mark, "ium-syscall")
        if e.detail["trustlet_id"] == 2
    ]
    assert ("IumSecureStoragePut", "STATUS_SUCCESS") in services
    unsealed = machine.run(process, struct.pack("<II", vmsp.OP_UNSEAL, 0) + run.reply)
    assert unsealed.reply == b"vTPM state"


# -- Iumbase EncryptData / DecryptData -----------------------------------------------------------
@pytest.mark.parametrize("key", [iumbase.LOCAL, iumbase.PER_BOOT])
def test_encrypt_decrypt_round_trip(machine: Machine, trustlet: Process, key: int) -> None:
    secret = b"only trustlet 4 may read this"
    sealed = machine.run(trustlet, kit.message(kit.OP_ENCRYPT, struct.pack("<I", key) + secret))
    assert sealed.reply[:4] == bytes(4)
    blob = sealed.reply[4:]
    assert secret not in blob and len(blob) == 12 + len(secret) + 16  # nonce, data, GCM tag
    opened = machine.run(trustlet, kit.message(kit.OP_DECRYPT, struct.pack("<I", key) + blob))
    assert opened.reply == bytes(4) + secret


@pytest.mark.parametrize("key", [iumbase.LOCAL, iumbase.PER_BOOT])
def test_another_trustlet_id_cannot_decrypt(machine: Machine, trustlet: Process, key: int) -> None:
    other = machine.started(kit.test_image(5), 5, "Other.exe")
    sealed = machine.run(trustlet, kit.message(kit.OP_ENCRYPT, struct.pack("<I", key) + b"x" * 40))
    blob = sealed.reply[4:]
    opened = machine.run(other, kit.message(kit.OP_DECRYPT, struct.pack("<I", key) + blob))
    assert int.from_bytes(opened.reply[:4], "little") == NtStatus.AUTH_TAG_MISMATCH
    assert len(opened.reply) == 4  # no plaintext


def test_a_tampered_blob_does_not_decrypt(machine: Machine, trustlet: Process) -> None:
    sealed = machine.run(trustlet, kit.message(kit.OP_ENCRYPT, struct.pack("<I", 1) + b"abc" * 9))
    blob = bytearray(sealed.reply[4:])
    blob[20] ^= 1
    opened = machine.run(trustlet, kit.message(kit.OP_DECRYPT, struct.pack("<I", 1) + blob))
    assert int.from_bytes(opened.reply[:4], "little") == NtStatus.AUTH_TAG_MISMATCH


# -- random system calls -------------------------------------------------------------------------
KNOWN_NUMBERS = sorted({*NUMBERS.values(), *SECURE_NUMBERS.values()})
USER_LIMIT = 1 << 47
#: Pointer-safe argument values: zero, kernel-half or otherwise out-of-range values (every
#: service refuses them before touching memory), and addresses in the trustlet's own private
#: pages, far enough from the end that any length the other values allow stays mapped.
MAPPED = st.integers(PRIVATE_BASE + 1, PRIVATE_BASE + 3 * PAGE_SIZE)
SAFE_ARG = st.one_of(
    st.just(0),
    MAPPED,
    st.integers(USER_LIMIT, (1 << 64) - 1),
    st.sampled_from([HEAP_VA, kit.OUT_VA, PRIVATE_BASE + PAGE_SIZE]),
)
#: The services whose handlers exist (and so read or write through pointer arguments).
IMPLEMENTED = sorted(
    [
        SECURE_NUMBERS[name]
        for name in (
            "IumGetIdk",
            "IumCrypto",
            "IumPostMailbox",
            "IumSecureStorageGet",
            "IumSecureStoragePut",
        )
    ]
    + [NUMBERS[name] for name, kind in IUM_FILTER.items() if kind is not Kind.DISABLED]
)
NUMBER = st.one_of(
    st.sampled_from(IMPLEMENTED),
    st.sampled_from(KNOWN_NUMBERS),
    st.integers(0, 0x1FF),
    st.integers(SECURE_SYSCALL_BIT, SECURE_SYSCALL_BIT + 0x40),
    st.integers(0, (1 << 64) - 1),
)


@pytest.fixture(scope="module")
def fuzz_target(machine: Machine) -> Iterator[list[Process]]:
    yield [machine.started(kit.test_image(4), 4, "Fuzz.exe")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(NUMBER, SAFE_ARG, SAFE_ARG, SAFE_ARG, SAFE_ARG), max_size=6))
def test_random_syscalls_with_valid_pointers_never_raise(
    machine: Machine, fuzz_target: list[Process], calls: list[tuple[int, ...]]
) -> None:
    process = fuzz_target[0]
    if machine.terminated(process):  # a random NtTerminateProcess got it
        process = fuzz_target[0] = machine.started(kit.test_image(4), 4, "Fuzz.exe")
    run = machine.run(process, kit.syscalls_message(*calls))
    if machine.terminated(process):
        assert NUMBERS["NtTerminateProcess"] in [c[0] for c in calls]
        return
    assert run.status == NtStatus.SUCCESS
    statuses = kit.syscall_statuses(run.reply, len(calls))
    assert all(0 <= s <= 0xFFFF_FFFF for s in statuses)
    for (number, *_), status in zip(calls, statuses, strict=True):
        if number not in KNOWN_NUMBERS:
            assert status == INVALID_SERVICE, hex(number)


def test_an_unmapped_pointer_to_a_secure_syscall_is_an_access_violation(fresh: Machine) -> None:
    process = fresh.started(kit.test_image(4), 4)
    unmapped = PRIVATE_BASE + PRIVATE_PAGES * PAGE_SIZE + 0x10_0000 * 64
    statuses, _ = run_calls(fresh, process, (SECURE_NUMBERS["IumGetIdk"], 0, unmapped, 32))
    assert statuses == [NtStatus.ACCESS_VIOLATION]


@pytest.fixture(scope="module")
def fuzz_machines() -> Iterator[list[Machine]]:
    """Machines for the fully random test: a Secure Kernel bugcheck ends one, the next example
    boots another."""
    machines: list[Machine] = []
    yield machines
    for m in machines:
        m.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    calls=st.lists(
        st.tuples(
            NUMBER,
            *[st.one_of(st.integers(0, 8), st.integers(0, 0x10000), st.integers(0, (1 << 64) - 1))]
            * 4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_syscalls_and_arguments_never_raise(
    fuzz_machines: list[Machine], calls: list[tuple[int, ...]]
) -> None:
    if not fuzz_machines or fuzz_machines[-1].system.halted == "bugcheck":
        fuzz_machines.append(kit.booted())
    machine = fuzz_machines[-1]
    process = machine.started(kit.test_image(4), 4, "Fuzz.exe")
    try:
        run = machine.run(process, kit.syscalls_message(*calls))
    except GuestTermination:
        machine.system.halted = "bugcheck"
        raise
    assert run.status == NtStatus.SUCCESS or machine.terminated(process)


# -- a trustlet reading VTL0 kernel memory ---------------------------------------------------------
def _kernel_va(machine: Machine, which: str) -> int:
    nt = machine.nt
    return DIRECT_MAP + nt.space.root if which == "direct-map" else nt.syscall_entry


@pytest.mark.parametrize("which", ["direct-map", "code"])
def test_a_trustlet_reading_nt_kernel_memory_faults_and_its_thread_ends(
    fresh: Machine, which: str
) -> None:
    """NT's page-table root through the direct map, or NT's code: the trustlet's tables give
    CPL3 no access to either, the #PF is taken in VTL1 user mode, the Secure Kernel ends the
    thread, and NT gets STATUS_ACCESS_VIOLATION and no byte of its own memory back."""
    process = fresh.started(kit.test_image(4), 4)
    va = _kernel_va(fresh, which)
    mark = fresh.mark()
    run = fresh.run(process, kit.message(kit.OP_READ, struct.pack("<QQ", va, 64)))
    assert (run.status, run.reply) == (NtStatus.ACCESS_VIOLATION, b"")
    events = fresh.events_since(mark)
    denied = [e for e in events if e.kind == "access" and e.outcome == "denied"]
    assert denied and (denied[0].vtl, denied[0].cpl, denied[0].detail["va"]) == (1, 3, va)
    assert denied[0].mechanism.startswith("paging")  # the trustlet's tables, not SLAT
    faults = [e for e in events if e.kind == "exception" and e.detail.get("vector") == 14]
    assert faults and (faults[0].vtl, faults[0].detail["cr2"]) == (1, va)
    ended = [e for e in events if e.kind == "ium" and e.outcome == "thread-terminated"]
    assert ended and ended[0].vtl == 1
    assert not [e for e in events if e.kind == "bugcheck"]
    # The Secure Kernel is still serving: the same and another trustlet keep working.
    assert fresh.run(process, kit.message(kit.OP_ECHO, b"again")).reply == b"again"
    other = fresh.started(kit.test_image(5), 5)
    assert fresh.run(other, kit.message(kit.OP_ECHO, b"alive")).reply == b"alive"


CURRENT: list[int] = []


@guest_code("tests.ium.current_spy")
def _current_spy(vp: Cpu, *args: int) -> int:
    """KiServiceTable's NtTestAlert slot, hooked: which EPROCESS NT's processor block names as
    current while it serves the forwarded call."""
    nt = vp.kernel()
    assert isinstance(nt, NtKernel)
    current = nt.process_of(vp)
    CURRENT.append(current.eprocess if current is not None else 0)
    return int(NtStatus.SUCCESS)


def test_a_forwarded_service_runs_in_the_trustlets_shadow_process(
    machine: Machine, trustlet: Process
) -> None:
    """IumGenericSyscall is served while the trustlet's thread runs, i.e. with its shadow
    process current (and its DirectoryTableBase loaded), not whichever process resumed it."""
    system = machine.system
    assert system.nt is not None and system.nt_space is not None and system.machine is not None
    slot = system.nt.service_table + NUMBERS["NtTestAlert"] * 8
    gpa = system.nt_space.lookup_gpa(slot)
    original = system.machine.ram.read(gpa, 8)
    system.machine.ram.write(
        gpa, system.nt_space.install("tests.ium.current_spy").to_bytes(8, "little")
    )
    CURRENT.clear()
    try:
        statuses, _ = run_calls(machine, trustlet, (NUMBERS["NtTestAlert"],))
    finally:
        system.machine.ram.write(gpa, original)
    assert statuses == [NtStatus.SUCCESS]
    assert [trustlet.eprocess] == CURRENT
