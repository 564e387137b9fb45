"""A15-A22, A27, A29 and the seed statements: every preset gives the public record's outcome, for
the reason the record gives (the deciding mechanism, read from the trace), and each verdict comes
from the goal: change the mechanism that stopped the attack and the same steps succeed (or take
away what let it succeed and it fails)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from tests.attacks.record import record_cases, run_once

from vbsim.attacks.catalogue import a15_a20_boot_and_trustlets as boot_ium
from vbsim.attacks.catalogue import a21_a29_credentials as creds
from vbsim.attacks.catalogue import seed_statements as seeds
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import PRESET_ORDER, Outcome, Scenario
from vbsim.attacks.runner import run
from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw import code
from vbsim.image import parse_image
from vbsim.nt import dump as nt_dump
from vbsim.nt import lsass, syscalls
from vbsim.nt.layouts import EPROCESS, HostReader
from vbsim.nt.process import Process, Protection
from vbsim.sk.ium import skci
from vbsim.sk.ium.process import MESSAGE_VA
from vbsim.sk.services import dump as sk_dump
from vbsim.sk.services import ium as ium_services

SCENARIOS: list[Scenario] = [*boot_ium.SCENARIOS, *creds.SCENARIOS, *seeds.SCENARIOS]
VBS_PRESETS = [p for p in PRESET_ORDER if p != "vbs-off"]


_run = run_once


def _events(ctx: AttackContext, mechanism: str, outcome: str | None = None) -> list[Any]:
    return [
        e
        for e in ctx.trace.events[ctx.attack_start :]
        if e.mechanism == mechanism and (outcome is None or e.outcome == outcome)
    ]


# -- the record, per preset --------------------------------------------------------------------
#: Known model gaps that give a wrong outcome (reported, pinned with strict xfails).
MODEL_GAPS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(("scenario", "preset"), record_cases(SCENARIOS, MODEL_GAPS))
def test_outcome_matches_public_record(scenario: Scenario, preset: str) -> None:
    result, _ = _run(scenario.id, preset)
    assert result.outcome == scenario.expected[preset], (result.mechanism, result.detail)


#: (scenario, preset or None for every VBS preset) → what the verdict names as the stopper.
DECIDING = {
    ("A15", "hardened"): "revocation",
    ("A15-LsaIso", "hardened"): "skci.revocation",
    ("A16", "hardened"): "mandatory",
    ("A18", None): "skci.signature",
    ("A19", None): "skci.trustlet-id",
    ("A20", None): "NtReadVirtualMemory=STATUS_ACCESS_VIOLATION",
    ("A27", None): "sk.crashdump",
    ("SEED-K0-IUM", None): "slat",
    ("SEED-IUM-K0", None): "paging.us",
    ("SEED-U0-SECURE-SYSCALL", None): "STATUS_INVALID_SYSTEM_SERVICE",
}


@pytest.mark.parametrize(("key", "mechanism"), DECIDING.items(), ids=lambda v: str(v))
def test_deciding_mechanism(key: tuple[str, str | None], mechanism: str) -> None:
    scenario_id, only = key
    for preset in [only] if only else VBS_PRESETS:
        result, _ = _run(scenario_id, preset)
        assert result.outcome == Outcome.BLOCKED
        assert mechanism in result.mechanism, (preset, result.mechanism)


def test_mechanisms_in_the_trace_that_the_verdict_does_not_name() -> None:
    for preset in VBS_PRESETS:
        # A16: the refused Secure Kernel halts the hardened boot because of Mandatory.
        _, ctx = _run("A16", preset)
        halted = [e for e in ctx.trace.events if e.mechanism == "mandatory"]
        assert [e.outcome for e in halted] == [
            "halted" if preset == "hardened" else "continue-without-vbs"
        ]
        # A17: the UEFI-locked setting wins over the registry value the attacker wrote.
        _, ctx = _run("A17", preset)
        assert ctx.notes["status"] == 0  # the registry write itself succeeded
        assert ctx.system is not None
        policy_steps = [s for s in ctx.system.steps if s["step"] == "vsm-policy"]
        expected_source = "uefi-variable" if preset == "hardened" else "registry"
        assert policy_steps[-1]["source"] == expected_source
        # A20: the K0 half is refused by the trustlet's signed Debug policy.
        _, ctx = _run("A20", preset)
        assert len(_events(ctx, "policy.debug", "refused")) == 3
        # The IUM filter answers NtSetValueKey itself.
        _, ctx = _run("SEED-IUM-SYSCALL", preset)
        assert _events(ctx, "ium.syscall-filter", "disabled")
        # lsass runs with Credential Guard: only a blob to copy.
        _, ctx = _run("SEED-K0-LSASS", preset)
        assert [e.outcome for e in ctx.trace.events if e.mechanism == "lsass"] == [
            "credential-guard"
        ]


def test_a21_talks_to_the_real_lsaiso() -> None:
    _, ctx = _run("A21", "vbs")
    assert ctx.notes["status"] == "STATUS_SUCCESS"
    resumed = [e for e in _events(ctx, "resume-thread") if e.detail.get("trustlet_id") == 1]
    assert resumed and resumed[-1].detail["routine"] == "lsaiso.main"
    assert resumed[-1].detail["reply_length"] == 24


def test_a27_dump_files_hold_only_ciphertext_of_vtl1() -> None:
    _, ctx = _run("A27", "vbs")
    assert ctx.system is not None and ctx.system.nt is not None
    files = nt_dump.files(ctx.system.nt)
    assert set(files) == {nt_dump.LIVE_DUMP_PATH, nt_dump.HIBERFIL_PATH}
    hiber = nt_dump.parse(files[nt_dump.HIBERFIL_PATH])
    flags = {flag for _, flag, _ in hiber}
    assert flags == {nt_dump.PLAIN, nt_dump.ENCRYPTED, nt_dump.WITHHELD}
    live = nt_dump.parse(files[nt_dump.LIVE_DUMP_PATH])
    # LsaIso's signed policy has CrashDump off: a crash dump gets nothing of it.
    assert nt_dump.ENCRYPTED not in {flag for _, flag, _ in live}
    _, off = _run("A27", "vbs-off")
    assert off.system is not None and off.system.nt is not None
    plain = nt_dump.parse(nt_dump.files(off.system.nt)[nt_dump.HIBERFIL_PATH])
    assert {flag for _, flag, _ in plain} == {nt_dump.PLAIN}


# -- flips: the goal decides ---------------------------------------------------------------------
def test_a15_succeeds_on_hardened_without_revocation_floors(
    preset_variant: Callable[..., str],
) -> None:
    name = preset_variant("hardened", revocation={})
    for scenario in (boot_ium.A15, boot_ium.A15_LSAISO):
        result, _ = run(scenario, name)
        assert result.outcome == Outcome.SUCCEEDED, (scenario.id, result.mechanism)


def test_a16_succeeds_on_hardened_without_mandatory(preset_variant: Callable[..., str]) -> None:
    result, _ = run(boot_ium.A16, preset_variant("hardened", mandatory=False))
    assert result.outcome == Outcome.SUCCEEDED


def test_a17_succeeds_on_hardened_with_the_efi_variable_deleted() -> None:
    unlocked = replace(boot_ium.A17, before_boot=lambda ctx: ctx.disk.efi_variables.clear())
    result, _ = run(unlocked, "hardened")
    assert result.outcome == Outcome.SUCCEEDED


def test_a18_goal_sees_attacker_code_that_is_signed_like_microsofts() -> None:
    def steps(ctx: AttackContext) -> None:
        image = trustlet_image("IumBackdoor.exe", trustlet_id=3, entry=boot_ium.ATTACKER_ENTRY)
        ctx.kernel(boot_ium._start_and_run, "IumBackdoor.exe", 3, image, b"run")

    result, ctx = run(replace(boot_ium.A18, steps=steps), "vbs")
    assert result.outcome == Outcome.SUCCEEDED
    assert boot_ium.runs(ctx, boot_ium.ATTACKER_ENTRY) == [(1, 3)]


def test_a19_succeeds_if_the_sk_ignored_the_requested_id(monkeypatch: pytest.MonkeyPatch) -> None:
    original = skci.admit

    def no_id_check(data: bytes, requested_id: int, *args: Any, **kwargs: Any) -> Any:
        parsed = parse_image(data)
        signed = parsed.policy.application_id if parsed.policy else requested_id
        return original(data, signed, *args, **kwargs)

    monkeypatch.setattr(ium_services, "admit", no_id_check)
    result, _ = run(boot_ium.A19, "vbs")
    assert result.outcome == Outcome.SUCCEEDED


def test_a20_succeeds_if_lsaiso_allowed_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    # LsaIso's signed policy says Debug=1: the SK copies it into the SKPROCESS page it decides from.
    from vbsim.image.policy import PolicyId
    from vbsim.sk.ium import process as sk_process

    real = sk_process.policy_value

    def policy_value(policy: Any, policy_id: int, default: int = 0) -> int:
        return 1 if policy_id == PolicyId.DEBUG else real(policy, policy_id, default)

    monkeypatch.setattr(sk_process, "policy_value", policy_value)
    result, ctx = run(boot_ium.A20, "vbs-hvci")
    assert result.outcome == Outcome.SUCCEEDED
    assert ctx.notes["a0_status"] != 0  # still nothing through the shadow process


def test_a21_fails_if_lsaiso_refused_to_compute_responses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    thunk = code.encode_thunk("lsaiso.main")
    name, lsaiso_main = code._registry[thunk]

    def no_respond(vp: Any, message: int, length: int, reply: int) -> Any:
        if length >= 4 and vp.read_u32(message) == 2:  # OP_RESPOND
            return 0
        return lsaiso_main(vp, message, length, reply)

    monkeypatch.setitem(code._registry, thunk, (name, no_respond))
    result, _ = run(creds.A21, "vbs")
    assert result.outcome == Outcome.BLOCKED


def _ptc_from_outside(vp: Any, pid: int, record_va: int, port: int, buffer: int) -> int:
    """Pass-the-Challenge from a process of its own: copy lsass's record, then call the port."""
    status = syscalls.syscall(vp, "NtReadVirtualMemory", pid, record_va, buffer, lsass.RECORD_SIZE)
    if status:
        return status
    parsed = lsass.parse_record(vp.read(buffer, lsass.RECORD_SIZE))
    blob = lsass.isolated_blob(parsed.blob) if parsed and parsed.blob else b""
    request = lsass.respond_message(blob or b"?", creds.CHALLENGE)
    vp.write(buffer + 4096, request)
    return syscalls.syscall(
        vp, "NtAlpcSendWaitReceivePort", port, buffer + 4096, len(request), buffer + 8192
    )


