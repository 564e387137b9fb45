"""A8-LIVEDUMP: pool shaping, then LIVEDUMP_ADD_BUFFER one slot past its context, then a fill of
the allocation whose VA and size the descriptor replaced (issue 11 item 12: the published chain's
write primitive)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.attacks.record import record_cases, run_once

from vbsim.attacks.catalogue import a03_a14_memory_code_dma as mcd
from vbsim.attacks.catalogue import a08_livedump as livedump
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Outcome, Scenario
from vbsim.attacks.runner import run
from vbsim.policy import Legacy
from vbsim.sk.layouts import LiveDump, ObjectPool, SecureAllocation
from vbsim.trace import Event

SCENARIOS: list[Scenario] = list(livedump.SCENARIOS)


def _events(ctx: AttackContext, mechanism: str, outcome: str = "") -> list[Event]:
    return [
        e
        for e in ctx.trace.events[ctx.attack_start :]
        if e.mechanism == mechanism and (not outcome or e.outcome == outcome)
    ]


@pytest.mark.parametrize(("scenario", "preset"), record_cases(SCENARIOS, {}))
def test_outcome_matches_public_record(scenario: Scenario, preset: str) -> None:
    result, _ = run_once(scenario.id, preset)
    assert result.outcome == scenario.expected[preset], (result.mechanism, result.detail)


def test_the_slot_past_the_context_is_the_next_pool_block() -> None:
    assert LiveDump.BUFFERS + LiveDump.SLOTS * LiveDump.ENTRY == ObjectPool.BLOCK
    assert (SecureAllocation.VA.offset, SecureAllocation.SIZE.offset) == (
        LiveDump.START_VA.offset,
        LiveDump.BYTE_COUNT.offset,
    )


@pytest.mark.parametrize("preset", ["vbs", "vbs-hvci", "hardened"])
def test_the_fixed_sk_refuses_the_slot_and_the_fill_stays_in_the_allocation(preset: str) -> None:
    _, ctx = run_once("A8-LIVEDUMP", preset)
    [refused] = _events(ctx, "livedump.buffer", "refused")
    assert refused.detail["reason"] == "slot" and refused.detail["slot"] == LiveDump.SLOTS
    assert not _events(ctx, "livedump.buffer", "added")
    assert not mcd.sk_records_forged(ctx)


def test_the_legacy_sk_writes_the_descriptor_over_the_next_block() -> None:
    """The descriptor lands exactly one block after the context (the shaped allocation's body),
    the fill is accepted by the forged size and writes HVCI's records."""
    _, ctx = run_once("A8-LIVEDUMP", "legacy-2019")
    [added] = _events(ctx, "livedump.buffer", "added")
    created = [e for e in _events(ctx, "securecall.allocation", "created")]
    assert added.detail["slot"] == LiveDump.SLOTS and created
    contexts = _events(ctx, "livedump.context", "created")
    assert len(contexts) == livedump.SPRAY + 1
    assert mcd.sk_records_forged(ctx)
    [filled] = _events(ctx, "securecall.mdl", "filled")
    assert filled.detail["byte_count"] == mcd.FORGED_LENGTH


def test_with_hvci_and_the_legacy_switch_unsigned_code_runs(
    preset_variant: Callable[..., str],
) -> None:
    """Build B (its own LIVEDUMP numbers) with the unfixed SK and HVCI: the forged record makes
    the SK grant KX to the attacker's patched page, and the shellcode runs in VTL0 ring 0; with
    only the double-fetch switch (the fill's own checks intact, the slot unchecked only by the
    legacy switch) nothing happens."""
    name = preset_variant("hardened", legacy=Legacy(unchecked_securecall_params=True))
    result, ctx = run(livedump.A8_LIVEDUMP, name)
    assert result.outcome is Outcome.SUCCEEDED and ctx.notes["follow_on"] == "ran"
    assert (0, 0) in runs(ctx, mcd.A8_SHELLCODE)
    name = preset_variant("hardened", legacy=Legacy(securecall_double_fetch=True))
    result, ctx = run(livedump.A8_LIVEDUMP, name)
    assert result.outcome is Outcome.BLOCKED and result.mechanism == "livedump.buffer"
