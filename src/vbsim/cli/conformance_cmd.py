"""``vbsim conformance [CASE ...] [--profile hyperv|openhcl] [--list] [--json]``.

Runs the TLFS conformance cases (:mod:`vbsim.conformance`) against the model and prints a
pass/fail table that names, for each case, the upstream test it mirrors (kvm-unit-tests
``x86/hyperv_vsm.c``, OpenVMM OpenTMK / ``hv1_hypercall``, or the TLFS page).  Exit status: 0 when
every case passed, 1 when one failed, 2 for bad usage (an unknown case or profile).
"""

from __future__ import annotations

import json
from typing import Annotated, NoReturn

import typer

from vbsim.conformance import runner
from vbsim.conformance.cases import CASES
from vbsim.conformance.harness import using_profile
from vbsim.hv import profile as hv_profile


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


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
            print(json.dumps({"cases": rows}))
        else:
            for row in rows:
                print(f"{row['id']:<28} {row['source']}"[: runner.WIDTH])
        return
    try:
        selected = runner.select(cases or None)
    except KeyError as error:
        _error(str(error.args[0]))
    with using_profile(hv_profile.PROFILES[profile]):
        results = [runner.run_case(case) for case in selected]
    failed = any(r.outcome != runner.PASS for r in results)
    if as_json:
        print(
            json.dumps(
                {
                    "profile": profile,
                    "passed": sum(r.outcome == runner.PASS for r in results),
                    "failed": sum(r.outcome != runner.PASS for r in results),
                    "results": [r.as_dict() for r in results],
                }
            )
        )
    else:
        print(runner.table(results))
    if failed:
        raise typer.Exit(1)
