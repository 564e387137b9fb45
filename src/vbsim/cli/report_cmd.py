"""``vbsim report [--preset P ...] [-o report.html]``: one self-contained HTML page.

The page (inline CSS and SVG, no scripts to run and nothing fetched; it opens from disk) shows the
machine, the boot chain, VTL0's memory map, the live access matrix and the attack catalogue with a
sequence diagram per run, for each preset asked for (all five by default).

Exit status: 0 when the page was written, 2 for bad input (an unknown preset, an output path that
cannot be written), 1 for an unexpected failure (reported on one line, without a traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from vbsim.cli.output import json_text, path_arg


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


def _check_output(output: Path) -> Path:
    from vbsim.cli.output import OutputError, check_output

    try:
        return check_output(output, "report.html")
    except OutputError as error:
        _error(str(error))


def _write(output: Path, html: str) -> None:
    from vbsim.cli.output import write_atomically

    write_atomically(output, html.encode("utf-8"))


def report(
    preset: Annotated[
        list[str] | None,
        typer.Option(
            "--preset",
            "-p",
            metavar="NAME",
            help="A preset to include (repeat for several; default: all five).",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE", help="The HTML file to write.", parser=path_arg
        ),
    ] = Path("report.html"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON.")
    ] = False,
) -> None:
    """Write one self-contained HTML page: boot chain, memory, matrix, attacks, their diagrams."""
    from vbsim.policy import PRESETS, PolicyError
    from vbsim.report.data import validate_presets
    from vbsim.text import path_text, visible

    unknown = [p for p in preset or [] if p not in PRESETS]
    if unknown:  # named as typed, quoted: an empty name shows as ''
        _error(f"unknown preset(s) {', '.join(map(repr, unknown))} (known: {', '.join(PRESETS)})")

    try:
        presets = validate_presets(preset)
    except PolicyError as error:
        _error(str(error))
    output = _check_output(output)
    try:
        from vbsim.attacks.catalogue import SCENARIOS
        from vbsim.cli.render import progress_bar
        from vbsim.report import build_report

        total = len(presets) * (1 + len(SCENARIOS))
        with progress_bar("report", total, not as_json) as advance:
            built = build_report(presets, progress=advance)
    except Exception as error:  # never a traceback: a vbsim bug is reported on one line
        from vbsim.cli.errors import data_dir_problem

        problem = data_dir_problem(error)
        if problem is not None:
            _error(problem)
        text = str(error).splitlines()[0] if str(error) else ""
        _error(f"vbsim internal error: {type(error).__name__}: {text}", code=1)
    try:
        _write(output, built.html)
    except OSError as error:
        _error(f"output {path_text(output)!r}: cannot write it ({error.strerror or error})")
    data = built.data
    runs = sum(1 for r in data.runs.values() if r.diagram is not None)
    if as_json:
        summary = {
            "output": path_text(output),
            "bytes": built.size,
            "presets": presets,
            "scenarios": len(data.scenarios),
            "runs_drawn": runs,
            "seconds": round(built.seconds, 3),
        }
        print(json_text(summary))
        return
    Console(highlight=False, soft_wrap=True).print(
        f"wrote {visible(path_text(output))} ({built.size / 1e6:.2f} MB): "
        f"{len(presets)} preset(s), "
        f"{len(data.scenarios)} scenarios, {runs} runs drawn, in {built.seconds:.1f} s",
        markup=False,
    )
