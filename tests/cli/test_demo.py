"""``vbsim demo``: about two screens at 100 columns, nothing cut, every claim computed."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from vbsim import demo
from vbsim.attacks.model import Outcome, RunResult
from vbsim.cli.main import app


def _result(scenario: str, preset: str, outcome: Outcome, mechanism: str = "-") -> RunResult:
    return RunResult(scenario, f"attack {scenario}", "K0", preset, outcome, outcome, mechanism, "")


def test_the_tour_fits_100_columns_and_tells_only_what_ran() -> None:
    out = io.StringIO()
    code = demo.run(Console(file=out, width=100, highlight=False))
    text = out.getvalue()
    lines = text.splitlines()
    assert code == 0
    assert all(len(line) <= 100 for line in lines)
    assert "…" not in text and "*" not in text  # nothing cut, no literal markdown
    assert len(lines) <= 82  # about two 100x40 screens (261 lines before issue 12, then 95)
    # Boot steps in trace order: the SK's phase 1 comes before NT's phase 0 and the boot's end.
    order = [line.split()[1] for line in lines if line.startswith(("winload", "nt ", "secure"))]
    assert order.index("sk-phase1") < order.index("nt-phase0") < order.index("boot")
    # Every Secure Boot row names its component, in the step's name.
    for component in ("hvix64.exe", "ntoskrnl.exe", "securekernel.exe"):
        assert f"secureboot {component} " in text
    # The matrix folds R, W and X into one line where they agree, and everything shown is keyed.
    assert "RWX no slat" in text and "+PTE RWX no slat" in text
    key = text[text.index("Key: ") :]
    for word in ("K0 =", "PHYS =", "slat =", "paging.us =", "cpl:#UD =", "sysret =", "SK ="):
        assert word in key, word
    assert "vbsim report" in text and "vbsim attacks" in text


def test_the_conclusion_is_computed_from_the_verdicts() -> None:
    tour = demo.Tour(
        results=[
            _result("X1", "vbs-off", Outcome.SUCCEEDED),
            _result("X1", "hardened", Outcome.BLOCKED, "slat"),
            _result("X2", "vbs-off", Outcome.SUCCEEDED),
            _result("X2", "hardened", Outcome.SUCCEEDED),
        ]
    )
    tour.stopped = [tour.results[1]]
    tour.still = [tour.results[3]]
    first, second = demo.conclusion(tour)
    assert first.startswith("Of the 2 attacks that succeed without VBS, 'hardened' stopped 1")
    assert "slat (1)" in first
    assert "1 still succeed on 'hardened' (X2)" in second
    assert second.endswith("See one: 'vbsim attack X2 --preset hardened --trace'.")
    tour.still = []
    assert len(demo.conclusion(tour)) == 1


def test_demo_json() -> None:
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["boot"][0]["who"] == "firmware"
    assert data["differ_from_record"] == []
    assert set(data["stopped_by_vbs"]).isdisjoint(data["still_succeed_hardened"])


def test_the_tour_fits_80_columns_without_cuts() -> None:
    out = io.StringIO()
    demo.run(Console(file=out, width=80, highlight=False))
    text = out.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    # A mechanism too long for a narrow cell is a numbered note, spelled out in the key.
    assert "[1] " in text and "RWX no [1]" in text


def test_attacks_against_vbs_itself_are_counted_apart() -> None:
    tour = demo.Tour(
        results=[
            _result("X1", "vbs-off", Outcome.SUCCEEDED),
            _result("X1", "hardened", Outcome.SUCCEEDED),
            _result("X2", "vbs-off", Outcome.NOT_APPLICABLE),
            _result("X2", "hardened", Outcome.SUCCEEDED),
        ]
    )
    tour.still = [tour.results[1], tour.results[3]]
    first, second, third = demo.conclusion(tour)
    assert first.startswith("Of the 1 attacks that succeed without VBS, 'hardened' stopped 0")
    assert second.startswith("1 still succeed on 'hardened' (X1)")
    assert third.startswith("1 more need VBS to exist and succeed against it on 'hardened' (X2)")
