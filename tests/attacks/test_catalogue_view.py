"""``vbsim attacks`` at 80, 100 and 160 columns: nothing cut, long checks as numbered notes."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from vbsim.attacks.model import PRESET_ORDER, Outcome, RunResult
from vbsim.attacks.report import catalogue_table

LONG = "hypercall:MODIFY_VTL_PROTECTION_MASK=access_denied"


def _results() -> list[RunResult]:
    out = []
    for scenario, mechanism in (("SEED-U0-SECURE-SYSCALL", LONG), ("A1", "slat")):
        for name in PRESET_ORDER:
            outcome = Outcome.NOT_APPLICABLE if name == "vbs-off" else Outcome.BLOCKED
            out.append(
                RunResult(scenario, "a title that is prose and may wrap " * 3, "K0", name,
                          outcome, outcome, mechanism, "")
            )  # fmt: skip
    out[-1] = RunResult("A1", "t", "K0", "legacy-2019", Outcome.SUCCEEDED, Outcome.BLOCKED, "-", "")
    return out


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_catalogue_fits_without_cutting(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, highlight=False)
    catalogue_table(_results(), list(PRESET_ORDER), width).print(console)
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines()), width
    assert "SEED-U0-SECURE-SYSCALL" in text and "legacy-2019" in text
    flat = text.replace("\n", "")
    assert LONG in flat  # written out in full, in a note or in its cell
    assert "succeeded!" in text  # a mismatch is marked in its cell and spelled out below
    assert "A1 on legacy-2019: succeeded, record blocked" in flat
