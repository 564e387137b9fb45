"""The soak runner and ``vbsim soak`` (registered here as the CLI registers it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vbsim.cli.soak_cmd import soak as soak_command
from vbsim.invariants.attacker import Action, Session
from vbsim.invariants.soak import format_report, soak


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("soak")(soak_command)
    app.command("other")(lambda: None)  # a second command keeps "soak" a subcommand
    return app


def test_a_small_soak_is_clean() -> None:
    report = soak("vbs", 30, max_actions=15, seed=2, workers=1)
    assert report.ok, format_report(report)
    assert report.programs == 30 and report.actions >= 30
    assert report.checks > report.actions and report.events > 0
    assert report.boots >= 1 and set(report.by_capability) <= {"U0", "A0", "K0", "PHYS"}
    text = format_report(report)
    assert "violations: 0" in text and "escaped exceptions: 0" in text
    assert report.to_json()["invariant_checks"] == report.checks


def test_workers_share_the_programs() -> None:
    report = soak("hardened", 8, max_actions=6, seed=3, workers=2)
    assert report.ok and report.programs == 8 and report.workers == 2


def _a_model_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make one kind of action raise out of the model, as a model bug would."""
    original = Session.execute

    def execute(self: Session, capability: str, action: Action) -> str:
        if action.op == "syscall":
            raise KeyError("a bug in the model")
        return original(self, capability, action)

    monkeypatch.setattr(Session, "execute", execute)


def test_an_escaped_exception_is_reported_with_its_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _a_model_bug(monkeypatch)
    report = soak("vbs", 6, max_actions=25, seed=5, capabilities=("U0",))
    assert not report.ok
    assert report.exceptions and "KeyError" in report.exceptions[0].message
    assert "Program(" in report.exceptions[0].program
    assert "a bug in the model" in report.exceptions[0].detail


def test_the_command() -> None:
    runner = CliRunner()
    result = runner.invoke(
        _app(),
        [
            "soak",
            "--programs",
            "6",
            "--preset",
            "vbs",
            "--workers",
            "1",
            "--max-actions",
            "5",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["programs"] == 6 and summary["violations"] == []
    assert summary["escaped_exceptions"] == [] and summary["invariant_checks"] > 0
    text = runner.invoke(_app(), ["soak", "-n", "3", "-p", "hardened", "--workers", "1"])
    assert text.exit_code == 0 and "programs/s" in text.stdout


def test_the_command_refuses_bad_input() -> None:
    runner = CliRunner()
    for args in (["--preset", "vbs-off"], ["--preset", "nope"], ["--capability", "K9"]):
        result = runner.invoke(_app(), ["soak", "-n", "1", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_the_command_fails_when_something_broke(monkeypatch: pytest.MonkeyPatch) -> None:
    _a_model_bug(monkeypatch)
    result = CliRunner().invoke(
        _app(), ["soak", "-n", "6", "-p", "vbs", "-c", "U0", "--workers", "1", "--seed", "5"]
    )
    assert result.exit_code == 1
    assert "escaped exceptions: " in result.stdout and "KeyError" in result.stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_default_attacker_finds_the_legacy_2019_bugs_unaided(seed: int) -> None:
    """Issue 13: no focus, no hint — the guided generator reaches the unchecked secure-call
    parameters of legacy-2019 (invariant 6: the copy past the allocation into SK data;
    invariant 1: VTL1 bytes the unchecked copy moved where VTL0 can read them) within 600
    programs, for each of the seeds the issue names, with the default lanes (the same records
    as ``vbsim soak -p legacy-2019 -n 600 --seed N`` on any number of workers)."""
    report = soak("legacy-2019", 600, seed=seed, workers=1, stop_after=1, shrink=False)
    assert report.violations, format_report(report)
    assert report.programs <= 600 and not report.exceptions
    assert all(f.group.split()[1] in ("1", "6") for f in report.violations), report.groups


def test_the_default_lanes_do_not_depend_on_the_workers(tmp_path: Path) -> None:
    """A seed gives the same records on one worker or many: the lanes default to a fixed
    number (what the command's help says), never to the worker count."""
    from vbsim.campaign.jobs import DEFAULT_LANES

    help_text = CliRunner().invoke(_app(), ["soak", "--help"], env={"COLUMNS": "200"}).stdout
    assert f"default {DEFAULT_LANES})" in help_text.split("--lanes")[1].split("--help")[0]
    records = []
    for workers in (1, 2):
        out = tmp_path / str(workers)
        soak("vbs", 8, max_actions=6, seed=4, workers=workers, batch=2, out=out)
        lines = (out / "jobs.jsonl").read_text().splitlines()
        records.append(sorted((json.loads(line) for line in lines), key=lambda r: r["index"]))
    assert records[0] == records[1] and len(records[0]) == 8
