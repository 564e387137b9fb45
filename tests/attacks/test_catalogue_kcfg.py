"""D9 / D9-BITMAP / D9-REMAP: K0 redirects the EDR's process-notify routine to a signed
ntoskrnl routine that is no valid call target; kernel CFG decides the call where HVCI runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.attacks.catalogue import SCENARIOS, by_id
from vbsim.attacks.catalogue import d09_kcfg as d9
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import PRESET_ORDER, Outcome
from vbsim.attacks.runner import run
from vbsim.boot.chain import System
from vbsim.nt import drivers, kcfg
from vbsim.nt.layouts import KCFG_CONTROL, HostKernelView, kcfg_slot
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


# -- D9-REMAP: the bitmap page's VA pointed at an attacker copy ---------------------------------
def _bitmap_bit(ctx: AttackContext) -> tuple[bool, bool]:
    """(the gadget's bit as NT's translation of the bitmap VA reads it now, the bit in the
    bitmap's own frame): a debugger's two reads, through NT's tables and at the GPA the SK
    protects."""
    system: System = ctx.booted
    nt = system.nt
    assert nt is not None and system.machine is not None
    kernel = HostKernelView(system.machine.ram, nt.space.root)
    control = nt.variables[kcfg.GUARD_ICALL_BITMAP].va
    bitmap = kernel.read_u64(control + KCFG_CONTROL.GuardIcallBitmap.offset)
    slot = kcfg_slot(nt.space.routines[kcfg.GADGET])
    assert bitmap and slot is not None
    through_nt = kernel.read_u64(bitmap + slot[0]) >> slot[1] & 1
    frame = ctx.notes["old_pte"] & 0x000F_FFFF_FFFF_F000  # the PTE the step replaced
    word = frame | (bitmap + slot[0]) & 0xFFF
    own = int.from_bytes(system.machine.ram.read(word, 8), "little") >> slot[1] & 1
    return bool(through_nt), bool(own)


def test_d9_remap_expectations_follow_hvpt() -> None:
    assert by_id("D9-REMAP") is d9.D9_REMAP
    blocked = {p for p, o in d9.D9_REMAP.expected.items() if o is Outcome.BLOCKED}
    assert set(d9.D9_REMAP.expected) == set(PRESET_ORDER) and blocked == {"hardened"}
    assert "MS-HVPT" in d9.D9_REMAP.expected_why


def test_remap_under_hvci_without_hvpt_passes_the_gadget_through_the_copy() -> None:
    """vbs-hvci: the bitmap's frame is untouched and read-only, but NT's PTE now names the
    attacker's copy, so the check NT makes through that VA passes the gadget."""
    result, ctx = run(d9.D9_REMAP, "vbs-hvci")
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert ctx.notes["bitmap"] == "remapped"
    assert _bitmap_bit(ctx) == (True, False)  # the copy has the bit; the real bitmap does not
    assert runs(ctx, kcfg.GADGET) == [(0, 0)] and not ctx.crashes


def test_remap_under_hvpt_is_ignored_and_kcfg_bugchecks() -> None:
    result, ctx = run(d9.D9_REMAP, "hardened")
    assert result.outcome is Outcome.BLOCKED == result.expected
    assert result.mechanism == "kcfg" and ctx.notes["bitmap"] == "remapped"
    [crash] = ctx.crashes
    assert (crash.vtl, crash.code) == (0, int(BugCheck.KERNEL_SECURITY_CHECK_FAILURE))
    assert crash.parameters[1] == 10 and not runs(ctx, kcfg.GADGET)


def test_what_stops_the_remap_on_hardened_is_hvpt(preset_variant: Callable[..., str]) -> None:
    """The same preset with HVPT off: the remap works, as on vbs-hvci."""
    result, ctx = run(d9.D9_REMAP, preset_variant("hardened", hvpt=False))
    assert result.outcome is Outcome.SUCCEEDED
    assert runs(ctx, kcfg.GADGET) == [(0, 0)] and not ctx.crashes


@pytest.mark.parametrize("preset", NO_HVCI)
def test_remap_finds_no_bitmap_where_kcfg_is_not_fully_on(preset: str) -> None:
    result, ctx = run(d9.D9_REMAP, preset)
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert ctx.notes["bitmap"] == "no-bitmap" and runs(ctx, kcfg.GADGET) == [(0, 0)]
