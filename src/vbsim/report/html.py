"""The report page: Jinja2 (autoescaped) around the SVG pictures of :mod:`vbsim.report.draw`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

import vbsim
from vbsim.attacks.matrix import AREAS, OPS, Cell
from vbsim.attacks.model import Outcome
from vbsim.report import draw
from vbsim.report.data import PresetData, ReportData, RunData, scenario_anchor
from vbsim.report.sequence import LANE_TITLES
from vbsim.report.svg import render

_ENV: jinja2.Environment | None = None


def break_points(text: str) -> list[str]:
    """``text`` cut after ``:``, ``=``, ``.`` and ``_``: the template puts ``<wbr>`` between the
    parts so a long mechanism name wraps there, not in the middle of a word."""
    return [part for part in re.split(r"(?<=[:=._])", text) if part]


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.PackageLoader("vbsim.report", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters["break_points"] = break_points
    return _ENV


# -- view models ---------------------------------------------------------------------------------
@dataclass
class OpView:
    op: str
    result: str  # allowed | blocked | -
    mechanism: str

    @property
    def mark(self) -> str:
        return {"allowed": "✓", "blocked": "✗"}.get(self.result, "–")


@dataclass
class OpGroup:
    """Operations with the same result and mechanism, shown on one line."""

    ops: list[str]
    result: str
    mechanism: str

    @property
    def mark(self) -> str:
        return {"allowed": "✓", "blocked": "✗"}.get(self.result, "–")


@dataclass
class CellView:
    source: str
    target: str
    css: str  # allowed | blocked | mixed | na
    summary: str
    ops: list[OpView]

    @property
    def groups(self) -> list[OpGroup]:
        groups: dict[tuple[bool, str, str], OpGroup] = {}
        for op in self.ops:
            key = (op.op.startswith(GRANTED), op.result, op.mechanism)
            if key in groups:
                groups[key].ops.append(op.op)
            else:
                groups[key] = OpGroup([op.op], op.result, op.mechanism)
        return list(groups.values())


#: The label of what a user prober did through a PTE its own kernel granted (see the matrix).
GRANTED = "via its kernel's PTE:"


def _shown(op: str, result: str, mechanism: str) -> str:
    """Refusals name what refused and an allowed call its gate; an allowed access is just ✓
    (the JSON keeps the translation that served it)."""
    return "-" if result == "allowed" and op != "call" else mechanism


def cell_view(cell: Cell) -> CellView:
    ops = [
        OpView(op, r, _shown(op, r, cell.mechanisms.get(op, "-")))
        for op in OPS
        for r in [cell.results.get(op, "-")]
    ]
    # Through a PTE the prober's own kernel granted (user rows, the other VTL's pages): shown
    # after the prober's own attempts; the cell's colour and summary stay those of the latter.
    granted: dict[tuple[str, str], list[str]] = {}
    for op, r in cell.granted.items():
        granted.setdefault((r, _shown(op, r, cell.granted_mechanisms.get(op, "-"))), []).append(op)
    extra = [OpView(f"{GRANTED} {', '.join(names)}", r, m) for (r, m), names in granted.items()]
    results = {o.result for o in ops if o.result != "-"}
    if not results:
        css = "na"
    elif results == {"allowed"}:
        css = "allowed"
    elif results == {"blocked"}:
        css = "blocked"
    else:
        css = "mixed"
    summary = {
        "allowed": "reaches it",
        "blocked": "blocked",
        "mixed": "partly",
        "na": "n/a",
    }[css]
    if css == "na":
        reasons = {o.mechanism for o in ops}
        summary = reasons.pop() if len(reasons) == 1 else "n/a"
    return CellView(cell.source, cell.target, css, summary, ops + extra)


@dataclass
class MemoryRow:
    first: str
    last: str
    pages: int
    size: str
    rights: str
    rights_colour: str
    owner: str
    role: str
    role_colour: str


@dataclass
class PresetView:
    name: str
    description: str
    halted: str | None
    vbs_running: bool
    machine: Markup
    memory: Markup
    memory_rows: list[MemoryRow]
    boot: Markup
    chain_len: int
    matrix: list[list[CellView]]
    processes: int
    trustlets: int


def preset_view(p: PresetData) -> PresetView:
    rows = [
        MemoryRow(
            f"0x{run.first_gpa:09x}",
            f"0x{run.first_gpa + run.pages * 4096 - 1:09x}",
            run.pages,
            draw.size_text(run.pages << 12),
            run.rights_text,
            draw.rights_colour(run.rights_text),
            run.owner,
            draw.role(run.owner),
            draw.role_colour(draw.role(run.owner)),
        )
        for run in p.memory
    ]
    by_pair = {(c.source, c.target): c for c in p.matrix}
    matrix = [[cell_view(by_pair.get((s, t), Cell(s, t))) for t in AREAS] for s in AREAS]
    return PresetView(
        name=p.name,
        description=p.policy.description,
        halted=p.halted,
        vbs_running=p.vbs_running,
        machine=render(draw.machine_svg(p)),
        memory=render(draw.memory_svg(p)),
        memory_rows=rows,
        boot=render(draw.boot_svg(p)),
        chain_len=len(p.chain),
        matrix=matrix,
        processes=len(p.processes),
        trustlets=len(p.trustlets),
    )


@dataclass
class RunView:
    preset: str
    anchor: str
    outcome: str
    expected: str
    matches: bool
    mechanism: str
    detail: str
    diagram: Markup | None
    events: int
    filtered: int
    elided: int
    drawn: int
    decisive_seq: int | None
    note: str


def run_view(run: RunData) -> RunView:
    result = run.result
    d = run.diagram
    return RunView(
        preset=result.preset,
        anchor=run.anchor,
        outcome=str(result.outcome),
        expected=str(result.expected),
        matches=result.matches,
        mechanism=result.mechanism,
        detail=result.detail,
        diagram=render(draw.sequence_svg(d)) if d is not None else None,
        events=d.events if d else 0,
        filtered=d.filtered if d else 0,
        elided=d.elided if d else 0,
        drawn=sum(len(s.seqs) for s in d.steps if not s.elided) if d else 0,
        decisive_seq=d.decisive_seq if d else None,
        note=d.note if d else "",
    )


def outcome_css(outcome: str) -> str:
    return {
        str(Outcome.BLOCKED): "blocked",
        str(Outcome.SUCCEEDED): "succeeded",
        str(Outcome.NOT_APPLICABLE): "na",
    }.get(outcome, "na")


def context(data: ReportData) -> dict[str, Any]:
    names = data.preset_names
    runs = {key: run_view(run) for key, run in data.runs.items()}
    scenarios = [
        {
            "id": s.id,
            "title": s.title,
            "capability": str(s.capability),
            "goal": s.goal,
            "source": s.source,
            "why": s.expected_why,
            "anchor": scenario_anchor(s.id),
            "runs": [runs[(s.id, n)] for n in names],
        }
        for s in data.scenarios
    ]
    totals = {
        name: {
            kind: sum(
                1
                for r in data.runs.values()
                if r.result.preset == name and str(r.result.outcome) == kind
            )
            for kind in ("blocked", "succeeded", "n/a")
        }
        for name in names
    }
    return {
        "version": vbsim.__version__,
        "presets": [preset_view(p) for p in data.presets],
        "preset_names": names,
        "scenarios": scenarios,
        "totals": totals,
        "mismatches": data.mismatches,
        "rights_legend": draw.rights_legend(data.presets),
        "owner_legend": draw.owner_legend(data.presets),
        "areas": AREAS,
        "ops": OPS,
        "defs": render(draw.defs_svg()),
        "data": data.to_json(),
        "outcome_css": outcome_css,
        "lane_titles": LANE_TITLES,
    }


def render_report(data: ReportData) -> str:
    return environment().get_template("report.html.j2").render(**context(data))
