"""Goal checks judge from what memory holds now, not from Python copies (DESIGN.md: a goal is a
hardware debugger's view of RAM).

Each test changes the bytes in RAM (as a K0 or K1 write would) or the Python copy alone, and shows
that the host-side helper follows the bytes: ``lsaiso_shadow`` (EPROCESS.TrustletId),
``process_gpa`` and D-series ``_user_bytes`` (EPROCESS.DirectoryTableBase), ``lsaiso_table_gpa``
(SKPROCESS.DirectoryTableBase), and the A15-LsaIso / A19 goals (the image in the trustlet's image
pages)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vbsim.attacks.catalogue import a03_a14_memory_code_dma as a03
from vbsim.attacks.catalogue import a15_a20_boot_and_trustlets as a15
from vbsim.attacks.catalogue import d01_d05_data_only as d01
from vbsim.attacks.context import AttackContext
from vbsim.hw.cpu import Cpu
from vbsim.image import ComponentVersion
from vbsim.nt import lsass
from vbsim.nt.layouts import EPROCESS, NO_TRUSTLET, Field, write_field
from vbsim.nt.process import Process
from vbsim.sk.ium.process import SecureProcess


def _write(cpu: Cpu, eprocess: int, offset: int, size: int, value: int) -> int:
    """K0: one write to an EPROCESS field in RAM."""
    write_field(cpu, eprocess, Field("planted", offset, size), value)
    return 0


def _k0_set(ctx: AttackContext, process: Process, field: Field, value: int) -> None:
    ctx.kernel(_write, process.eprocess, field.offset, field.size, value)


def _lsass(ctx: AttackContext) -> tuple[Process, int, int]:
    nt = ctx.booted.nt
    assert nt is not None
    pid, va, length = lsass.credential_region(nt)
    return ctx.booted.process(pid), va, length


def _lsaiso(ctx: AttackContext) -> SecureProcess:
    found = a15.trustlets(ctx, a15.LSAISO_ID)
    assert len(found) == 1
    return found[0]


def test_lsaiso_shadow_follows_the_trustlet_id_in_ram(ctx: AttackContext) -> None:
    shadow = a15.lsaiso_shadow(ctx)
    assert shadow is not None and shadow.trustlet_id == a15.LSAISO_ID
    _k0_set(ctx, shadow, EPROCESS.TrustletId, NO_TRUSTLET)
    assert shadow.trustlet_id == a15.LSAISO_ID  # NT's Python handle did not change ...
    assert a15.lsaiso_shadow(ctx) is None  # ... the EPROCESS did, and the goal reads that


def test_process_gpa_and_user_bytes_follow_directory_table_base_in_ram(
    ctx: AttackContext,
) -> None:
    """K0 points a fresh process's DirectoryTableBase at lsass's tables: a walk from its
    EPROCESS now finds lsass's record (the Python handle's root maps nothing there)."""
    target, va, length = _lsass(ctx)
    other = ctx.process(admin=False, name="empty.exe")
    expected = a15.process_gpa(ctx, target, va)
    assert expected is not None
    assert a15.process_gpa(ctx, other, va) is None
    assert d01._user_bytes(ctx, other, va, length) == b""
    record = d01._user_bytes(ctx, target, va, length)
    assert record[:8] == lsass.RECORD_MAGIC
    _k0_set(ctx, other, EPROCESS.DirectoryTableBase, a15.directory_table_base(ctx, target))
    assert a15.process_gpa(ctx, other, va) == expected
    assert d01._user_bytes(ctx, other, va, length) == record


def test_lsaiso_table_gpa_walks_the_root_skprocess_holds(ctx: AttackContext) -> None:
    """The walk starts at the DirectoryTableBase the SKPROCESS page holds in RAM: a VTL1
    write of another root there moves it (there is no Python copy of the root to consult)."""
    from vbsim.guest.address_space import DIRECT_MAP
    from vbsim.sk.layouts import SkProcess

    process = _lsaiso(ctx)
    assert not hasattr(process, "tables")
    expected = a03.lsaiso_table_gpa(ctx)
    assert expected is not None
    machine = ctx.booted.machine
    assert machine is not None
    at = process.object_va - DIRECT_MAP + SkProcess.DIRECTORY_TABLE_BASE.offset
    root = machine.ram.read(at, 8)
    machine.ram.write(at, bytes(8))
    try:
        assert a03.lsaiso_table_gpa(ctx) != expected
    finally:
        machine.ram.write(at, root)
    assert a03.lsaiso_table_gpa(ctx) == expected


def test_a15_lsaiso_goal_reads_the_version_from_the_image_pages(
    ctx: AttackContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The genuine, current LsaIso runs: a Python copy that claims the old version is not
    believed (the image pages in RAM hold the current one)."""
    process = _lsaiso(ctx)
    old = ComponentVersion.parse(a15.OLD.version, svn=a15.OLD.svn)
    assert not a15.a15_lsaiso_goal(ctx)
    monkeypatch.setattr(process, "image", replace(process.image, version=old))
    assert not a15.a15_lsaiso_goal(ctx)
    image = a15.running_image(ctx, process)
    assert image is not None and image.version is not None
    assert image.version.numbers != old.numbers


def test_a19_goal_reads_the_application_id_from_the_image_pages(
    ctx: AttackContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = _lsaiso(ctx)
    policy = process.image.policy
    assert policy is not None
    assert not a15.a19_goal(ctx)
    monkeypatch.setattr(
        process, "image", replace(process.image, policy=replace(policy, application_id=2))
    )
    assert not a15.a19_goal(ctx)  # LsaIso's pages in RAM still say ApplicationId 1
    image = a15.running_image(ctx, process)
    assert image is not None and image.policy is not None
    assert image.policy.application_id == a15.LSAISO_ID


def _claims_without_writing(cpu: Cpu) -> list[object]:
    """K0: touches no memory and hands back an empty "forged" record (helper-34's audit)."""
    return [0, b""]


def _claiming_steps(ctx: AttackContext) -> None:
    *statuses, forged = ctx.kernel(_claims_without_writing)
    ctx.notes.update(statuses=statuses, follow_on=0, forged=forged)


@pytest.mark.parametrize("scenario", ["A8", "A9", "A8-LIVEDUMP"])
@pytest.mark.parametrize("name", ["hardened", "legacy-2019"])
def test_sk_record_goals_ignore_what_the_payload_returns(scenario: str, name: str) -> None:
    """The A8 family's goal reads the forged header and record in SK memory against the
    scenario's own constants: a payload that wrote nothing and returned an empty "forged" value
    does not meet it, on the preset where the real attack succeeds either."""
    from vbsim.attacks.catalogue import SCENARIOS
    from vbsim.attacks.runner import run

    real = next(s for s in SCENARIOS if s.id == scenario)
    result, _ = run(replace(real, steps=_claiming_steps), name)
    assert result.outcome != "succeeded"
    assert real.goal_met is a03.sk_records_forged


class _Everything(bytes):
    """Contents that claim to hold any bytes (helper-35's forged dump file)."""

    def __contains__(self, item: object) -> bool:
        return True


def test_a27_goal_counts_only_bytes_a_file_holds(ctx: AttackContext) -> None:
    from vbsim.attacks.catalogue import a21_a29_credentials as a21

    nt = ctx.booted.nt
    assert nt is not None
    nt.files["MEMORY.DMP"] = _Everything(b"no owf here")
    assert not a21.a27_goal(ctx)
    nt.files["MEMORY.DMP"] = b"dump: " + a21._owf()
    assert a21.a27_goal(ctx)
