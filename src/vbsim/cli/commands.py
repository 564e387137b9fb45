"""The ``vbsim`` commands (a Typer app); :mod:`vbsim.cli.main` is the entry that runs them."""

from __future__ import annotations

from typing import Annotated

import typer

from vbsim.cli.campaign_cmd import app as campaign_app
from vbsim.cli.conformance_cmd import conformance
from vbsim.cli.fuzz_cmd import fuzz
from vbsim.cli.help import HelpGroup
from vbsim.cli.help import install as install_help
from vbsim.cli.image_cmd import image_app
from vbsim.cli.output import json_text
from vbsim.cli.render import console, trace_table
from vbsim.cli.report_cmd import report
from vbsim.cli.sizes import parse_size, whole_number
from vbsim.cli.soak_cmd import soak
from vbsim.cli.trustlet_cmd import trustlet_app
from vbsim.policy import RAM_MIB_RANGE

app = typer.Typer(
    help="vbsim: an executable model of Windows Virtualization-Based Security.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Exit codes: 0 done; 1 a check failed (or a vbsim bug, or stdout cannot be written); "
    "2 bad input; 3 the machine refused to boot; 130 interrupted; 141 stdout closed.",
)
app.add_typer(image_app, name="image")
app.add_typer(trustlet_app, name="trustlet")
app.add_typer(campaign_app, name="campaign")
app.command("report")(report)
app.command("fuzz")(fuzz)
app.command("soak")(soak)
app.command("conformance")(conformance)


def _version(value: bool) -> None:
    if value:
        from vbsim import __version__

        print(f"vbsim {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """vbsim: an executable model of Windows Virtualization-Based Security."""


#: The smallest RAM the bare partition of ``vbsim machine`` boots in (its two kernels' page
#: tables, IDTs, parameter and log pages; measured: 256 KiB boots, 64 KiB does not).
MIN_MACHINE_RAM = 1 << 20
#: The largest: the model's stated maximum, a policy's largest machine (``ram_mib`` 65536).
MAX_MACHINE_RAM = RAM_MIB_RANGE[1] << 20


def _size(text: str) -> int:
    try:
        size = parse_size(text, MAX_MACHINE_RAM, "the model's maximum RAM")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if size < MIN_MACHINE_RAM:
        raise typer.BadParameter(f"size {text!r} is below the bare partition's minimum of 1M")
    return size


@app.command()
def machine(
    vps: Annotated[
        int, typer.Option(min=1, max=64, parser=whole_number(1, 64), help="Virtual processors.")
    ] = 1,
    ram: Annotated[
        str, typer.Option(metavar="SIZE", help="Guest RAM size, 1M to 64G, e.g. 64M, 1G.")
    ] = "1G",
    as_json: Annotated[bool, typer.Option("--json", help="Print events as JSON.")] = False,
    all_events: Annotated[
        bool, typer.Option("--all", help="Also show every allowed memory access.")
    ] = False,
) -> None:
    """Boot a bare partition, enable VTL1, let VTL1 protect a page and VTL0 touch it."""
    from vbsim.hw.ram import RamError
    from vbsim.scenarios import SECRET, protect_demo

    try:
        demo = protect_demo(ram_size=_size(ram), vps=vps)
    except RamError as error:
        raise typer.BadParameter(str(error)) from error
    events = [
        e for e in demo.events if all_events or not (e.kind == "access" and e.outcome == "allowed")
    ]
    if as_json:
        print(
            json_text(
                {
                    "vps": vps,
                    "ram": demo.machine.ram.size,
                    "page_gpa": demo.page_gpa,
                    "boot_failures": demo.boot_failures,
                    "leaked": demo.leaked,
                    "vtl0_outcome": demo.termination,
                    "events": [e.to_json() for e in events],
                }
            )
        )
        return
    out = console()
    out.print(
        trace_table(events, f"bare partition: {vps} VP(s), {demo.machine.ram.size >> 20} MiB")
    )
    out.print(f"VTL1 protected GPA 0x{demo.page_gpa:x} (status 0x{demo.protect_status:x}).")
    if demo.leaked:
        out.print("[bold red]VTL0 read the protected bytes: isolation FAILED[/]")
    else:
        out.print(
            f"VTL0's read of the page ended with: [bold]{demo.termination}[/]; "
            f"{len(SECRET)} secret bytes never reached VTL0."
        )


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    repeat: Annotated[
        int,
        typer.Option(min=1, max=100, parser=whole_number(1, 100), help="Repetitions per metric."),
    ] = 7,
    only: Annotated[
        list[str] | None, typer.Option(metavar="METRIC", help="Run only these metrics (repeat).")
    ] = None,
) -> None:
    """Measure the model's speed (medians over repeated runs)."""
    from vbsim.bench import METRICS, run

    unknown = [name for name in only or [] if name not in METRICS]
    if unknown:
        raise typer.BadParameter(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}"
        )
    results = run(repeat=repeat, only=only)
    if as_json:
        print(json_text(results))
        return
    from rich.table import Table

    table = Table(title=f"vbsim bench (median of {repeat})")
    for column in ("metric", "median", "target", "meets"):
        table.add_column(column)
    for name, row in results.items():
        if "skipped" in row:  # an optional dependency is missing (dask for dask_efficiency)
            table.add_row(name, "skipped", row["target_text"], row["skipped"])
            continue
        table.add_row(
            name,
            f"{row['median']:.6g}",
            row["target_text"],
            "yes" if row["meets"] else "[red]no[/]",
        )
    console().print(table)


