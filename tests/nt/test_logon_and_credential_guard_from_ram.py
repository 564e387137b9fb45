"""What lsass and wininit decide from is in RAM (DESIGN.md "the one rule").

- The logon: the password is host-side data (``vbsim.boot.logon``), typed into NT's logon buffer
  at boot; lsass learns it only from those bytes, and no guest module carries it.
- Credential Guard: wininit starts LsaIso when the SYSTEM hive in RAM enables it
  (``LsaCfgFlags`` 1 or 2, Microsoft Learn "Configure Credential Guard"), read at that moment;
  the policy only decides what the boot chain writes into the hive.  lsass finds LsaIso's port in
  NT's .data, not in a Python attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vbsim.boot.chain import System, boot, lsaiso_port
from vbsim.boot.disk import Disk
from vbsim.boot.logon import DEFAULT_LOGON, Logon, encode_logon
from vbsim.hw.cpu import Cpu
from vbsim.nt import lsass, registry, secure_process
from vbsim.nt.kernel import NtKernel
from vbsim.policy import Policy, preset

SRC = Path(__file__).resolve().parents[2] / "src" / "vbsim"
OTHER = Logon(user="carol", domain="FABRIKAM", password="Autumn#1999", logon_id=0x3E7_0042)


def _record(system: System) -> lsass.ParsedRecord:
    """lsass's credential record, read from RAM through lsass's page tables (a debugger)."""
    from vbsim.hw.pagetable import PageTables, PhysAccess

    assert system.nt is not None and system.machine is not None
    pid, va, length = lsass.credential_region(system.nt)
    ram = system.machine.ram
    tables = PageTables(PhysAccess.direct(ram, "debugger"), system.process(pid).tables.root)
    leaf = tables.lookup(va)
    assert leaf is not None
    record = lsass.parse_record(ram.read((leaf & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF), length))
    assert record is not None
    return record


def _logon_buffer(system: System) -> bytes:
    assert system.nt is not None and system.machine is not None
    va = system.nt.variables[lsass.LOGON_BUFFER].va
    from vbsim.hw.pagetable import PageTables, PhysAccess

    tables = PageTables(PhysAccess.direct(system.machine.ram, "debugger"), system.nt.space.root)
    out = b""
    for at in range(va, va + lsass.LOGON_BUFFER_SIZE):  # byte-wise: it may straddle two pages
        leaf = tables.lookup(at)
        assert leaf is not None
        out += system.machine.ram.read((leaf & 0x000F_FFFF_FFFF_F000) | (at & 0xFFF), 1)
    return out


# -- the logon -------------------------------------------------------------------------------------
def test_no_guest_module_carries_the_logon() -> None:
    """The password is not a constant guest code (or a catalogue step importing ``vbsim.nt``)
    can read: lsass has neither the logon nor its type, and no source under nt/sk/ium holds the
    password's text."""
    assert not hasattr(lsass, "DEFAULT_LOGON") and not hasattr(lsass, "Logon")
    for package in ("nt", "sk", "ium"):
        for path in (SRC / package).rglob("*.py"):
            assert DEFAULT_LOGON.password not in path.read_text(), path


def test_lsass_learns_the_logon_from_the_bytes_the_host_typed() -> None:
    """Another user at winlogon: lsass's record holds that user's secrets, derived from the
    bytes in RAM, and NT's logon buffer is clear once lsass has the message."""
    system = boot(preset("vbs-off"), logon=OTHER)
    record = _record(system)
    assert (record.user, record.domain, record.logon_id) == ("carol", "FABRIKAM", 0x3E7_0042)
    assert record.nt_owf == lsass.nt_owf(OTHER.password)
    assert record.kerberos_key == lsass.kerberos_aes256_key(
        OTHER.password, lsass.kerberos_salt(OTHER)
    )
    assert lsass.nt_owf(DEFAULT_LOGON.password) != record.nt_owf
    assert _logon_buffer(system) == bytes(lsass.LOGON_BUFFER_SIZE)


def test_lsass_derives_from_what_the_logon_buffer_holds_when_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write to the logon buffer in RAM just before lsass starts (through NT's processor, as a
    K0 write would be) is what lsass logs on: it reads the bytes at that moment."""
    original = lsass.start

    def retyped(nt: NtKernel, vp: Cpu) -> lsass.LsassInfo:
        vp.write(nt.variable(lsass.LOGON_BUFFER).va, encode_logon(OTHER))
        return original(nt, vp)

    monkeypatch.setattr(lsass, "start", retyped)
    record = _record(boot(preset("vbs-off")))  # the host typed DEFAULT_LOGON
    assert record.user == "carol" and record.nt_owf == lsass.nt_owf(OTHER.password)


def test_no_logon_waiting_is_critical_process_died(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing in the buffer lsass has no logon to serve (the model's boot always types
    one): it fails to start, which is fatal."""
    from vbsim.boot import chain

    monkeypatch.setattr(chain, "type_logon", lambda ram, nt, logon: None)
    system = boot(preset("vbs-off"))
    assert not system.booted and system.halted is not None and "0xEF" in system.halted


