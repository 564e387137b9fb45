"""D6: K0 writes the Secure Kernel's HVCI page-state table (issue 10 part 3)."""

from __future__ import annotations

import functools

import pytest

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.catalogue import d06_sk_state as d6
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import PRESET_ORDER, Outcome, RunResult
from vbsim.attacks.runner import run
from vbsim.sk.services.hvci import PageState

VBS = ["vbs", "vbs-hvci", "hardened", "legacy-2019"]


@functools.cache
def _run(preset: str) -> tuple[RunResult, AttackContext]:
    return run(d6.D6, preset)


def test_d6_is_in_the_catalogue_with_a_record_for_every_preset() -> None:
    assert by_id("D6") is d6.D6
    assert set(d6.D6.expected) == set(PRESET_ORDER)


@pytest.mark.parametrize("preset", VBS)
def test_slat_refuses_the_write_and_the_table_is_unchanged(preset: str) -> None:
    result, ctx = _run(preset)
    assert result.outcome is Outcome.BLOCKED == result.expected
    assert result.mechanism == "slat"
    machine = ctx.booted.machine
    assert machine is not None
    gpa = ctx.notes["table_gpa"] + ctx.notes["own_pfn"]
    assert machine.ram.read(gpa, 1)[0] == ctx.notes["before"] == PageState.UNVALIDATED
    denied = [
        e
        for e in ctx.trace.events[ctx.attack_start :]
        if e.kind == "access" and e.outcome == "denied"
    ]
    assert denied and denied[0].vtl == 0 and denied[0].detail.get("gpa", gpa) >> 12 == gpa >> 12


def test_without_vbs_there_is_no_secure_kernel() -> None:
    result, _ = _run("vbs-off")
    assert result.outcome is Outcome.NOT_APPLICABLE


def test_the_goal_can_be_met_when_the_table_really_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The goal is not a constant: if SLAT did not stand in the way (here the test writes the
    byte from outside the machine, where the attacker's store would have landed), the SK's next
    decision follows the forged state and the goal is met."""
    ctx_holder: list[AttackContext] = []
    real = d6._forge

    def outside(vp: object, root: int, table_gpa: int, own_pfn: int, spare: list[int]) -> int:
        machine = ctx_holder[0].booted.machine
        assert machine is not None
        machine.ram.write(table_gpa + own_pfn, bytes([d6.FORGED_STATE]))
        nt = d6.nt_of(vp)  # type: ignore[arg-type]
        assert nt.vsl is not None
        return nt.vsl.call(vp, d6.Service.MAKE_PROTECTED_PAGE_WRITABLE, own_pfn)[0]  # type: ignore[arg-type]

    original_steps = d6.d6_steps

    def steps(ctx: AttackContext) -> None:
        ctx_holder.append(ctx)
        original_steps(ctx)

    monkeypatch.setattr(d6, "_forge", outside)
    scenario = d6.D6.__class__(**{**d6.D6.__dict__, "steps": steps})
    result, ctx = run(scenario, "vbs-hvci")
    assert result.outcome is Outcome.SUCCEEDED
    assert ctx.notes["next_decision"] == "STATUS_SUCCESS"
    monkeypatch.setattr(d6, "_forge", real)
