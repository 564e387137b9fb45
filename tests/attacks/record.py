"""What the catalogue tests share: one cached run per (scenario, preset), and the parameter list
of "this scenario under this preset gives the public record's outcome" cases."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import PRESET_ORDER, RunResult, Scenario
from vbsim.attacks.runner import run


@functools.cache
def run_once(scenario_id: str, preset: str) -> tuple[RunResult, AttackContext]:
    """The scenario run under the preset, once per test session (runs are deterministic)."""
    scenario = by_id(scenario_id)
    assert scenario is not None, scenario_id
    return run(scenario, preset)


def record_cases(scenarios: Iterable[Scenario], gaps: Mapping[tuple[str, str], str]) -> list[Any]:
    """One case per scenario and preset; a known model gap is a strict xfail with its reason."""
    cases = []
    for scenario in scenarios:
        for preset in PRESET_ORDER:
            gap = gaps.get((scenario.id, preset))
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            cases.append(pytest.param(scenario, preset, marks=marks, id=f"{scenario.id}-{preset}"))
    return cases