# -- Credential Guard from the hive ---------------------------------------------------------------
def _boot_with_hive(policy: Policy, value: int | None) -> System:
    disk = Disk.install(policy)
    if value is not None:
        disk.registry[registry.LSA_CFG_FLAGS_KEY] = value  # what an administrator set on disk
    return boot(policy, disk)


def _started(system: System) -> bool:
    assert system.nt is not None and system.machine is not None
    return bool(lsaiso_port(system))


@pytest.mark.parametrize(
    ("credential_guard", "value", "started"),
    [
        (True, 0, False),  # disabled in the hive although the policy installed it
        (True, 3, False),  # no documented meaning: nothing enabled
        (True, 1, True),  # enabled with UEFI lock
        (True, 2, True),  # enabled without lock
        (False, 2, True),  # the hive enables it although the policy did not install it
        (False, None, False),  # what the policy installed: 0
        (True, None, True),  # what the policy installed: enabled
    ],
)
def test_lsaiso_starts_when_the_hive_in_ram_enables_credential_guard(
    credential_guard: bool, value: int | None, started: bool
) -> None:
    system = _boot_with_hive(preset("vbs").with_changes(credential_guard=credential_guard), value)
    assert system.booted and system.vbs_running
    assert _started(system) is started
    assert ("LsaIso.exe" in system.nt.started_trustlets if system.nt else False) is started
    record = _record(system)
    assert record.isolated is started
    assert (record.nt_owf == lsass.nt_owf(DEFAULT_LOGON.password)) is not started
    starts = system.trace.find("boot", "start-trustlet")
    assert [e.outcome for e in starts] == ["STATUS_SUCCESS" if started else "not-configured"]
    steps = [s for s in system.steps if s["step"] == "credential-guard"]
    assert bool(steps) is started


def test_the_policy_only_writes_the_hive() -> None:
    """credential_guard (with or without UEFI lock) decides LsaCfgFlags in the hive, no more."""
    from vbsim.boot.chain import system_values

    for changes, expected in (
        ({"credential_guard": False}, 0),
        ({"credential_guard": True, "uefi_lock": True}, 1),
        ({"credential_guard": True, "uefi_lock": False}, 2),
    ):
        system = boot(preset("vbs").with_changes(**changes))
        assert system_values(system)[registry.LSA_CFG_FLAGS_KEY] == expected, changes


def test_wininit_reads_the_hive_at_the_moment_it_starts_trustlets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LsaCfgFlags cleared in RAM just before wininit looks (through NT's processor): LsaIso does
    not start, and lsass keeps the credentials in VTL0, although disk and policy enable it."""
    original = secure_process.start_boot_trustlets

    def cleared_first(nt: NtKernel, vp: Cpu, images: dict[str, tuple[int, bytes]]) -> Any:
        assert registry.set_value(nt, vp, registry.LSA_CFG_FLAGS_KEY, 0)
        return original(nt, vp, images)

    monkeypatch.setattr(secure_process, "start_boot_trustlets", cleared_first)
    system = boot(preset("vbs"))
    assert system.booted and not _started(system)
    assert not _record(system).isolated


def test_lsass_finds_lsaiso_s_port_in_nt_memory(make_system: Callable[..., System]) -> None:
    """The port lsass talks to is NT's AlpcLsaIsoPort global in RAM: LsaIso's PID; a K0 write
    of 0 there and lsass no longer sees Credential Guard (the Python boot report is not read)."""
    system = make_system("vbs")
    assert system.nt is not None and system.machine is not None
    nt, cpu = system.nt, system.machine.bsp.cpu
    lsaiso = system.nt.started_trustlets["LsaIso.exe"]
    assert lsass.lsaiso_port(nt, cpu) == lsaiso == lsaiso_port(system)
    assert lsass.credential_guard_active(nt, cpu)
    variable = nt.variables[secure_process.LSAISO_PORT]
    system.machine.ram.write_u64(variable.gpa, 0)
    assert lsass.lsaiso_port(nt, cpu) == 0 and not lsass.credential_guard_active(nt, cpu)
    assert nt.started_trustlets["LsaIso.exe"] == lsaiso  # the report did not change


def test_lsass_follows_the_hive_in_ram_after_boot(make_system: Callable[..., System]) -> None:
    system = make_system("vbs")
    assert system.nt is not None and system.machine is not None
    nt, cpu = system.nt, system.machine.bsp.cpu
    assert lsass.credential_guard_active(nt, cpu)
    assert registry.set_value(nt, cpu, registry.LSA_CFG_FLAGS_KEY, 0)  # a K0 write to the hive
    assert not lsass.credential_guard_active(nt, cpu)
