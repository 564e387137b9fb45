"""``vbsim soak --out/--resume`` and ``vbsim campaign show`` (registered as the CLI does)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from vbsim.cli.campaign_cmd import app as campaign_app
from vbsim.cli.soak_cmd import soak as soak_command


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("soak")(soak_command)
    app.add_typer(campaign_app, name="campaign")
    return app


def test_soak_writes_a_campaign_that_resumes_and_shows(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["soak", "-n", "12", "-p", "vbs", "--max-actions", "4", "--batch", "4"]
    first = runner.invoke(_app(), [*args, "--workers", "1", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["out"] == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "soak" and manifest["engine"] == "local"
    assert manifest["config"]["programs"] == 12 and manifest["started"] and manifest["ended"]
    records = (out / "jobs.jsonl").read_text().splitlines()
    assert len(records) == 12
    keys = {"seed", "preset", "capability", "actions", "checks", "outcome", "index", "job"}
    assert keys <= set(json.loads(records[0]))
    # interrupted after two jobs: the third resumes (same records as the uninterrupted run)
    (out / "jobs.jsonl").write_text("\n".join(records[:8]) + "\n")
    (out / "state" / "job-2.pickle").unlink()
    resumed = runner.invoke(_app(), ["soak", "--resume", str(out), "--workers", "1", "--json"])
    assert resumed.exit_code == 0, resumed.output
    again = (out / "jobs.jsonl").read_text().splitlines()
    assert sorted(again) == sorted(records)
    shown = runner.invoke(_app(), ["campaign", "show", str(out)])
    assert shown.exit_code == 0 and "12 of 12 programs" in shown.stdout
    assert "violations: 0, escaped exceptions: 0" in shown.stdout


def test_show_and_resume_refuse_what_is_not_a_campaign(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["campaign", "show", str(tmp_path)], ["soak", "--resume", str(tmp_path)]):
        result = runner.invoke(_app(), args)
        assert result.exit_code == 2 and "holds no campaign" in result.output, result.output


def test_the_dask_engine_is_refused_cleanly_without_a_scheduler_flag_misuse() -> None:
    result = CliRunner().invoke(
        _app(), ["soak", "-n", "1", "--engine", "local", "--scheduler", "tcp://nowhere:1"]
    )
    assert result.exit_code == 2 and "--scheduler needs --engine dask" in result.output


def test_a_resume_keeps_the_campaign_s_lanes(tmp_path: Path) -> None:
    """The records depend on the lanes: resuming with other lanes is refused on one line, and
    the same lanes (or none given) resume."""
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["soak", "-n", "4", "-p", "vbs", "--max-actions", "3", "--batch", "2", "--workers", "1"]
    assert runner.invoke(_app(), [*args, "--lanes", "1", "--out", str(out)]).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["lanes"] == 1
    refused = runner.invoke(_app(), ["soak", "--resume", str(out), "--lanes", "2"])
    assert refused.exit_code == 2
    assert "--lanes 2 differs from the campaign's 1" in refused.output
    assert "Traceback" not in refused.output
    again = runner.invoke(_app(), ["soak", "--resume", str(out), "--lanes", "1", "--workers", "1"])
    assert again.exit_code == 0, again.output
