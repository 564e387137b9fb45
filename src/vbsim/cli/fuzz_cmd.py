"""``vbsim fuzz TARGET [--seconds N] [--engine auto|random|atheris] [--replay FILE]``.

Targets: ``image`` (PE/.tPolicy/Authenticode), ``policy`` (policy files), ``hypercall`` (the
hypercall decoder and dispatcher on a bare partition) and ``securecall`` (the secure-call block
and the Secure Kernel's dispatch on a booted machine, with the isolation monitor attached) —
see :mod:`vbsim.fuzz.targets`.

With atheris installed (``pip install atheris``) ``--engine auto`` fuzzes coverage-guided
(libFuzzer; its corpus grows under the vbsim data directory, ``fuzz/TARGET``, or
``$VBSIM_FUZZ_DIR/TARGET``); otherwise a random mutation driver runs.  Exit status: 0 when the
time ran out without a finding, 1 on a finding (the input is saved under ``fuzz/crashes/``), 2 for
bad usage.

``--workers N`` (with ``--engine local``, the default then, or ``dask`` and ``--scheduler``) runs
a campaign instead (:mod:`vbsim.campaign.fuzz`): N random-driver fuzzers sharing one corpus,
merged every ``--interval`` seconds, crashes deduplicated by signature and minimised, everything
kept in a results directory (``--out``; ``vbsim campaign show DIR``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from vbsim.cli.output import json_text, path_arg
from vbsim.cli.sizes import decimal_number, whole_number
from vbsim.text import path_text, visible

ENGINES = ("auto", "random", "atheris", "local", "dask")
#: The longest ``--seconds``: a week (``inf`` overflowed libFuzzer's argument, or ran forever).
MAX_SECONDS = 7 * 24 * 3600.0


def _error(message: str, code: int = 2) -> NoReturn:
    """Refuse on one line (the JSON error object with ``--json``): :mod:`vbsim.cli.errors`."""
    from vbsim.cli.errors import refuse

    refuse(message, code)


def fuzz(
    target: Annotated[str, typer.Argument(help="image, policy, hypercall or securecall.")],
    seconds: Annotated[
        float,
        typer.Option(
            "--seconds",
            "-s",
            min=0.1,
            max=MAX_SECONDS,
            parser=decimal_number(0.1, MAX_SECONDS),
            help="How long to fuzz.",
        ),
    ] = 60.0,
    engine: Annotated[
        str,
        typer.Option(
            help="auto (atheris if installed), random or atheris; with --workers: local or dask."
        ),
    ] = "auto",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            parser=whole_number(1, 256),
            help="Fuzzers sharing one corpus (a campaign).",
        ),
    ] = 1,
    scheduler: Annotated[
        str | None, typer.Option(help="A running dask scheduler (with --engine dask).")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            max=3600.0,
            parser=decimal_number(0.5, 3600.0),
            show_default=False,
            help="Seconds between corpus merges (a campaign; default 5).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Results directory (default: under the data dir).", parser=path_arg
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    seed: Annotated[
        int, typer.Option(parser=whole_number(), help="Seed of the random driver.")
    ] = 0,
    replay: Annotated[
        Path | None,
        typer.Option("--replay", help="Run one saved input and report.", parser=path_arg),
    ] = None,
) -> None:
    """Fuzz one input surface of the model; any unexpected exception is a finding."""
    from vbsim.fuzz import engine as engines
    from vbsim.fuzz.targets import targets

    if target not in targets():
        _error(f"unknown target {target!r} (known: {', '.join(targets())})")
    if engine not in ENGINES:
        _error(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    out = Console(highlight=False, soft_wrap=True)
    if replay is not None:
        data = _read_replay(replay, targets()[target].max_len)
        crash = engines.replay(target, data)
        if as_json:
            finding = None if crash is None else {"error": crash.error, "trace": crash.trace}
            report = {"ok": crash is None, "target": target, "bytes": len(data)}
            print(json_text({**report, "finding": finding}))
        elif crash is None:
            out.print(f"{target}: {len(data)}-byte input ran without a finding", markup=False)
        else:
            out.print(visible(f"{target}: {crash.error}") + f"\n{crash.trace}", markup=False)
        if crash is not None:
            raise typer.Exit(1)
        return
    campaign = workers > 1 or engine in ("local", "dask")
    if not campaign:
        # a single fuzzer has no results directory, scheduler or merges: refuse, not ignore
        stray: dict[str, object] = {"--out": out_dir, "--scheduler": scheduler}
        stray["--interval"] = interval
        for option, setting in stray.items():
            if setting is not None:
                _error(f"{option} is for a campaign: add --workers N (N > 1)")
    if campaign:
        if out_dir is not None:
            from vbsim.cli.soak_cmd import check_results_dir

            out_dir = check_results_dir(out_dir, "--out", resume_hint=False)
        every = 5.0 if interval is None else interval
        _campaign(target, seconds, engine, workers, scheduler, every, seed, out_dir, as_json)
        return
    use_atheris = engine == "atheris" or (
        engine == "auto" and not as_json and engines.atheris_available()
    )
    if use_atheris:
        if as_json:
            _error(
                "--json needs the random driver (libFuzzer prints its own report): --engine random"
            )
        if not engines.atheris_available():
            _error("atheris is not installed (pip install atheris), or use --engine random")
        engines.run_atheris(target, seconds)  # libFuzzer exits the process
        return
    result = engines.run_random(target, seconds, seed=seed)
    if as_json:
        print(
            json_text(
                {
                    "ok": not result.crashes,
                    "target": target,
                    "engine": "random",
                    "inputs": result.iterations,
                    "seconds": round(result.seconds, 3),
                    "corpus_grew": result.grown,
                    "findings": [
                        {"error": c.error, "path": path_text(c.path), "trace": c.trace}
                        for c in result.crashes
                    ],
                }
            )
        )
        if result.crashes:
            raise typer.Exit(1)
        return
    out.print(
        f"{target}: {result.iterations} inputs in {result.seconds:.1f} s "
        f"({result.rate:.0f}/s, random driver), corpus grew by {result.grown}, "
        f"{len(result.crashes)} finding(s)",
        markup=False,
    )
    for crash in result.crashes:
        out.print(
            visible(f"{crash.error}\ninput saved to {path_text(crash.path)}") + f"\n{crash.trace}",
            markup=False,
        )
    if result.crashes:
        raise typer.Exit(1)


def _campaign(
    target: str,
    seconds: float,
    engine: str,
    workers: int,
    scheduler: str | None,
    interval: float,
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """N random-driver fuzzers sharing a corpus through the campaign engine."""
    from vbsim.campaign import fuzz as campaign
    from vbsim.campaign.engine import EngineError, make_engine
    from vbsim.campaign.results import ResultsDir, default_dir

    if engine == "atheris":
        _error("atheris runs one libFuzzer process; --workers uses the random driver (local/dask)")
    name = "dask" if engine == "dask" else "local"
    directory = out if out is not None else default_dir(f"fuzz-{target}")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    show = not as_json and sys.stderr.isatty()
    try:
        runner = make_engine(name, workers, scheduler)
    except EngineError as error:
        _error(str(error))
    with runner:
        if show:
            line = f"engine {runner.name}: {runner.workers} worker(s)"
            line += f", up in {runner.start_seconds:.1f} s"
            err.print(line + (f"; dashboard {runner.dashboard}" if runner.dashboard else ""))

        def progress(state: campaign.FuzzCampaign) -> None:
            if show:
                err.print(
                    f"round {state.rounds}: {state.iterations} inputs, corpus {len(state.corpus)}, "
                    f"{len(state.crashes)} distinct crash(es)",
                    markup=False,
                )

        result = campaign.run(
            target,
            seconds,
            runner,
            workers=workers,
            seed=seed,
            interval=interval,
            results=ResultsDir(directory),
            progress=progress,
        )
    summary = result.summary()
    if as_json:
        print(json_text(summary, indent=2))
    else:
        out_console = Console(highlight=False, soft_wrap=True)
        out_console.print(
            f"{target}: {result.iterations} inputs in {result.seconds:.1f} s ({result.rate:.0f}/s, "
            f"{workers} fuzzers on {name}), corpus {len(result.corpus)}, "
            f"{len(result.crashes)} distinct finding(s)\nresults: {visible(path_text(directory))}",
            markup=False,
        )
        for crash in result.crashes.values():
            out_console.print(
                f"{crash.count} x {crash.signature}: {crash.error}\n"
                f"minimised {crash.original_length} -> {len(crash.data)} bytes, "
                f"saved to {crash.path}",
                markup=False,
            )
    if result.crashes:
        raise typer.Exit(1)


def _read_replay(path: Path, limit: int) -> bytes:
    """A saved input: a regular file of at most the target's ``max_len`` bytes, read with that
    cap (``/dev/zero`` or a FIFO never ends; ``/proc`` files report size 0)."""
    name = visible(repr(str(path)))
    try:
        if not path.exists():
            _error(f"--replay {name}: no such file")
        if not path.is_file():
            _error(f"--replay {name}: not a regular file (a saved input is one)")
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        _error(f"--replay {name}: cannot read it ({error.strerror})")
    if len(data) > limit:
        _error(f"--replay {name}: over the target's {limit}-byte input limit")
    return data


def main(argv: list[str] | None = None) -> int:
    """``python -m vbsim.fuzz``: the same command without the rest of the CLI."""
    app = typer.Typer(add_completion=False)
    app.command()(fuzz)
    from vbsim.cli.help import install

    install(app)
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="python -m vbsim.fuzz")
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    return 0