@pytest.mark.parametrize(
    ("admin", "refused"), [(True, "NtAlpcSendWaitReceivePort"), (False, "NtReadVirtualMemory")]
)
def test_a21_needs_code_inside_lsass(admin: bool, refused: str) -> None:
    def outside(ctx: AttackContext) -> None:
        nt = ctx.booted.nt
        assert nt is not None
        pid, va, _ = lsass.credential_region(nt)
        attacker = ctx.process(admin=admin)
        ctx.notes["attacker"] = attacker
        buffer = ctx.user_buffer(attacker, 3 * 4096)
        port = lsass.lsaiso_port(nt, ctx.vp.cpu)
        ctx.user(_ptc_from_outside, pid, va, port, buffer, process=attacker)

    result, _ = run(replace(creds.A21, steps=outside), "vbs")
    assert result.outcome == Outcome.BLOCKED
    assert f"{refused}=STATUS_ACCESS_DENIED" in result.mechanism


def _protect_stand_in(nt: Any, vp: Any, args: list[int]) -> int:
    """A test stand-in for NtProtectVirtualMemory(pid, address, size, protection) on another
    process (VirtualProtectEx): NtRead/WriteVirtualMemory's access check, then the PTEs."""
    from vbsim.hw.x86 import Pte

    pid, address, size, protect = args
    status, target = syscalls._lookup_process(nt, vp, pid, write=True)
    if status or not isinstance(target, Process):
        return status
    writable = protect in (syscalls.PAGE_READWRITE, syscalls.PAGE_EXECUTE_READWRITE)
    phys = nt.phys(vp)
    target.tables.phys = phys
    for page in range(address & ~0xFFF, address + size, 4096):
        pte = target.tables.pte_gpa(page)
        if pte is None:
            return 0xC000_0005
        value = phys.read_u64(pte)
        value = value | int(Pte.RW) if writable else value & ~int(Pte.RW)
        phys.write_u64(pte, value)
        vp.invlpg(page)
    return 0


