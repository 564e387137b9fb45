"""``vbsim report``: one self-contained HTML page (inline CSS and SVG, no network) with the
machine, its memory, the access matrix, the attack catalogue with a sequence diagram per run, and
the boot chain — drawn from the same data as the JSON outputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vbsim.report.data import ReportData, collect
from vbsim.report.sequence import DEFAULT_CAP

__all__ = ["Report", "build_report", "report_s", "write_report"]


@dataclass
class Report:
    html: str
    data: ReportData
    seconds: float

    @property
    def size(self) -> int:
        return len(self.html.encode())


def build_report(
    presets: Sequence[str] | None = None,
    cap: int = DEFAULT_CAP,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run everything the report shows (each scenario once per preset) and render the page."""
    from vbsim.report.html import render_report

    start = time.perf_counter()
    data = collect(presets, cap=cap, progress=progress)
    render_start = time.perf_counter()
    html = render_report(data)
    data.seconds["render"] = time.perf_counter() - render_start
    return Report(html, data, time.perf_counter() - start)


def write_report(path: Path, presets: Sequence[str] | None = None) -> Report:
    report = build_report(presets)
    path.write_text(report.html, encoding="utf-8")
    return report


def report_s() -> float:
    """``vbsim bench`` metric: seconds to build the whole report (all five presets), rendering
    included, writing excluded."""
    start = time.perf_counter()
    build_report()
    return time.perf_counter() - start