@app.command()
def attacks(
    preset_names: Annotated[
        list[str] | None,
        typer.Option(
            "--preset", metavar="NAME", help="Presets to run (repeat; default: all five)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", metavar="ID", help="Scenario IDs, e.g. A1 (repeat)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run the attack catalogue under each preset; exit 1 if any outcome differs from the record."""
    from vbsim.attacks.catalogue import SCENARIOS, by_id
    from vbsim.attacks.model import PRESET_ORDER
    from vbsim.attacks.report import catalogue_json, catalogue_table
    from vbsim.attacks.runner import run_catalogue
    from vbsim.policy import PRESETS

    presets = list(dict.fromkeys(preset_names or PRESET_ORDER))  # a repeated preset once
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise typer.BadParameter(
            f"unknown preset(s) {', '.join(map(repr, unknown))}; known: {', '.join(PRESETS)}"
        )
    scenarios = SCENARIOS
    if only:
        missing = [s for s in only if by_id(s) is None]
        if missing:
            raise typer.BadParameter(f"unknown scenario(s) {', '.join(map(repr, missing))}")
        scenarios = [s for s in SCENARIOS if s.id.lower() in {o.lower() for o in only}]
    from vbsim.cli.render import progress_bar

    with progress_bar("attacks", len(scenarios) * len(presets), not as_json) as advance:
        results = run_catalogue(
            scenarios, presets, progress=lambda r: advance(f"{r.id} on {r.preset}")
        )
    if as_json:
        print(json_text(catalogue_json(results)))
    else:
        out = console()
        catalogue_table(results, presets, out.width).print(out)
    if any(not r.matches for r in results):
        raise typer.Exit(1)


@app.command()
def attack(
    scenario_id: Annotated[str, typer.Argument(help="Scenario ID, e.g. A1.")],
    preset_name: Annotated[
        str, typer.Option("--preset", metavar="NAME", help="The preset to run under.")
    ] = "vbs",
    show_trace: Annotated[bool, typer.Option("--trace", help="Show the attack's trace.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result (and trace) as JSON.")
    ] = False,
) -> None:
    """Run one scenario and show, step by step, who did what and which check decided."""
    from vbsim.attacks.catalogue import SCENARIOS, by_id
    from vbsim.attacks.report import print_run
    from vbsim.attacks.runner import run
    from vbsim.policy import PRESETS

    scenario = by_id(scenario_id)
    if scenario is None:
        raise typer.BadParameter(
            f"unknown scenario {scenario_id!r}; known: {', '.join(s.id for s in SCENARIOS)}"
        )
    if preset_name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset_name!r}; known: {', '.join(PRESETS)}")
    result, ctx = run(scenario, preset_name)
    events = ctx.trace.events[ctx.attack_start :]
    if as_json:
        payload = result.to_json()
        if show_trace:
            payload["trace"] = [e.to_json() for e in events]
        print(json_text(payload))
    else:
        print_run(result, events, console(), show_trace)
    if not result.matches:
        raise typer.Exit(1)


@app.command()
def matrix(
    preset_name: Annotated[
        str, typer.Option("--preset", metavar="NAME", help="The preset to probe.")
    ] = "vbs",
    as_json: Annotated[bool, typer.Option("--json", help="Print the matrix as JSON.")] = False,
) -> None:
    """Probe the four areas (VTL0/VTL1 x user/kernel) against each other, live."""
    from vbsim.attacks.matrix import access_matrix, matrix_json
    from vbsim.attacks.matrix_view import Key, matrix_key, matrix_table
    from vbsim.policy import PRESETS

    if preset_name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset_name!r}; known: {', '.join(PRESETS)}")
    cells = access_matrix(preset_name)
    if as_json:
        print(json_text(matrix_json(cells)))
    else:
        key = Key()
        out = console()
        out.print(matrix_table(cells, preset_name, key))
        for line in matrix_key(key):
            out.print(line)


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print what ran as JSON.")] = False,
) -> None:
    """The tour (about two screens): boot chain, live access matrix, what VBS stops and not."""
    from vbsim.demo import collect, run

    if as_json:
        tour = collect()
        print(json_text(tour.to_json()))
        raise typer.Exit(1 if tour.mismatches else 0)
    raise typer.Exit(run(console()))


