"""``vbsim soak [--programs N] [--preset P]``: random attacker programs with the monitor on.

Prints what ran (programs, actions, invariant checks), what broke (violations and escaped
Python exceptions, both must be 0) and the throughput.  Exit status: 0 when nothing broke, 1 when
something did (each finding is printed with its program, ready to paste into
``tests/invariants/regressions.py``), 2 for bad usage.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, NoReturn

import typer
from rich.console import Console

VBS_PRESETS = ("vbs", "vbs-hvci", "hardened", "legacy-2019")


def _error(message: str, code: int = 2) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def soak(
    programs: Annotated[
        int, typer.Option("--programs", "-n", min=1, help="Programs to run.")
    ] = 1000,
    preset: Annotated[str, typer.Option("--preset", "-p", help="A preset with VBS.")] = "hardened",
    max_actions: Annotated[
        int, typer.Option(min=1, max=1000, help="Actions per program (at most).")
    ] = 50,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", help="U0, A0, K0 or PHYS (repeat; default: all)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, max=64, help="Processes (0: one per CPU, at most 4).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the program generator.")] = 0,
    ram_mib: Annotated[
        int | None, typer.Option(min=16, max=65536, help="Guest RAM (default: the preset's).")
    ] = None,
    include_known_bugs: Annotated[
        bool, typer.Option(help="Keep actions that reach known model bugs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run random attacker programs under the isolation monitor and summarise."""
    from vbsim.invariants.attacker import CAPABILITIES
    from vbsim.invariants.soak import format_report
    from vbsim.invariants.soak import soak as run_soak
    from vbsim.policy import PolicyError
    from vbsim.policy import preset as get_preset

    if preset not in VBS_PRESETS:
        _error(f"the soak needs a preset with VBS ({', '.join(VBS_PRESETS)}), not {preset!r}")
    try:
        policy = get_preset(preset)
    except PolicyError as error:
        _error(str(error))
    if ram_mib is not None:
        policy = policy.with_changes(ram_mib=ram_mib)
    capabilities = tuple(capability or CAPABILITIES)
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        _error(f"unknown capability {unknown[0]!r} (known: {', '.join(CAPABILITIES)})")
    count = workers or max(1, min(4, os.cpu_count() or 1))
    report = run_soak(
        policy,
        programs,
        max_actions=max_actions,
        seed=seed,
        workers=count,
        capabilities=capabilities,
        include_known=include_known_bugs,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        Console(highlight=False, soft_wrap=True).print(format_report(report), markup=False)
    if not report.ok:
        raise typer.Exit(1)
