"""``vbsim conformance [CASE ...] [--profile hyperv|openhcl] [--list] [--json]``.

Runs the TLFS conformance cases (:mod:`vbsim.conformance`) against the model and prints a
pass/fail table that names, for each case, the upstream test it mirrors (kvm-unit-tests
``x86/hyperv_vsm.c``, OpenVMM OpenTMK / ``hv1_hypercall``, or the TLFS page).  Exit status: 0 when
every case passed, 1 when one failed, 2 for bad usage (an unknown case or profile).
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from vbsim.cli.output import json_text, print_json
from vbsim.conformance import runner
from vbsim.conformance.cases import CASES
from vbsim.conformance.harness import using_profile
from vbsim.hv import profile as hv_profile


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


def screen_width() -> int:
    """The terminal's width (``COLUMNS``; 80 when not a terminal), at least 40."""
    from rich.console import Console

    return max(40, Console().width)


def case_list(rows: list[dict[str, str]], width: int) -> str:
    """``--list``: id, area and upstream source, one case a row; ids whole, the source wrapped
    at spaces in what is left of ``width`` (a longer word breaks after a ``.`` or ``_``)."""
    import textwrap

    from vbsim.cli.render import wrap_names

    id_width = max([len("case"), *(len(r["id"]) for r in rows)])
    area_width = max([len("area"), *(len(r["area"]) for r in rows)])
    indent = " " * (id_width + 2 + area_width + 2)
    room = max(20, width - len(indent))
    lines = [f"{'case':<{id_width}}  {'area':<{area_width}}  upstream source"]
    for row in rows:
        source = textwrap.wrap(
            row["source"], room, break_long_words=False, break_on_hyphens=False
        ) or [""]
        source = [part for line in source for part in wrap_names(line, room).splitlines()]
        lines.append(f"{row['id']:<{id_width}}  {row['area']:<{area_width}}  {source[0]}")
        lines.extend(indent + more for more in source[1:])
    lines.append(f"{len(rows)} cases; run some with 'vbsim conformance ID ...'")
    return "\n".join(lines)


def conformance(
    cases: Annotated[
        list[str] | None, typer.Argument(help="Case ids to run (default: all).")
    ] = None,
    list_cases: Annotated[bool, typer.Option("--list", help="List the cases and exit.")] = False,
    profile: Annotated[
        str, typer.Option(help="Status profile the hypervisor follows: hyperv or openhcl.")
    ] = "hyperv",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run the VSM conformance suite (kvm-unit-tests hyperv_vsm / OpenTMK style)."""
    if profile not in hv_profile.PROFILES:
        _error(f"unknown profile {profile!r} (known: {', '.join(hv_profile.PROFILES)})")
    if list_cases:
        rows = [{"id": c.id, "area": c.area, "source": c.source} for c in CASES]
        if as_json:
            print_json({"cases": rows})
        else:
            print(case_list(rows, screen_width()))
        return
    known = {c.id for c in CASES}
    missing = [c for c in cases or [] if c not in known]
    if missing:  # quoted as typed: an empty id shows as ''
        _error(
            f"unknown conformance case(s) {', '.join(map(repr, missing))}; "
            "'vbsim conformance --list' lists them"
        )
    selected = runner.select(cases or None)
    with using_profile(hv_profile.PROFILES[profile]):
        results = [runner.run_case(case) for case in selected]
    failed = any(r.outcome != runner.PASS for r in results)
    if as_json:
        print(
            json_text(
                {
                    "profile": profile,
                    "passed": sum(r.outcome == runner.PASS for r in results),
                    "failed": sum(r.outcome != runner.PASS for r in results),
                    "results": [r.as_dict() for r in results],
                }
            )
        )
    else:
        print(runner.table(results, screen_width()))
    if failed:
        raise typer.Exit(1)