@app.command("boot")
def boot_command(
    policy_file: Annotated[
        str | None,
        typer.Option("--policy", metavar="FILE", help="A TOML policy file (see README)."),
    ] = None,
    preset_name: Annotated[
        str | None,
        typer.Option(
            "--preset", metavar="NAME", help="vbs-off, vbs, vbs-hvci, hardened, legacy-2019."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Boot a machine from a policy and show the boot chain, the memory map and the processes."""
    from vbsim.boot.report import boot_report, print_boot_report
    from vbsim.policy import LoadedPolicy, PolicyError, load_file, preset

    if policy_file is not None and preset_name is not None:
        raise typer.BadParameter("give --policy or --preset, not both")
    if policy_file == "":  # not the current directory: Path("") is "."
        raise typer.BadParameter(
            "the path is empty; give a TOML policy file", param_hint="'--policy'"
        )
    source: LoadedPolicy | None = None
    try:
        if policy_file is not None:
            source = load_file(policy_file)
            policy = source.policy
        else:
            policy = preset("vbs" if preset_name is None else preset_name)
    except PolicyError as error:
        raise typer.BadParameter(str(error)) from error
    from vbsim.cli.errors import data_dir_problem
    from vbsim.cli.image_cmd import fail
    from vbsim.hw.ram import OutOfFrames, RamError

    try:
        report = boot_report(policy, source)
    except OSError as error:
        if (problem := data_dir_problem(error)) is not None:  # not the RAM's fault
            fail(problem, as_json)
        fail(
            f"cannot boot with ram_mib = {policy.ram_mib}: {type(error).__name__}: {error}", as_json
        )
    except (RamError, OutOfFrames, MemoryError) as error:
        # The policy validator allows up to 64 GiB; the host or the model may not (issue 12).
        fail(
            f"cannot boot with ram_mib = {policy.ram_mib}: {type(error).__name__}: {error}", as_json
        )
    if as_json:
        print(json_text(report))
    else:
        print_boot_report(report, console())
    if report["halted"]:
        from vbsim.cli.errors import EXIT_BOOT_REFUSED

        raise typer.Exit(EXIT_BOOT_REFUSED)  # not 2: the input was fine, the machine said no


#: The order ``vbsim --help`` lists commands in: the tour first, then booting and probing, the
#: attacks, the tools for files and trustlets, and the campaign machinery last.
HELP_ORDER = (
    "demo", "boot", "matrix", "attacks", "attack", "report", "trustlet", "image", "machine",
    "conformance", "soak", "fuzz", "campaign", "bench",
)  # fmt: skip


def _rank(name: str | None) -> int:
    return HELP_ORDER.index(name) if name in HELP_ORDER else len(HELP_ORDER)


class _RootHelp(HelpGroup):
    order = HELP_ORDER


app.registered_commands.sort(key=lambda c: _rank(c.name or getattr(c.callback, "__name__", "")))
app.registered_groups.sort(key=lambda g: _rank(g.name))
app.info.cls = _RootHelp
install_help(app)
