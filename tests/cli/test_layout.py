"""Traces at 80, 100 and 160 columns: no mechanism, outcome, id or hex number cut (issue 12)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.report import print_run
from vbsim.attacks.runner import run
from vbsim.cli.render import describe_detail, trace_table


@pytest.mark.parametrize("width", [80, 100, 160])
@pytest.mark.parametrize(("scenario", "preset"), [("A1", "vbs"), ("A6-KDP", "hardened")])
def test_an_attack_trace_fits(scenario: str, preset: str, width: int) -> None:
    found = by_id(scenario)
    assert found is not None
    result, ctx = run(found, preset)
    events = ctx.trace.events[ctx.attack_start :]
    out = io.StringIO()
    print_run(result, events, Console(file=out, width=width, highlight=False), True)
    text = out.getvalue()
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines())
    # Every sequence number, mechanism and outcome is there whole.
    shown = [e for e in events if not (e.kind == "access" and e.outcome == "allowed")]
    for event in shown:
        assert re.search(rf"│ *{event.seq} │", text), event.seq
        assert f"{event.mechanism} → {event.outcome}" in " ".join(text.split()) or (
            event.mechanism in text and event.outcome in text
        )


def test_numbers_in_details_are_hex_and_lists_wrap() -> None:
    assert describe_detail({"params": [3221225622, 0], "vector": 13}) == (
        "params=[0xc0000096, 0] vector=0xd"
    )


def test_a_long_word_folds_inside_the_screen() -> None:
    from vbsim.trace import Trace

    trace = Trace(record=True)
    trace.emit("boot", "x" * 60, "done", actor="firmware", detail="y" * 90)
    out = io.StringIO()
    Console(file=out, width=80).print(trace_table(trace.events, "t", 80))
    assert all(len(line) <= 80 for line in out.getvalue().splitlines())
