"""Rendering catalogue runs: a rich table (scenario × preset) and JSON; one run with its trace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vbsim.attacks.model import Outcome, RunResult
from vbsim.cli.render import trace_table
from vbsim.trace import Event

_STYLE = {Outcome.BLOCKED: "green", Outcome.SUCCEEDED: "red", Outcome.NOT_APPLICABLE: "dim"}


def catalogue_json(results: list[RunResult]) -> dict[str, Any]:
    return {"results": [r.to_json() for r in results]}


#: How an outcome reads in the catalogue grid (``succeeded`` is the widest word, 9 columns).
_WORD = {Outcome.BLOCKED: "blocked", Outcome.SUCCEEDED: "succeeded", Outcome.NOT_APPLICABLE: "n/a"}


@dataclass
class CatalogueView:
    """The grid, then the prose and the notes that did not fit into it (printed below)."""

    table: Table
    titles: list[str]
    notes: list[str]
    mismatches: list[str]

    def print(self, out: Console) -> None:
        out.print(self.table)
        out.print("[bold]attacks[/]: " + "; ".join(escape(t) for t in self.titles) + ".")
        if self.notes:
            out.print("[bold]deciding checks too long for their column[/]:")
            for note in self.notes:
                out.print(escape(note))
        for line in self.mismatches:
            out.print(f"[reverse]differs from the public record[/]: {escape(line)}")


def catalogue_table(
    results: list[RunResult], presets: list[str], width: int = 100
) -> CatalogueView:
    """Scenario × preset at ``width`` columns without cutting an id, a mechanism or a number:
    short columns (id, attacker, one per preset), a mechanism longer than its column replaced by
    a numbered note written out in full below the grid, the titles (prose) listed after it."""
    rows: dict[str, dict[str, RunResult]] = {}
    for result in results:
        rows.setdefault(result.id, {})[result.preset] = result
    id_width = max([2, *(len(i) for i in rows)])
    has_width = max([3, *(len(r.capability) for r in results)])
    # Columns are separated by one space (no box): what is left is shared by the presets.
    share = (width - id_width - has_width - len(presets) - 2) // max(1, len(presets))
    columns = {name: max(9, len(name), share) for name in presets}
    table = Table(
        title="attack catalogue: outcome and deciding check per preset (! = differs from the "
        "public record)",
        header_style="bold",
        box=None,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    table.add_column("id", no_wrap=True, min_width=id_width)
    table.add_column("has", no_wrap=True)
    for name in presets:
        table.add_column(name, no_wrap=True, min_width=columns[name], max_width=columns[name])
    notes: list[str] = []
    numbered: dict[str, int] = {}
    titles = []
    mismatches: list[str] = []
    for scenario_id, by_preset in rows.items():
        first = next(iter(by_preset.values()))
        titles.append(f"{scenario_id} {first.title}")
        cells = []
        for name in presets:
            cell = by_preset.get(name)
            if cell is None:
                cells.append("")
                continue
            word = _WORD[cell.outcome] + ("" if cell.matches else "!")
            text = f"[{_STYLE[cell.outcome]}]{word}[/]"
            if cell.outcome is Outcome.BLOCKED and cell.mechanism != "-":
                mechanism = cell.mechanism
                if len(mechanism) > columns[name]:
                    number = numbered.setdefault(mechanism, len(numbered) + 1)
                    if number == len(numbered) and len(notes) < number:
                        notes.append(f"[{number}] {mechanism}")
                    mechanism = f"[{number}]"
                text += f"\n[dim]{escape(mechanism)}[/]"
            if not cell.matches:
                mismatches.append(
                    f"{scenario_id} on {name}: {cell.outcome}, record {cell.expected}"
                )
            cells.append(text)
        table.add_row(scenario_id, first.capability, *cells)
    return CatalogueView(table, titles, notes, mismatches)


def print_run(result: RunResult, events: list[Event], out: Console, show_trace: bool) -> None:
    style = _STYLE[result.outcome]
    # Details and mechanisms carry what guest code and files wrote (names, brackets): escaped.
    out.print(
        f"[bold]{escape(result.id)}[/] {escape(result.title)} — preset "
        f"[bold]{escape(result.preset)}[/], attacker {escape(str(result.capability))}"
    )
    out.print(
        f"outcome: [{style}]{result.outcome}[/] (public record: {escape(str(result.expected))}); "
        f"deciding check: {escape(str(result.mechanism))}"
    )
    if result.detail:
        out.print(f"detail: {escape(str(result.detail))}")
    out.print(f"source: {escape(result.source)}")
    if show_trace:
        interesting = [e for e in events if not (e.kind == "access" and e.outcome == "allowed")]
        out.print(trace_table(interesting, f"trace of the attack ({len(interesting)} events)"))