@pytest.fixture
def remote_protect(monkeypatch: pytest.MonkeyPatch) -> None:
    # NT's service table is read-only at run time: the stand-in is a different build's table.
    table = {**syscalls.HANDLERS, "NtProtectVirtualMemory": _protect_stand_in}
    monkeypatch.setattr(syscalls, "HANDLERS", MappingProxyType(table))


def test_a22_succeeds_once_an_administrator_can_change_page_protection(
    remote_protect: None,
) -> None:
    for preset in PRESET_ORDER:
        result, ctx = run(creds.A22, preset)
        assert result.outcome == Outcome.SUCCEEDED, (preset, result.mechanism)
        assert ctx.notes["statuses"] == ["STATUS_SUCCESS", "STATUS_SUCCESS"]


def test_a22_needs_the_patch_and_is_stopped_by_run_as_ppl(remote_protect: None) -> None:
    logon_only = replace(creds.A22, steps=lambda ctx: creds.next_logon(ctx, creds.NEXT_LOGON))
    assert run(logon_only, "vbs")[0].outcome == Outcome.BLOCKED  # Credential Guard isolates it
    assert run(logon_only, "vbs-off")[0].outcome == Outcome.SUCCEEDED

    def as_ppl(ctx: AttackContext) -> None:
        machine = ctx.booted.machine
        assert machine is not None
        reader = HostReader(machine.ram, DIRECT_MAP)  # RunAsPPL: lsass starts as PPL (0x41)
        reader.set_field(creds.lsass_process(ctx).eprocess, EPROCESS.Protection, Protection.PPL)
        creds.a22_steps(ctx)

    result, _ = run(replace(creds.A22, steps=as_ppl), "vbs")
    assert result.outcome == Outcome.BLOCKED
    assert result.mechanism == "ps-protection"  # the PS_PROTECTION byte decided


