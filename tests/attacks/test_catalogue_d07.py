"""D7: K0 clears a secured VAD's NoChange bit; NT then permits the protection change."""

from __future__ import annotations

import pytest

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.catalogue import d07_vad as d7
from vbsim.attacks.model import PRESET_ORDER, Outcome
from vbsim.attacks.runner import run
from vbsim.hw.cpu import Cpu


def test_d7_is_in_the_catalogue_with_an_expectation_for_every_preset() -> None:
    assert by_id("D7") is d7.D7
    assert set(d7.D7.expected) == set(PRESET_ORDER)
    assert "not a record match" in d7.D7.expected_why


@pytest.mark.parametrize("preset", ["vbs-off", "hardened"])
def test_nt_refuses_then_permits_because_the_vad_in_ram_changed(preset: str) -> None:
    result, ctx = run(d7.D7, preset)
    assert result.outcome is Outcome.SUCCEEDED == result.expected
    assert ctx.notes["before"] == "STATUS_INVALID_PAGE_PROTECTION"
    assert ctx.notes["after"] == "STATUS_SUCCESS"
    assert ctx.notes["node"]  # the K0 walk found the VAD in the victim's tree
    refused = [e for e in ctx.trace.events[ctx.attack_start :] if e.mechanism == "vad"]
    assert refused and refused[0].detail["reason"] == "vad-no-change"


def test_without_the_k0_write_the_page_stays_secured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The goal is not a constant: a K0 step that finds the VAD but leaves it alone changes
    nothing, NT refuses the second attempt too, and the page keeps its bytes."""

    def look_only(vp: Cpu, head: int, pid: int, va: int) -> int:
        eprocess = d7.find_eprocess(vp, head, pid)
        return d7._find_vad(vp, eprocess, va) if eprocess else 0

    monkeypatch.setattr(d7, "_unsecure", look_only)
    result, ctx = run(d7.D7, "vbs")
    assert result.outcome is Outcome.BLOCKED
    assert ctx.notes["after"] == "STATUS_INVALID_PAGE_PROTECTION"
