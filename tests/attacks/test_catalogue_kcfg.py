"""D9 / D9-BITMAP: K0 redirects the EDR's process-notify routine to a signed ntoskrnl routine
that is no valid call target; kernel CFG decides the call where HVCI runs."""

from __future__ import annotations

import pytest

from vbsim.attacks.catalogue import SCENARIOS, by_id
from vbsim.attacks.catalogue import d09_kcfg as d9
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.model import PRESET_ORDER, Outcome
from vbsim.attacks.runner import run
from vbsim.nt import drivers, kcfg
from vbsim.ntstatus import BugCheck

HVCI = ("vbs-hvci", "hardened")
NO_HVCI = ("vbs-off", "vbs", "legacy-2019")


def test_d9_rows_are_in_the_catalogue_with_an_expectation_for_every_preset() -> None:
    assert by_id("D9") is d9.D9 and by_id("D9-BITMAP") is d9.D9_BITMAP
    assert [s.id for s in SCENARIOS].count("D9") == 1
    for scenario in (d9.D9, d9.D9_BITMAP):
        assert set(scenario.expected) == set(PRESET_ORDER)
        assert {p for p, o in scenario.expected.items() if o is Outcome.BLOCKED} == set(HVCI)
    assert "McGarr 2022" in d9.D9.expected_why and "not tested in the record" in d9.WHY


@pytest.mark.parametrize("preset", NO_HVCI)
def test_without_hvci_nt_calls_the_gadget(preset: str) -> None:
    """Only the kernel-address check runs (no bitmap in use): a kernel gadget passes it."""
    result, ctx = run(d9.D9, preset)
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert runs(ctx, kcfg.GADGET) == [(0, 0)]  # once, in VTL0 ring 0, when NT made the call
    assert ctx.notes["victim"] and not ctx.crashes


@pytest.mark.parametrize("preset", HVCI)
def test_with_hvci_kcfg_bugchecks_before_the_gadget_runs(preset: str) -> None:
    result, ctx = run(d9.D9, preset)
    assert result.outcome is Outcome.BLOCKED == result.expected
    assert result.mechanism == "kcfg"
    assert ctx.notes["replaced"]  # the pointer write itself landed: pool is not protected
    assert not runs(ctx, kcfg.GADGET)
    [crash] = ctx.crashes
    assert (crash.vtl, crash.code) == (0, int(BugCheck.KERNEL_SECURITY_CHECK_FAILURE))
    assert crash.parameters[1] == 10  # FAST_FAIL_GUARD_ICALL_CHECK_FAILURE


@pytest.mark.parametrize("preset", NO_HVCI)
def test_bitmap_variant_finds_no_bitmap_to_write_where_kcfg_is_not_fully_on(preset: str) -> None:
    result, ctx = run(d9.D9_BITMAP, preset)
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert ctx.notes["bitmap"] == "no-bitmap"
    assert runs(ctx, kcfg.GADGET) == [(0, 0)]


@pytest.mark.parametrize("preset", HVCI)
def test_bitmap_variant_is_a_slat_refusal_where_the_sk_made_it_read_only(preset: str) -> None:
    result, ctx = run(d9.D9_BITMAP, preset)
    assert result.outcome is Outcome.BLOCKED == result.expected
    assert result.mechanism == "slat"
    assert ctx.notes["bitmap"] is None  # the write never completed
    [crash] = ctx.crashes
    assert (crash.vtl, crash.code) == (0, int(BugCheck.KMODE_EXCEPTION_NOT_HANDLED))
    assert "replaced" not in ctx.notes and not runs(ctx, kcfg.GADGET)


def test_kcfg_checks_only_that_the_target_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redirect to a *valid* target (ZwFlushInstructionCache, an export of ntoskrnl, the
    routine of the public SeCiCallbacks swap) passes under HVCI: no bugcheck, the process is
    created.  What stops D9 is the target's absence from the bitmap."""
    monkeypatch.setattr(kcfg, "GADGET", drivers.ZW_FLUSH_INSTRUCTION_CACHE)
    _, ctx = run(d9.D9, "vbs-hvci")
    assert ctx.notes["replaced"] and ctx.notes["victim"] and not ctx.crashes


def test_without_the_redirect_the_gadget_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The goal is not a constant: leaving the pointer alone leaves the EDR's routine called."""
    monkeypatch.setattr(d9, "_redirect", lambda cpu, modules, array, name, gadget: 0)
    result, ctx = run(d9.D9, "vbs-off")
    assert result.outcome is Outcome.BLOCKED
    assert ctx.notes["victim"] and not runs(ctx, kcfg.GADGET)