def test_a27_succeeds_if_the_sk_gave_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sk_dump, "_encrypt", lambda key, session, pfn, data: data)
    result, _ = run(creds.A27, "vbs")
    assert result.outcome == Outcome.SUCCEEDED


def test_a29_needs_more_than_a_standard_user() -> None:
    def as_user(ctx: AttackContext) -> None:
        target = boot_ium.lsaiso_shadow(ctx)
        assert target is not None
        ctx.user(creds._terminate, target.pid, admin=False)

    result, _ = run(replace(creds.A29, steps=as_user), "vbs")
    assert result.outcome == Outcome.BLOCKED
    assert "NtTerminateProcess=STATUS_ACCESS_DENIED" in result.mechanism


def test_seed_k0_reads_ium_memory_once_vtl1_opens_the_page() -> None:
    def opened(ctx: AttackContext) -> None:
        sk = ctx.booted.sk
        lsaiso = boot_ium.trustlets(ctx, 1)[0]
        assert sk is not None
        private = lsaiso.private_pfns  # read through the SK's processor below
        ctx.secure_kernel(lambda vp: sk.set_vtl0_rights(vp, private(vp), 0xF))
        seeds.kernel_reads_ium_steps(ctx)

    result, _ = run(replace(seeds.KERNEL_READS_IUM, steps=opened), "vbs")
    assert result.outcome == Outcome.SUCCEEDED


def test_seed_k0_dumps_lsass_when_credential_guard_is_off(
    preset_variant: Callable[..., str],
) -> None:
    result, _ = run(seeds.K0_DUMPS_LSASS, preset_variant("vbs-hvci", credential_guard=False))
    assert result.outcome == Outcome.SUCCEEDED


def test_seed_ium_reads_its_own_memory() -> None:
    """The probe can read and report: what stops it is NT's address, not the probe."""

    def own(ctx: AttackContext) -> None:
        marker = os.urandom(16)
        ctx.notes["marker"] = marker
        loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
        # The probe reads the marker in the message page the SK captured into its own memory.
        header = struct.Struct("<IIQQ")
        message = header.pack(seeds.PROBE_READ, 0, MESSAGE_VA + header.size, 16) + marker
        ctx.kernel(seeds._run_probe, message, loot_va, seeds.probe_image())

    result, _ = run(replace(seeds.IUM_READS_KERNEL, steps=own), "vbs")
    assert result.outcome == Outcome.SUCCEEDED
