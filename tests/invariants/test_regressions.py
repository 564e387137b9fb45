"""Replay every program kept in ``regressions.py`` on a fresh machine."""

from __future__ import annotations

import pytest

from vbsim.invariants import InvariantViolation
from vbsim.invariants.attacker import run_program
from vbsim.invariants.known_bugs import KNOWN_BUGS
from vbsim.policy import Legacy, preset

from .regressions import REGRESSIONS, Regression

_BUGS = {bug.key: bug for bug in KNOWN_BUGS}


def _cases() -> list[object]:
    cases: list[object] = []
    for regression in REGRESSIONS:
        marks = []
        if isinstance(regression.expect, str) and regression.expect.startswith("bug:"):
            key = regression.expect[4:]
            bug = _BUGS[key]
            reason = f"model bug {key}: {bug.summary}"
            marks.append(pytest.mark.xfail(strict=True, raises=bug.raises, reason=reason))
        cases.append(pytest.param(regression, id=regression.name, marks=marks))
    return cases


@pytest.mark.parametrize("regression", _cases())
def test_regression(regression: Regression) -> None:
    policy = preset(regression.preset)
    if regression.legacy:
        policy = policy.with_changes(legacy=Legacy(**regression.legacy))
    if isinstance(regression.expect, int):
        with pytest.raises(InvariantViolation) as caught:
            run_program(regression.program, policy)
        assert caught.value.violation.invariant == regression.expect
        return
    run_program(regression.program, policy)  # no violation, no exception


def test_every_known_bug_has_a_regression() -> None:
    pinned = {
        r.expect[4:] for r in REGRESSIONS if isinstance(r.expect, str) and r.expect[:4] == "bug:"
    }
    assert pinned == set(_BUGS)
