"""``vbsim soak [--programs N] [--preset P]``: random attacker programs with the monitor on.

Prints what ran (programs, actions, invariant checks), what broke (violations and escaped
Python exceptions, both must be 0) and the throughput.  Exit status: 0 when nothing broke, 1 when
something did (each finding is printed with its program, ready to paste into
``tests/invariants/regressions.py``), 2 for bad usage.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from vbsim.cli.output import json_text, path_arg
from vbsim.cli.sizes import whole_number
from vbsim.policy import RAM_MIB_RANGE as POLICY_RAM_MIB_RANGE

if TYPE_CHECKING:
    from vbsim.campaign.engine import Engine

VBS_PRESETS = ("vbs", "vbs-hvci", "hardened", "legacy-2019")


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


#: Guest RAM a soak may ask for, in MiB: the policy's own bounds (``vbsim.policy``).
RAM_MIB_RANGE = POLICY_RAM_MIB_RANGE


def _count(text: str, option: str) -> int:
    """A whole number in ASCII digits (not ``'１２８'`` or ``'1_000'``, which ``int()`` takes)."""
    from vbsim.cli.sizes import parse_count

    try:
        return parse_count(text, option)
    except ValueError as error:
        _error(str(error))


def _ram_mib(value: int, preset: str) -> int:
    """``--ram-mib`` checked before any worker starts: in range, and a machine of that size
    boots here (the host may refuse the mapping; the model may run out of frames)."""
    from vbsim.boot.chain import boot
    from vbsim.hw.ram import OutOfFrames, RamError
    from vbsim.policy import preset as get_preset

    low, high = RAM_MIB_RANGE
    if not low <= value <= high:
        _error(f"--ram-mib {value} is out of range: a soak machine has {low} to {high} MiB")
    try:
        system = boot(get_preset(preset).with_changes(ram_mib=value))
    except (RamError, OutOfFrames, MemoryError, OSError) as error:
        _error(f"--ram-mib {value}: the machine does not boot: {type(error).__name__}: {error}")
    if system.machine is not None:
        system.machine.close()
    return value


@contextlib.contextmanager
def campaign_progress(
    total: int, show: bool, lanes: int | None = None
) -> Iterator[tuple[Callable[[int, int, int], None] | None, Callable[[Engine], None]]]:
    """A rich progress bar on stderr (programs/s, violations so far, ETA), and the engine's
    start line (on Dask, the dashboard link; with ``lanes``, the guided generator's lanes and
    whether workers sit idle beyond them); nothing when ``show`` is false."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def on_engine(engine: Engine) -> None:
        if not show:
            return
        line = (
            f"engine {engine.name}: {engine.workers} worker(s), up in {engine.start_seconds:.1f} s"
        )
        if lanes is not None:
            line += f"; {lanes} lane(s)"
            if engine.workers > lanes:
                line += f", so {engine.workers - lanes} worker(s) idle (--lanes to use them)"
        if engine.dashboard:
            line += f"; dashboard {engine.dashboard}"
        err.print(line, markup=False)

    if not show:
        yield None, on_engine
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("soak"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]:.1f} programs/s"),
        TextColumn("violations {task.fields[violations]}, exceptions {task.fields[exceptions]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("soak", total=total, rate=0.0, violations=0, exceptions=0)
    started = time.perf_counter()
    first: list[int] = []

    def progress(done: int, violations: int, exceptions: int) -> None:
        if not first:
            first.append(done)  # programs a resumed campaign had already
        elapsed = time.perf_counter() - started
        rate = (done - first[0]) / elapsed if elapsed > 0 else 0.0
        bar.update(task, completed=done, rate=rate, violations=violations, exceptions=exceptions)

    with bar:
        yield progress, on_engine


def _given(ctx: typer.Context, option: str) -> bool:
    """Whether the user typed ``option`` (not its default)."""
    from vbsim.cli.errors import given

    return given(ctx, option.lstrip("-").replace("-", "_"))


def check_results_dir(path: Path, option: str, resume_hint: bool) -> Path:
    """``--out DIR`` for a new campaign: a new or empty directory whose parent exists (a
    campaign's directory reused would mix two campaigns' records)."""
    from vbsim.text import visible

    name = visible(repr(str(path)))
    try:
        if path.exists() and not path.is_dir():
            _error(f"{option} {name} is not a directory (a campaign's results go in one)")
        if path.is_dir() and any(path.iterdir()):
            hint = f"; continue its campaign with --resume {name}" if resume_hint else ""
            _error(f"{option} {name} is not empty: give a new directory{hint}")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            _error(f"{option} {name}: directory {visible(repr(str(parent)))} does not exist")
        if not os.access(parent, os.W_OK):
            _error(f"{option} {name}: directory {visible(repr(str(parent)))} is not writable")
    except OSError as error:
        _error(f"{option} {name}: {error.strerror}")
    return path


def _resumed(resume: Path, given: dict[str, Any], lanes: int | None) -> tuple[Any, ...]:
    """The settings of the campaign in ``resume``; options that contradict it are refused (its
    records depend on them), and a finished campaign is said to be finished."""
    from vbsim.campaign.results import CampaignError, ResultsDir
    from vbsim.policy import PolicyError, from_dict
    from vbsim.text import visible

    results = ResultsDir(resume)
    name = visible(repr(str(resume)))
    if not results.exists():
        _error(f"{name} holds no campaign (no manifest.json)")
    try:
        manifest = results.manifest()
        if manifest.get("kind") != "soak":
            _error(f"{name} is not a soak campaign (it is a {manifest.get('kind')} campaign)")
        config = manifest["config"]
        policy = from_dict(manifest["policy"])
        settings: dict[str, Any] = {
            "--programs": int(config["programs"]),
            "--seed": int(manifest["seed"]),
            "--max-actions": int(config["max_actions"]),
            "--batch": int(config["batch"]),
            "--capability": [str(c) for c in config["capabilities"]],
            "--generator": str(config["generator"]),
            "--include-known-bugs": bool(config["include_known"]),
            "--lanes": int(config.get("lanes", 2)),
        }
    except CampaignError as error:
        _error(str(error))
    except (KeyError, TypeError, ValueError, PolicyError) as error:
        _error(f"{name} is not a valid campaign (manifest.json: {type(error).__name__} {error})")
    if lanes is not None:
        given["--lanes"] = lanes
    for option, value in given.items():
        if option in ("--preset", "--ram-mib", "--out"):
            _error(f"{option} cannot change a campaign: --resume continues it as it started")
        if value != settings[option]:
            _error(
                f"{option} {value} differs from the campaign's {settings[option]} "
                "(--resume continues it as it started; its records depend on it)"
            )
    programs = int(settings["--programs"])
    done = len({r.get("index") for r in results.records() if "index" in r})
    if done >= programs:  # nothing to run: say so (its throughput would be nonsense)
        from vbsim.cli.errors import json_requested
        from vbsim.text import path_text, shell_word

        if json_requested():
            print(json_text({"ok": True, "finished": True, "out": path_text(resume),
                              "programs": done}))  # fmt: skip
        else:
            Console(highlight=False, soft_wrap=True).print(
                f"the campaign in {name} is finished ({done} of {programs} programs): nothing "
                f"to run; 'vbsim campaign show {shell_word(resume)}' shows it",
                markup=False,
            )
        raise typer.Exit(0)
    return (
        policy,
        programs,
        settings["--seed"],
        settings["--max-actions"],
        settings["--batch"],
        tuple(settings["--capability"]),
        settings["--include-known-bugs"],
        settings["--generator"],
        settings["--lanes"],
    )


def soak(
    ctx: typer.Context,
    programs: Annotated[
        int,
        typer.Option("--programs", "-n", min=1, parser=whole_number(1), help="Programs to run."),
    ] = 1000,
    preset: Annotated[
        str, typer.Option("--preset", "-p", metavar="NAME", help="A preset with VBS.")
    ] = "hardened",
    max_actions: Annotated[
        int,
        typer.Option(
            min=1, max=1000, parser=whole_number(1, 1000), help="Actions per program (at most)."
        ),
    ] = 50,
    capability: Annotated[
        list[str] | None,
        typer.Option(
            "--capability", "-c", metavar="CAP", help="U0, A0, K0 or PHYS (repeat; default: all)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            parser=whole_number(0, 64),
            help="Worker processes; 0 picks one per CPU, capped at 4.",
        ),
    ] = 0,
    seed: Annotated[
        int, typer.Option(parser=whole_number(), help="Seed of the program generator.")
    ] = 0,
    ram_mib: Annotated[
        str | None,
        typer.Option(metavar="MIB", help="Guest RAM in MiB, 16 to 65536 (default: the preset's)."),
    ] = None,
    include_known_bugs: Annotated[
        bool, typer.Option("--include-known-bugs", help="Keep actions that reach known model bugs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    engine: Annotated[str, typer.Option(help="local (a process pool) or dask.")] = "local",
    scheduler: Annotated[
        str | None, typer.Option(help="A running dask scheduler (default: a LocalCluster).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Results directory (default: under the data dir).",
            parser=path_arg,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="DIR",
            help="Continue the campaign in this directory.",
            parser=path_arg,
        ),
    ] = None,
    generator: Annotated[str, typer.Option(help="guided (default) or random.")] = "guided",
    batch: Annotated[
        int,
        typer.Option(min=1, max=100000, parser=whole_number(1, 100000), help="Programs per job."),
    ] = 50,
    lanes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            parser=whole_number(1, 1024),
            show_default=False,
            help="Guided generator: parallel lanes of feedback (records depend on it, not on"
            " --workers; default 2).",
        ),
    ] = None,
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
        policy = policy.with_changes(ram_mib=_ram_mib(_count(ram_mib, "--ram-mib"), preset))
    capabilities = tuple(capability or CAPABILITIES)
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        _error(f"unknown capability {unknown[0]!r} (known: {', '.join(CAPABILITIES)})")
    from vbsim.campaign.engine import ENGINES, EngineError
    from vbsim.campaign.jobs import GENERATORS
    from vbsim.campaign.results import default_dir

    if engine not in ENGINES:
        _error(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if generator not in GENERATORS:
        _error(f"unknown generator {generator!r} (known: {', '.join(GENERATORS)})")
    if resume is not None:
        given = {
            name: value
            for name, value in (
                ("--preset", preset),
                ("--programs", programs),
                ("--seed", seed),
                ("--max-actions", max_actions),
                ("--batch", batch),
                ("--capability", capability),
                ("--generator", generator),
                ("--include-known-bugs", include_known_bugs),
                ("--ram-mib", ram_mib),
                ("--out", out),
            )
            if _given(ctx, name)
        }
        (
            policy,
            programs,
            seed,
            max_actions,
            batch,
            capabilities,
            include_known_bugs,
            generator,
            lanes,
        ) = _resumed(resume, given, lanes)
        directory = resume
    elif out is not None:
        directory = check_results_dir(out, "--out", resume_hint=True)
    else:
        directory = default_dir("soak")
    count = workers or max(1, min(4, os.cpu_count() or 1))
    show = not as_json and sys.stderr.isatty()
    if lanes is None:
        from vbsim.campaign.jobs import DEFAULT_LANES

        lanes = DEFAULT_LANES
    guided_lanes = lanes if generator == "guided" else None
    with campaign_progress(programs, show, guided_lanes) as (progress, on_engine):
        try:
            report = run_soak(
                policy,
                programs,
                max_actions=max_actions,
                seed=seed,
                workers=count,
                capabilities=capabilities,
                include_known=include_known_bugs,
                generator=generator,
                batch=batch,
                lanes=lanes,
                engine=engine,
                scheduler=scheduler,
                out=directory,
                resume=resume is not None,
                progress=progress,
                on_engine=on_engine,
            )
        except EngineError as error:
            _error(str(error))
    if as_json:
        print(json_text(report.to_json(), indent=2))
    else:
        from vbsim.text import visible

        text = "\n".join(visible(line) for line in format_report(report).split("\n"))
        Console(highlight=False, soft_wrap=True).print(text, markup=False)
    if not report.ok:
        raise typer.Exit(1)
