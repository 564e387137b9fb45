"""Virtual-memory and registry services with their access checks, and "dump lsass" (K0/A0).

vbs-internals §5.3 and §6: with Credential Guard off, an administrator holding SeDebugPrivilege
(A0), or any kernel-mode code (K0), reads lsass's memory and finds the NT OWF; with Credential
Guard on it finds only the ``[LSA Isolated Data]`` blob.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.boot.chain import System
from vbsim.boot.chain import system_values as hive
from vbsim.boot.disk import VBS_REGISTRY_KEY
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.ium import lsaiso
from vbsim.nt import lsass
from vbsim.nt.syscalls import (
    MAX_ALLOCATION,
    PAGE_EXECUTE_READ,
    PAGE_READONLY,
    PAGE_READWRITE,
)
from vbsim.nt.vad import process_regions, region_at
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .userland import ADMIN, ADMIN_DEBUG, NUMBERS, USER, User, inject, spawn

SECRET = b"the other process's data"


# -- NtAllocateVirtualMemory -----------------------------------------------------------------------
def test_allocate_returns_a_usable_region(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    out = user.scratch.base
    status, base = user.returned("tests.nt.allocate", 3 * 4096, PAGE_READWRITE, out)
    assert status == NtStatus.SUCCESS
    region = region_at(system.machine.ram, user.process, base)
    assert region is not None and region.size == 3 * 4096 and region.writable
    user.returned("tests.nt.write", base + 4096 + 8, b"hello")
    assert user.returned("tests.nt.read", base + 4096 + 8, 5) == b"hello"


def test_allocate_read_only_page_cannot_be_written(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    status, base = user.returned("tests.nt.allocate", 4096, PAGE_READONLY, user.scratch.base)
    assert status == NtStatus.SUCCESS
    outcome = user.run("tests.nt.write", base, b"x")
    assert outcome.terminated is not None and outcome.terminated.vector == 14
    assert user.view.exit_status == NtStatus.ACCESS_VIOLATION


@pytest.mark.parametrize(
    ("size", "protect", "expected"),
    [
        (0, PAGE_READWRITE, NtStatus.INVALID_PARAMETER),
        (MAX_ALLOCATION + 1, PAGE_READWRITE, NtStatus.INVALID_PARAMETER),
        (4096, 0x1234, NtStatus.INVALID_PAGE_PROTECTION),
        (4096, 0, NtStatus.INVALID_PAGE_PROTECTION),
    ],
)
def test_allocate_rejects_bad_arguments(
    system: System, size: int, protect: int, expected: NtStatus
) -> None:
    user = spawn(system, "app.exe", USER)
    regions = len(process_regions(system.machine.ram, user.process))
    status, _ = user.returned("tests.nt.allocate", size, protect, user.scratch.base)
    assert status == expected
    assert len(process_regions(system.machine.ram, user.process)) == regions


def test_allocate_execute_read_is_user_executable_not_writable(system: System) -> None:
    user = spawn(system, "app.exe", USER)
    status, base = user.returned("tests.nt.allocate", 4096, PAGE_EXECUTE_READ, user.scratch.base)
    assert status == NtStatus.SUCCESS
    region = region_at(system.machine.ram, user.process, base)
    assert region is not None and region.executable and not region.writable


# -- NtReadVirtualMemory / NtWriteVirtualMemory ----------------------------------------------------
def _victim(system: System) -> tuple[User, int]:
    victim = spawn(system, "victim.exe", USER)
    va = victim.scratch.base + 0x100
    victim.returned("tests.nt.write", va, SECRET)
    return victim, va


def test_non_admin_cannot_read_another_process(system: System) -> None:
    victim, va = _victim(system)
    reader = spawn(system, "reader.exe", USER)
    buffer = reader.scratch.base
    status, data = reader.returned(
        "tests.nt.read_process", victim.process.pid, va, len(SECRET), buffer
    )
    assert status == NtStatus.ACCESS_DENIED
    assert data == bytes(len(SECRET))


def test_admin_without_debug_privilege_cannot_read_another_process(system: System) -> None:
    victim, va = _victim(system)
    reader = spawn(system, "reader.exe", ADMIN)
    status, _ = reader.returned(
        "tests.nt.read_process", victim.process.pid, va, len(SECRET), reader.scratch.base
    )
    assert status == NtStatus.ACCESS_DENIED


def test_admin_with_debug_privilege_reads_and_writes_another_process(system: System) -> None:
    victim, va = _victim(system)
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    buffer = admin.scratch.base
    status, data = admin.returned(
        "tests.nt.read_process", victim.process.pid, va, len(SECRET), buffer
    )
    assert (status, data) == (NtStatus.SUCCESS, SECRET)
    status = admin.returned(
        "tests.nt.write_process", victim.process.pid, va, b"PATCHED", buffer + 0x800
    )
    assert status == NtStatus.SUCCESS
    assert victim.returned("tests.nt.read", va, 7) == b"PATCHED"


def test_non_admin_cannot_write_another_process(system: System) -> None:
    victim, va = _victim(system)
    writer = spawn(system, "writer.exe", USER)
    status = writer.returned(
        "tests.nt.write_process", victim.process.pid, va, b"PATCHED", writer.scratch.base
    )
    assert status == NtStatus.ACCESS_DENIED
    assert victim.returned("tests.nt.read", va, len(SECRET)) == SECRET


def test_a_process_reads_its_own_memory_without_privilege(system: System) -> None:
    user, va = _victim(system)
    status, data = user.returned(
        "tests.nt.read_process", user.process.pid, va, len(SECRET), user.scratch.base + 0x1000
    )
    assert (status, data) == (NtStatus.SUCCESS, SECRET)


@pytest.mark.parametrize("pid", [0, 1, 3, 0x7FFF_FFFF, 1 << 40])
def test_unknown_pid_is_invalid_handle(system: System, pid: int) -> None:
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    status, _ = admin.returned("tests.nt.read_process", pid, 0x1000_0000, 8, admin.scratch.base)
    assert status == NtStatus.INVALID_HANDLE


def test_reading_unmapped_or_kernel_memory_of_another_process_fails(system: System) -> None:
    victim, _ = _victim(system)
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    for va in (0, 0x7FFF_0000_0000, user_kernel_va()):
        status, data = admin.returned(
            "tests.nt.read_process", victim.process.pid, va, 16, admin.scratch.base
        )
        assert status == NtStatus.ACCESS_VIOLATION, hex(va)
        assert data == bytes(16)


def user_kernel_va() -> int:
    from vbsim.guest.address_space import DIRECT_MAP

    return DIRECT_MAP + 0x1000


@pytest.mark.parametrize("size", [0, (1 << 20) + 1])
def test_transfer_size_limits(system: System, size: int) -> None:
    admin = spawn(system, "debugger.exe", ADMIN_DEBUG)
    base, pid = admin.scratch.base, admin.process.pid
    statuses = admin.returned(
        "tests.nt.syscalls",
        [
            (NUMBERS[name], [pid, base, base, size])
            for name in ("NtReadVirtualMemory", "NtWriteVirtualMemory")
        ],
    )
    assert statuses == [NtStatus.INVALID_PARAMETER] * 2


# -- "dump lsass" (A0 with SeDebugPrivilege) -------------------------------------------------------
def _dump_lsass(system: System) -> tuple[int, bytes]:
    assert system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    attacker = spawn(system, "mimikatz.exe", ADMIN_DEBUG)
    status, data = attacker.returned(
        "tests.nt.read_process", pid, va, length, attacker.scratch.base
    )
    return status, data


def test_dump_lsass_without_credential_guard_finds_the_nt_owf(
    make_system: Callable[..., System],
) -> None:
    system = make_system("vbs-off")
    status, data = _dump_lsass(system)
    assert status == NtStatus.SUCCESS
    owf = lsass.nt_owf(DEFAULT_LOGON.password)
    assert owf in data
    record = lsass.parse_record(data)
    assert record is not None and not record.isolated
    assert record.user == DEFAULT_LOGON.user
    assert record.nt_owf == owf
    assert record.kerberos_key == lsass.kerberos_aes256_key(
        DEFAULT_LOGON.password, lsass.kerberos_salt(DEFAULT_LOGON)
    )


def test_dump_lsass_with_vbs_but_credential_guard_disabled_finds_the_nt_owf(
    make_system: Callable[..., System],
) -> None:
    system = make_system(preset("vbs").with_changes(credential_guard=False))
    assert system.vbs_running
    status, data = _dump_lsass(system)
    assert status == NtStatus.SUCCESS
    assert lsass.nt_owf(DEFAULT_LOGON.password) in data


@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "hardened"])
def test_dump_lsass_with_credential_guard_finds_only_the_isolated_blob(
    make_system: Callable[..., System], name: str
) -> None:
    system = make_system(name)
    status, data = _dump_lsass(system)
    assert status == NtStatus.SUCCESS
    logon = DEFAULT_LOGON
    owf = lsass.nt_owf(logon.password)
    key = lsass.kerberos_aes256_key(logon.password, lsass.kerberos_salt(logon))
    assert owf not in data and key not in data
    assert logon.password.encode("utf-16-le") not in data
    record = lsass.parse_record(data)
    assert record is not None and record.isolated
    assert record.user == logon.user and record.nt_owf is None and record.kerberos_key is None
    assert record.blob is not None and record.blob.startswith(b"[LSA Isolated Data]")
    # The blob is bound to the real OWF: LsaIso answers a challenge with it (A21: Credential
    # Guard protects storage, not use).
    blob = lsass.isolated_blob(record.blob)
    assert blob is not None and blob.startswith(lsaiso.BLOB_MAGIC)
    assert system.nt is not None
    assert system.machine is not None
    port = lsass.lsaiso_port(system.nt, system.machine.bsp.cpu)
    admin = spawn(system, "pass-the-challenge.exe", ADMIN)
    message = lsass.respond_message(blob, b"CHALLNGE")
    status, _ = admin.returned("tests.nt.alpc", port, message, admin.scratch.base)
    assert status == NtStatus.ACCESS_DENIED  # LsaIso's port is lsass's ...
    pid, _, _ = lsass.credential_region(system.nt)
    injected = inject(system, pid)  # ... so the attacker runs its code inside lsass
    status, response = injected.returned("tests.nt.alpc", port, message, injected.scratch.base)
    assert status == NtStatus.SUCCESS
    assert response == lsaiso.ntlm_response(owf, b"CHALLNGE")


def test_no_lsass_page_holds_a_secret_with_credential_guard(
    make_system: Callable[..., System],
) -> None:
    """Every committed page of lsass, read by A0 with SeDebugPrivilege: no OWF, no Kerberos key,
    no password (lsass scrubs its LsaIso request buffer)."""
    logon = DEFAULT_LOGON
    secrets = [
        lsass.nt_owf(logon.password),
        lsass.kerberos_aes256_key(logon.password, lsass.kerberos_salt(logon)),
        logon.password.encode("utf-16-le"),
    ]
    for name, exposed in (("vbs", False), ("vbs-off", True)):
        system = make_system(name)
        assert system.nt is not None
        pid, _, _ = lsass.credential_region(system.nt)
        attacker = spawn(system, "mimikatz.exe", ADMIN_DEBUG)
        memory = b""
        for region in process_regions(system.machine.ram, system.process(pid)):
            for offset in range(0, region.size, 0x1000):
                status, page = attacker.returned(
                    "tests.nt.read_process",
                    pid,
                    region.base + offset,
                    0x1000,
                    attacker.scratch.base,
                )
                assert status == NtStatus.SUCCESS
                memory += page
        assert (secrets[0] in memory, secrets[1] in memory) == (exposed, exposed), name
        assert secrets[2] not in memory  # the password itself is never stored


def vtl0_readable_ram(system: System) -> bytes:
    """All of guest RAM as VTL0 may read it (pages its SLAT denies read as zeros)."""
    assert system.machine is not None
    ram, slat = system.machine.ram, system.machine.slat
    data = bytearray(ram.mm)
    if slat is not None:
        for pfn in range(ram.pages):
            if not slat.rights(0, pfn) & 1:
                data[pfn << 12 : (pfn + 1) << 12] = bytes(4096)
    return bytes(data)


def test_credential_guard_secrets_are_nowhere_vtl0_can_read(
    make_system: Callable[..., System],
) -> None:
    """Not only lsass: no VTL0-readable byte of RAM holds the OWF or the Kerberos key; the only
    copies are in VTL1 (LsaIso's memory)."""
    logon = DEFAULT_LOGON
    owf = lsass.nt_owf(logon.password)
    key = lsass.kerberos_aes256_key(logon.password, lsass.kerberos_salt(logon))
    system = make_system("vbs")
    assert system.machine is not None
    assert owf in bytes(system.machine.ram.mm)  # LsaIso holds it ...
    visible = vtl0_readable_ram(system)
    assert visible.find(owf) == -1 and visible.find(key) == -1  # ... and only LsaIso


def test_dump_lsass_from_kernel_mode(make_system: Callable[..., System]) -> None:
    """K0: a driver attaches to lsass (CR3 switch) and reads its user pages (STAC for SMAP)."""
    for name, finds_owf in (("vbs-off", True), ("vbs", False)):
        system = make_system(name)
        assert system.nt is not None and system.machine is not None
        pid, va, length = lsass.credential_region(system.nt)
        vp = system.machine.bsp
        saved = vp.p.cr3
        vp.mov_to_cr(3, system.process(pid).tables.root)
        vp.stac()
        data = vp.read(va, length)
        vp.clac()
        vp.mov_to_cr(3, saved)
        assert (lsass.nt_owf(DEFAULT_LOGON.password) in data) is finds_owf
        assert data[:8] == lsass.RECORD_MAGIC


def test_non_admin_cannot_dump_lsass(system: System) -> None:
    assert system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    user = spawn(system, "app.exe", USER)
    status, data = user.returned("tests.nt.read_process", pid, va, length, user.scratch.base)
    assert status == NtStatus.ACCESS_DENIED and data == bytes(length)


# -- NtSetValueKey ---------------------------------------------------------------------------------
def test_set_value_key_needs_admin(system: System) -> None:
    assert system.nt is not None
    before = hive(system).get(VBS_REGISTRY_KEY)  # the hive loaded from disk at boot
    user = spawn(system, "app.exe", USER)
    status = user.returned("tests.nt.set_value", VBS_REGISTRY_KEY, 0x55, user.scratch.base)
    assert status == NtStatus.ACCESS_DENIED
    assert hive(system).get(VBS_REGISTRY_KEY) == before
    admin = spawn(system, "admin.exe", ADMIN)
    status = admin.returned("tests.nt.set_value", VBS_REGISTRY_KEY, 0, admin.scratch.base)
    assert status == NtStatus.SUCCESS
    assert hive(system)[VBS_REGISTRY_KEY] == 0
    status, value = user.returned("tests.nt.query_value", VBS_REGISTRY_KEY, user.scratch.base)
    assert (status, value) == (NtStatus.SUCCESS, 0)
    event = system.trace.find("registry", "nt-registry")[-1]
    assert event.detail["key"] == VBS_REGISTRY_KEY and event.cpl == 0


@pytest.mark.parametrize("length", [0, 257])
def test_set_value_key_rejects_bad_key_lengths(system: System, length: int) -> None:
    admin = spawn(system, "admin.exe", ADMIN)
    statuses = admin.returned(
        "tests.nt.syscalls", [(NUMBERS["NtSetValueKey"], [admin.scratch.base, length, 1, 0])]
    )
    assert statuses == [NtStatus.INVALID_PARAMETER]
