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
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

ENGINES = ("auto", "random", "atheris")


def _error(message: str, code: int = 2) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def fuzz(
    target: Annotated[str, typer.Argument(help="image, policy, hypercall or securecall.")],
    seconds: Annotated[
        float, typer.Option("--seconds", "-s", min=0.1, help="How long to fuzz.")
    ] = 60.0,
    engine: Annotated[
        str, typer.Option(help="auto (atheris if installed), random or atheris.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the random driver.")] = 0,
    replay: Annotated[
        Path | None, typer.Option("--replay", help="Run one saved input and report.")
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
        try:
            data = replay.read_bytes()
        except OSError as error:
            _error(f"cannot read {str(replay)!r}: {error.strerror}")
        crash = engines.replay(target, data)
        if crash is None:
            out.print(f"{target}: {len(data)}-byte input ran without a finding", markup=False)
            return
        out.print(f"{target}: {crash.error}\n{crash.trace}", markup=False)
        raise typer.Exit(1)
    use_atheris = engine == "atheris" or (engine == "auto" and engines.atheris_available())
    if use_atheris:
        if not engines.atheris_available():
            _error("atheris is not installed (pip install atheris), or use --engine random")
        engines.run_atheris(target, seconds)  # libFuzzer exits the process
        return
    result = engines.run_random(target, seconds, seed=seed)
    out.print(
        f"{target}: {result.iterations} inputs in {result.seconds:.1f} s "
        f"({result.rate:.0f}/s, random driver), {len(result.crashes)} finding(s)",
        markup=False,
    )
    for crash in result.crashes:
        out.print(f"{crash.error}\ninput saved to {crash.path}\n{crash.trace}", markup=False)
    if result.crashes:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """``python -m vbsim.fuzz``: the same command without the rest of the CLI."""
    app = typer.Typer(add_completion=False)
    app.command()(fuzz)
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="python -m vbsim.fuzz")
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    return 0
