"""lsass.exe: its credential record, the hashes it computes, and its start at the end of phase 1."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vbsim.boot.chain import System, boot
from vbsim.boot.logon import DEFAULT_LOGON, Logon, encode_logon
from vbsim.ium import lsaiso
from vbsim.nt import lsass, syscalls
from vbsim.nt.process import Process
from vbsim.nt.vad import process_regions
from vbsim.ntstatus import BugCheck
from vbsim.policy import preset

# RFC 1320 appendix A.5 test suite.
MD4_VECTORS = [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "043f8582f241db351ce627e153e7f0e4",
    ),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
]

# RFC 3962 appendix B: AES256 string-to-key, pass phrase "password".
KERBEROS_VECTORS = [
    (
        1,
        "ATHENA.MIT.EDUraeburn",
        "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161",
    ),
    (
        2,
        "ATHENA.MIT.EDUraeburn",
        "a2e16d16b36069c135d5e9d2e25f896102685618b95914b467c67622225824ff",
    ),
    (
        1200,
        "ATHENA.MIT.EDUraeburn",
        "55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a",
    ),
    (
        5,
        "\x12\x34\x56\x78\x78\x56\x34\x12",
        "97a4e786be20d81a382d5ebc96d5909cabcdadc87ca48f574504159f16c36e31",
    ),
]


@pytest.mark.parametrize(("message", "digest"), MD4_VECTORS)
def test_md4_rfc1320_vectors(message: bytes, digest: str) -> None:
    assert lsass.md4(message).hex() == digest


@given(st.binary(max_size=200))
def test_md4_is_sixteen_bytes_for_any_length(data: bytes) -> None:
    assert len(lsass.md4(data)) == 16


def test_nt_owf_known_values() -> None:
    # NTOWFv1("password") and NTOWFv1("") as every NTLM reference lists them.
    assert lsass.nt_owf("password").hex() == "8846f7eaee8fb117ad06bdd830b7586c"
    assert lsass.nt_owf("") == lsass.md4(b"")


@pytest.mark.parametrize(("iterations", "salt", "key"), KERBEROS_VECTORS)
def test_kerberos_aes256_string_to_key_rfc3962_vectors(
    iterations: int, salt: str, key: str
) -> None:
    assert lsass.kerberos_aes256_key("password", salt, iterations).hex() == key


def test_record_round_trip() -> None:
    logon = Logon("bob", "FABRIKAM", "hunter2", logon_id=0x1234)
    owf = lsass.nt_owf(logon.password)
    key = lsass.kerberos_aes256_key(logon.password, lsass.kerberos_salt(logon))
    record = lsass.build_record(logon, owf + key, isolated=False)
    assert len(record) == lsass.RECORD_SIZE
    parsed = lsass.parse_record(record)
    assert parsed is not None
    assert (parsed.user, parsed.domain, parsed.logon_id) == ("bob", "FABRIKAM", 0x1234)
    assert (parsed.nt_owf, parsed.kerberos_key, parsed.blob) == (owf, key, None)
    assert record[lsass.SECRET_OFFSET : lsass.SECRET_OFFSET + 16] == owf


def test_parse_rejects_other_bytes() -> None:
    assert lsass.parse_record(bytes(lsass.RECORD_SIZE)) is None
    assert lsass.parse_record(b"short") is None


def _gpa(system: System, pid: int, va: int) -> int:
    assert system.nt is not None
    entry = _host_lookup(system, system.process(pid), va)
    assert entry is not None
    return (entry & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF)


def test_isolated_record_holds_lsaiso_blob() -> None:
    system = boot(preset("vbs"))
    assert system.machine is not None and system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    record = lsass.parse_record(system.machine.ram.read(_gpa(system, pid, va), length))
    assert record is not None and record.isolated and record.blob is not None
    blob = lsass.isolated_blob(record.blob)
    assert blob is not None and blob.startswith(lsaiso.BLOB_MAGIC)
    assert len(record.blob) <= lsass.SECRET_SIZE
    # The blob is sealed in VTL1: it carries neither the OWF nor the key, and it differs from
    # boot to boot (LsaIso's per-boot key).
    owf = lsass.nt_owf(DEFAULT_LOGON.password)
    assert owf not in blob
    other = boot(preset("vbs"))
    assert other.machine is not None and other.nt is not None
    pid2, va2, length2 = lsass.credential_region(other.nt)
    record2 = lsass.parse_record(other.machine.ram.read(_gpa(other, pid2, va2), length2))
    assert record2 is not None and record2.blob != record.blob


def test_messages_follow_lsaiso_protocol() -> None:
    message = lsass.protect_message("alice", b"O" * 16, b"K" * 32)
    assert len(message) == 4 + lsaiso.RECORD
    assert int.from_bytes(message[:4], "little") == lsaiso.OP_PROTECT
    respond = lsass.respond_message(b"B" * 10, b"C" * 8)
    assert respond == (2).to_bytes(4, "little") + (10).to_bytes(4, "little") + b"B" * 10 + b"C" * 8
    assert lsass.isolated_blob(b"no tag") is None


def test_protect_failure_keeps_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """If LsaIso does not answer, lsass keeps an isolated record with no secret at all, never
    the clear-text fallback."""
    monkeypatch.setattr(lsass, "protect_message", lambda *args: b"")  # LsaIso answers nothing
    system = boot(preset("vbs"))
    assert system.booted and system.machine is not None and system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    record = lsass.parse_record(system.machine.ram.read(_gpa(system, pid, va), length))
    assert record is not None and record.isolated and record.blob == b""


def test_lsaiso_not_running_means_credentials_in_vtl0(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credential Guard configured but LsaIso absent (e.g. its start failed): lsass keeps the
    credentials itself, as Windows does when Credential Guard is not running."""
    from vbsim.nt import secure_process

    monkeypatch.setattr(
        secure_process,
        "start_boot_trustlets",
        lambda nt, vp, images: {},
    )
    system = boot(preset("vbs"))
    assert system.booted and system.vbs_running and system.nt is not None
    assert system.machine is not None
    assert not lsass.credential_guard_active(system.nt, system.machine.bsp.cpu)
    assert system.trace.find("boot", "credential-guard")[-1].outcome == "not-running"
    assert system.trace.find("nt", "lsass")[-1].outcome == "credentials-in-vtl0"


