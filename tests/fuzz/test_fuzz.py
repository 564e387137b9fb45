"""The fuzz targets, the random driver, ``python -m vbsim.fuzz.ci`` and ``vbsim fuzz``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vbsim.cli.fuzz_cmd import fuzz as fuzz_command
from vbsim.fuzz import ci, engine
from vbsim.fuzz.targets import Reader, Target, get, targets

#: Inputs per target: a few hundred milliseconds each.
BUDGET = {"image": 120, "policy": 400, "hypercall": 1500, "securecall": 120}


@pytest.fixture(autouse=True)
def _fuzz_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VBSIM_FUZZ_DIR", str(tmp_path / "fuzz"))


def test_the_four_surfaces() -> None:
    assert set(targets()) == {"image", "policy", "hypercall", "securecall"}
    assert set(BUDGET) == set(targets())


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_a_target_survives_random_inputs(name: str) -> None:
    result = engine.run_random(name, seconds=60, seed=1, max_iterations=BUDGET[name])
    assert result.crashes == [], result.crashes[0].trace if result.crashes else ""
    assert result.iterations == BUDGET[name]


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_seeds_run_clean(name: str) -> None:
    target = get(name)
    try:
        for seed in target.seeds():
            target.one(seed[: target.max_len])
    finally:
        target.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2**32))
def test_mutants_stay_within_the_limit(data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    out = engine.mutate(rng, data, [b"corpus", bytes(40)], 256)
    assert len(out) <= 256


def test_the_reader_runs_out_gently() -> None:
    reader = Reader(b"\x01\x02")
    assert (reader.byte(), reader.u64(), reader.byte(), reader.take(3)) == (1, 2, 0, bytes(3))


def _crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    original = get("policy")

    def one(data: bytes) -> None:
        if b"boom" in data:
            raise KeyError("a model bug")
        original.one(data)

    crashing = Target("policy", original.summary, one, lambda: [b"x = 1\n", b"boom"])
    monkeypatch.setitem(targets(), "policy", crashing)


def test_a_finding_is_reported_saved_and_replayable(monkeypatch: pytest.MonkeyPatch) -> None:
    _crashing(monkeypatch)
    result = engine.run_random("policy", seconds=10, seed=0)
    assert len(result.crashes) == 1
    crash = result.crashes[0]
    assert crash.data == b"boom" and "KeyError" in crash.error and "a model bug" in crash.trace
    assert crash.path is not None and crash.path.read_bytes() == b"boom"
    again = engine.replay("policy", crash.path.read_bytes())
    assert again is not None and "KeyError" in again.error
    assert engine.replay("policy", b"x = 1\n") is None


def test_ci_runs_every_target_briefly(capsys: pytest.CaptureFixture[str]) -> None:
    assert ci.main(["--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in targets())


def test_ci_fails_on_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    _crashing(monkeypatch)
    assert ci.main(["--seconds", "1", "policy"]) == 1


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("fuzz")(fuzz_command)
    app.command("other")(lambda: None)
    return app


def test_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(_app(), ["fuzz", "policy", "--seconds", "0.5", "--engine", "random"])
    assert ok.exit_code == 0, ok.output
    assert "0 finding(s)" in ok.stdout
    bad = runner.invoke(_app(), ["fuzz", "nothing"])
    assert bad.exit_code == 2 and "unknown target" in bad.output
    _crashing(monkeypatch)
    found = runner.invoke(_app(), ["fuzz", "policy", "--seconds", "5", "--engine", "random"])
    assert found.exit_code == 1 and "KeyError" in found.stdout
    saved = tmp_path / "boom.bin"
    saved.write_bytes(b"boom")
    replayed = runner.invoke(_app(), ["fuzz", "policy", "--replay", str(saved)])
    assert replayed.exit_code == 1 and "a model bug" in replayed.stdout


@pytest.mark.skipif(not engine.atheris_available(), reason="atheris is not installed")
def test_atheris_runs_a_target(tmp_path: Path) -> None:
    env = dict(os.environ, VBSIM_FUZZ_DIR=str(tmp_path / "corpus"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-m", "vbsim.fuzz", "policy", "--seconds", "1", "--engine", "atheris"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done" in done.stderr
    assert any((tmp_path / "corpus" / "policy").iterdir())


def test_the_rss_limit_counts_from_what_the_process_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Linux keeps the peak RSS across execve, so a fuzzer started from a big process (this test
    run, after booting many machines) inherits it: libFuzzer's limit is set above that, or its
    first check would call the fresh process out of memory (it did, at 2.1 GB, in the suite)."""
    import resource
    from types import SimpleNamespace

    monkeypatch.setattr(
        resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 1024 * 1024)
    )
    assert engine.rss_limit_mb() == 3 * 1024 + engine.RSS_HEADROOM_MB
