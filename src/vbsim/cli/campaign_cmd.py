"""``vbsim campaign show DIR``: what a campaign's results directory holds.

The manifest (what ran, where, when), the totals, and the failures grouped by invariant and
deciding step, each with its first program and its shrunk form ready to paste into
``tests/invariants/regressions.py``.  ``--json`` prints the summary as JSON.  Works on an
unfinished campaign too (the totals are then computed from the records kept so far).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from vbsim.cli.output import json_text, path_arg

app = typer.Typer(add_completion=False, help="Campaign results (soak and fuzz).")


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


def load_summary(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from vbsim.campaign.groups import group
    from vbsim.campaign.results import CampaignError, ResultsDir

    results = ResultsDir(directory)
    if not results.exists():
        _error(f"{str(directory)!r} holds no campaign (no manifest.json)")
    try:
        manifest = results.manifest()
        summary = results.summary()
        records = list(results.records())
    except CampaignError as error:
        _error(str(error))
    soak = manifest.get("kind") == "soak"
    planned = manifest.get("config", {}).get("programs")
    # an interrupted campaign writes its summary too: fewer programs than planned
    if soak and summary is not None and isinstance(planned, int):
        summary = {**summary, "unfinished": int(summary.get("programs", 0)) < planned}
    if summary is None and not soak:
        summary = {"unfinished": True, "iterations": sum(r.get("iterations", 0) for r in records)}
    if soak and (summary is None or summary.get("programs", 0) < len(records)):
        outcomes = Counter(r.get("outcome", "?") for r in records)
        summary = {
            "programs": len(records),
            "outcomes": dict(outcomes),
            "violations": outcomes["violation"],
            "escaped_exceptions": outcomes["exception"],
            "groups": [
                {
                    "key": g.key,
                    "count": g.count,
                    "first": g.first.get("index"),
                    "message": g.first.get("message"),
                    "shrunk": g.first.get("shrunk"),
                }
                for g in group(records)
            ],
            "unfinished": True,
        }
    assert summary is not None
    return manifest, summary


@app.command("show")
def show(
    directory: Annotated[
        Path, typer.Argument(help="A campaign's results directory.", parser=path_arg)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a campaign's manifest, totals and grouped failures."""
    from vbsim.text import path_text

    manifest, summary = load_summary(directory)
    if as_json:
        print(json_text({"manifest": manifest, "summary": summary}, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    config = manifest.get("config", {})
    lines = [
        f"{manifest.get('kind', '?')} campaign in {path_text(directory)}",
        f"  vbsim {manifest.get('vbsim')} (git {manifest.get('git') or 'unknown'}), "
        f"seed {manifest.get('seed')}, "
        + (
            f"target {manifest.get('target', '?')}"
            if manifest.get("kind") == "fuzz"
            else f"policy {config.get('policy', '?')}"
        ),
        f"  engine {manifest.get('engine')} with {manifest.get('workers')} worker(s)"
        + (
            f", {config['lanes']} lane(s)"
            if config.get("generator") == "guided" and "lanes" in config
            else ""
        )
        + f"; started {manifest.get('started')}, "
        + (
            f"stopped {manifest['ended']} before the end (unfinished)"
            if summary.get("unfinished") and "ended" in manifest
            else f"ended {manifest.get('ended', '(not yet)')}"
        ),
    ]
    if manifest.get("kind") == "fuzz":
        lines.append(
            f"  {summary.get('iterations', 0)} inputs, corpus {summary.get('corpus', 0)}, "
            f"{len(summary.get('crashes', []))} distinct crash(es)"
        )
        for crash in summary.get("crashes", []):
            lines.append(
                f"    {crash['count']:>5} x {crash['signature']}  ({crash['length']} bytes)"
            )
    else:
        planned = config.get("programs", "?")
        lines.append(
            f"  {summary.get('programs')} of {planned} programs"
            + (" (unfinished)" if summary.get("unfinished") else "")
            + f": {', '.join(f'{k} {v}' for k, v in sorted(summary.get('outcomes', {}).items()))}"
        )
        lines.append(
            f"  violations: {summary.get('violations')}, escaped exceptions: "
            f"{summary.get('escaped_exceptions')}, distinct: {len(summary.get('groups', []))}"
        )
        for entry in summary.get("groups", []):
            lines.append(f"\n  {entry['count']} x {entry['key']} (first: program {entry['first']})")
            lines.append(f"    {entry.get('message')}")
            if entry.get("shrunk"):
                lines.append("    shrunk, for tests/invariants/regressions.py:")
                lines.extend("      " + line for line in str(entry["shrunk"]).splitlines())
    from vbsim.text import visible

    # The directory's name and the manifest's fields are the user's (or a file's) text.
    text = "\n".join(visible(line) for entry in lines for line in str(entry).split("\n"))
    out.print(text, markup=False)