def test_lsass_starts_at_the_end_of_phase1(make_system: Callable[..., System]) -> None:
    system = make_system("vbs")
    events = system.trace.events
    index = {e.mechanism: i for i, e in enumerate(events) if e.kind in ("boot", "nt")}
    assert index["phase4-init"] < index["lsass"] < index["nt-phase1"]
    created = [e.detail["name"] for e in system.trace.find("nt", "create-process")]
    assert created[0] == "System" and created.count("lsass.exe") == 1
    if "LsaIso.exe" in created:  # wininit starts the trustlets before lsass (§1.1 row 16)
        assert created.index("LsaIso.exe") < created.index("lsass.exe")
    # lsass's code ran at CPL3: its allocation was a system call.
    lsass_pid = system.nt.lsass.pid if system.nt and system.nt.lsass else None
    services = [
        e.detail["service"]
        for e in events[: index["lsass"]]
        if e.kind == "syscall" and e.mechanism == "nt-dispatch"
    ]
    assert services[-2:] == ["NtAllocateVirtualMemory", "NtAlpcSendWaitReceivePort"]
    assert lsass_pid is not None


def test_credential_region_before_lsass_runs() -> None:
    from vbsim.boot.chain import load_nt
    from vbsim.machine import Machine

    machine = Machine(ram_size=32 << 20, vps=1, hypervisor=False)
    nt, _ = load_nt(machine, preset("vbs-off").build, False)
    with pytest.raises(LookupError):
        lsass.credential_region(nt)
    machine.close()


def test_lsass_failing_to_start_is_critical_process_died(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handlers = dict(syscalls.HANDLERS)
    del handlers["NtAllocateVirtualMemory"]
    monkeypatch.setattr(syscalls, "HANDLERS", handlers)
    system = boot(preset("vbs"))
    assert not system.booted
    assert system.halted is not None and "0xEF" in system.halted
    bugcheck = system.trace.find("bugcheck")[-1]
    assert bugcheck.outcome == BugCheck.CRITICAL_PROCESS_DIED.name


@pytest.mark.parametrize(
    ("name", "isolated"),
    [
        ("vbs", True),
        ("vbs-hvci", True),
        ("hardened", True),
        ("legacy-2019", True),
        ("vbs-off", False),
    ],
)
def test_credential_guard_follows_policy_and_vbs(
    make_system: Callable[..., System], name: str, isolated: bool
) -> None:
    system = make_system(name)
    assert system.nt is not None
    assert system.machine is not None
    assert lsass.credential_guard_active(system.nt, system.machine.bsp.cpu) is isolated
    assert system.nt.lsass is not None and system.nt.lsass.isolated is isolated


def test_the_logon_reaches_lsass_as_bytes_and_the_cleartext_is_wiped() -> None:
    from vbsim.boot.chain import boot
    from vbsim.policy import preset

    system = boot(preset("vbs-off"))
    assert system.nt is not None and system.machine is not None
    pid, _, _ = lsass.credential_region(system.nt)
    process = system.process(pid)
    va = process_regions(system.machine.ram, process)[0].base + lsass.LOGON_MESSAGE_OFFSET
    leaf = _host_lookup(system, process, va)
    assert leaf is not None
    page = system.machine.ram.read(leaf & 0x000F_FFFF_FFFF_F000, 4096)
    password = DEFAULT_LOGON.password.encode("utf-16-le")
    assert password not in page  # lsass wiped the message after deriving its keys
    assert page[lsass.LOGON_MESSAGE_OFFSET : lsass.LOGON_MESSAGE_OFFSET + 64] == bytes(64)
    encoded = encode_logon(DEFAULT_LOGON)
    assert password in encoded and encoded[:8] == (0x3E7_0001).to_bytes(8, "little")


def _host_lookup(system: System, process: Process, va: int) -> int | None:
    """A debugger's walk of ``process``'s page tables in RAM."""
    from vbsim.hw.pagetable import PageTables, PhysAccess

    assert system.machine is not None
    tables = PageTables(PhysAccess.direct(system.machine.ram, "debugger"), process.tables.root)
    return tables.lookup(va)
