"""D8: K0 points a signed driver's IRP_MJ_DEVICE_CONTROL at its own code; HVCI decides the call."""

from __future__ import annotations

import pytest

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.catalogue import d08_irp_hook as d8
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.model import PRESET_ORDER, Outcome
from vbsim.attacks.runner import run
from vbsim.hw.cpu import Cpu
from vbsim.nt import objdir


def test_d8_is_in_the_catalogue_with_an_expectation_for_every_preset() -> None:
    assert by_id("D8") is d8.D8
    assert set(d8.D8.expected) == set(PRESET_ORDER)
    assert "no per-configuration outcome" in d8.D8.expected_why


def test_without_hvci_nt_calls_the_hook_for_a_standard_user() -> None:
    result, ctx = run(d8.D8, "vbs")
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert ctx.notes["load"] == "STATUS_SUCCESS" and ctx.notes["path"] == "pool"
    assert ctx.notes["request"] == "STATUS_SUCCESS"
    assert runs(ctx, d8.HOOK) == [(0, 0)]  # once, in VTL0 ring 0: NT called it


@pytest.mark.parametrize("preset", ["vbs-hvci", "hardened"])
def test_with_hvci_the_write_lands_but_the_call_cannot_execute_it(preset: str) -> None:
    """The pointer is unprotected data, so the K0 write goes through under HVCI too; what
    HVCI refuses is making the attacker's page executable (no W+X pool, no KX in SLAT for
    the hand-made page), so NT's call faults and the routine never runs."""
    result, ctx = run(d8.D8, preset)
    assert result.outcome is Outcome.BLOCKED == result.expected
    assert ctx.notes["path"] == "pte"  # HVCI refused NT executable-and-writable pool
    assert not runs(ctx, d8.HOOK)


def test_without_the_hook_the_driver_s_own_routine_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The goal is not a constant: a K0 step that finds the driver object but leaves its
    dispatch alone leaves the request to the driver, and the attacker's routine never runs."""

    def look_only(cpu: Cpu, name: str, window: int) -> str:
        return "looked" if objdir.lookup(d8.nt_of(cpu), cpu, name) else "no-driver"

    monkeypatch.setattr(d8, "_hook", look_only)
    result, ctx = run(d8.D8, "vbs-off")
    assert result.outcome is Outcome.BLOCKED
    assert ctx.notes["path"] == "looked" and ctx.notes["request"] == "STATUS_SUCCESS"
    assert not runs(ctx, d8.HOOK)
