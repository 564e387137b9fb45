"""Rendering catalogue runs: a rich table (scenario × preset) and JSON; one run with its trace."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vbsim.attacks.model import Outcome, RunResult
from vbsim.cli.render import trace_table
from vbsim.trace import Event

_STYLE = {Outcome.BLOCKED: "green", Outcome.SUCCEEDED: "red", Outcome.NOT_APPLICABLE: "dim"}


def catalogue_json(results: list[RunResult]) -> dict[str, Any]:
    return {"results": [r.to_json() for r in results]}


def catalogue_table(results: list[RunResult], presets: list[str]) -> Table:
    table = Table(
        title="attack catalogue (outcome / deciding check; red border: differs from the "
        "public record)",
        header_style="bold",
        show_lines=True,
    )
    table.add_column("id")
    table.add_column("attack")
    table.add_column("has")
    for name in presets:
        table.add_column(name)
    rows: dict[str, dict[str, RunResult]] = {}
    for result in results:
        rows.setdefault(result.id, {})[result.preset] = result
    for scenario_id, by_preset in rows.items():
        first = next(iter(by_preset.values()))
        cells = []
        for name in presets:
            cell = by_preset.get(name)
            if cell is None:
                cells.append("")
                continue
            style = _STYLE[cell.outcome]
            text = f"[{style}]{cell.outcome}[/]"
            if cell.outcome is Outcome.BLOCKED and cell.mechanism != "-":
                text += f"\n[dim]{cell.mechanism}[/]"
            if not cell.matches:
                text = f"[reverse]{text}\n(expected {cell.expected})[/]"
            cells.append(text)
        table.add_row(scenario_id, first.title, first.capability, *cells)
    return table


def print_run(result: RunResult, events: list[Event], out: Console, show_trace: bool) -> None:
    style = _STYLE[result.outcome]
    out.print(
        f"[bold]{result.id}[/] {result.title} — preset [bold]{result.preset}[/], attacker "
        f"{result.capability}"
    )
    out.print(
        f"outcome: [{style}]{result.outcome}[/] (public record: {result.expected}); "
        f"deciding check: {result.mechanism}"
    )
    if result.detail:
        out.print(f"detail: {result.detail}")
    out.print(f"source: {result.source}")
    if show_trace:
        interesting = [e for e in events if not (e.kind == "access" and e.outcome == "allowed")]
        out.print(trace_table(interesting, f"trace of the attack ({len(interesting)} events)"))
