"""The campaign engine contract, on both engines (a 2-worker LocalCluster for Dask)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from vbsim.campaign import jobs
from vbsim.campaign.engine import Engine, LocalEngine, dask_available, make_engine
from vbsim.campaign.jobs import SoakConfig, job_seed, run_job
from vbsim.campaign.results import ResultsDir
from vbsim.campaign.soak import run
from vbsim.cli.campaign_cmd import app as campaign_app
from vbsim.invariants.attacker import Action, Program, Ref, run_program
from vbsim.invariants.monitor import InvariantViolation
from vbsim.policy import preset


def _regression_class() -> Any:
    """``Regression`` from tests/invariants/regressions.py (the file a shrunk program goes in)."""
    import importlib.util

    path = Path(__file__).parent.parent / "invariants" / "regressions.py"
    spec = importlib.util.spec_from_file_location("campaign_regressions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Regression


SMALL = SoakConfig(preset("vbs"), 24, max_actions=6, batch=6, lanes=2)


def _records(directory: Path) -> list[dict[str, Any]]:
    return sorted(ResultsDir(directory).records(), key=lambda r: int(r["index"]))


def test_a_job_seed_depends_on_the_campaign_seed_and_the_index_only() -> None:
    assert job_seed(7, 3) == job_seed(7, 3)
    assert len({job_seed(7, i) for i in range(50)} | {job_seed(8, 0)}) == 51


def test_a_job_continues_its_lane_and_absorbs_the_other_lanes_of_the_round_before() -> None:
    deps = [list(jobs.dependencies(SMALL, job)) for job in range(8)]
    assert deps == [[], [], [0], [1], [1, 2], [0, 3], [3, 4], [2, 5]]
    three = SoakConfig(preset("vbs"), 24, batch=2, lanes=3)
    assert list(jobs.dependencies(three, 7)) == [0, 2, 4]
    one_lane = SoakConfig(preset("vbs"), 24, batch=6, lanes=1)
    assert [list(jobs.dependencies(one_lane, job)) for job in range(3)] == [[], [0], [1]]


def test_a_job_reruns_alone_identically() -> None:
    first = run_job(SMALL, 5, 1)
    again = run_job(SMALL, 5, 1)
    assert first.records == again.records and len(first.records) == 6
    assert [r["index"] for r in first.records] == list(range(6, 12))


@pytest.mark.skipif(not dask_available(), reason="dask is not installed (pip install '.[cluster]')")
def test_local_and_dask_give_identical_records(tmp_path: Path) -> None:
    with LocalEngine(2) as local:
        run(SMALL, 11, local, ResultsDir(tmp_path / "local"))
    with make_engine("dask", 2) as dask:
        assert dask.workers == 2 and dask.dashboard
        run(SMALL, 11, dask, ResultsDir(tmp_path / "dask"))
        # Dask chains the guided jobs (each gets its dependencies' futures): a resume starts
        # the chain from the states on disk, and a stop drops the jobs not finished
        cut = tmp_path / "cut"
        run(SMALL, 11, dask, ResultsDir(cut))
        _cut_after(cut, 2)
        resumed = run(SMALL, 11, dask, ResultsDir(cut), resume=True)
        stopped = run(SMALL, 11, dask, stop_after=0)
    local_records, dask_records = _records(tmp_path / "local"), _records(tmp_path / "dask")
    assert len(local_records) == 24 and local_records == dask_records
    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["engine"] == "dask" and manifest["workers"] == 2 and manifest["ended"]
    assert manifest["policy"]["name"] == "vbs" and manifest["vbsim"]
    assert resumed.resumed_jobs == 2 and _records(cut) == local_records
    assert 0 < len(stopped.records) < 24 and len(stopped.records) % SMALL.batch == 0


def _cut_after(directory: Path, jobs: int) -> None:
    """An interruption: the jobs from ``jobs`` on never finished (records and states gone)."""
    lines = (directory / "jobs.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["job"] < jobs]
    (directory / "jobs.jsonl").write_text("\n".join(kept) + "\n")
    for job in range(jobs, SMALL.jobs):
        (directory / "state" / f"job-{job}.pickle").unlink()
        (directory / "state" / f"job-{job}.json").unlink()


class Counting(Engine):
    """The inline local engine, counting the jobs it is given."""

    def __init__(self) -> None:
        self.inner = LocalEngine(1)
        self.jobs: list[int] = []
        self.name = "local"

    def submit(self, fn: Any, *args: Any) -> Any:
        self.jobs.append(args[2])
        return self.inner.submit(fn, *args)

    def wait_any(self, pending: list[Any]) -> tuple[list[Any], list[Any]]:
        return self.inner.wait_any(pending)


def test_resume_runs_only_the_unfinished_jobs(tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(SMALL, 3, LocalEngine(1), ResultsDir(whole))
    run(SMALL, 3, LocalEngine(1), ResultsDir(cut))
    _cut_after(cut, 2)  # the last two jobs never finished
    engine = Counting()
    campaign = run(SMALL, 3, engine, ResultsDir(cut), resume=True)
    assert sorted(engine.jobs) == [2, 3] and campaign.resumed_jobs == 2
    assert _records(cut) == _records(whole)
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["programs"] == 24


_PADDING = (
    Action("read", (Ref("dm", "loot", 0), 8)),
    Action("rdmsr", (0xC000_0082,)),
    Action("write", (Ref("dm", "stage", 3, 0x800), b"\x01\x02")),
)
#: the legacy-2019 unchecked ByteCount (regressions.A8_OVERFLOW), between harmless steps
_OVERFLOW = (
    Action("securecall", (2, "CREATE_SECURE_ALLOCATION", 0, (4096,), ())),
    Action("stage_mdl", (0, 0, (Ref("pfn", "loot", 0), Ref("pfn", "loot", 1)), 24, 0, -1)),
    Action(
        "securecall",
        (
            2,
            "FILL_SECURE_ALLOCATION",
            0,
            (Ref("handle"), 4096 - 8, Ref("dm", "stage", 0), Ref("pfn", "stage", 0)),
            (),
        ),
    ),
)


def test_a_planted_failure_is_found_grouped_and_shrunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        3: Program("K0", (*_PADDING, *_OVERFLOW[:2], *_PADDING[:1], _OVERFLOW[2], *_PADDING)),
        9: Program("K0", (*_PADDING[1:], *_OVERFLOW, *_PADDING[:2])),
    }
    drawn: list[int] = []
    original = jobs._random

    def draw(rng: random.Random, config: SoakConfig) -> Program:
        drawn.append(0)
        program = original(rng, config)
        return planted.get(len(drawn) - 1, program)

    monkeypatch.setattr(jobs, "_random", draw)
    config = SoakConfig(preset("legacy-2019"), 12, max_actions=4, batch=12, generator="random")
    run(config, 1, LocalEngine(1), ResultsDir(tmp_path))
    failures = [r for r in _records(tmp_path) if r["outcome"] == "violation"]
    assert [r["index"] for r in failures] == [3, 9]
    assert {r["group"] for r in failures} == {"invariant 6 at securecall FILL_SECURE_ALLOCATION"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(g["count"], g["key"]) for g in summary["groups"]] == [
        (2, "invariant 6 at securecall FILL_SECURE_ALLOCATION")
    ]
    for failure in failures:
        assert failure["alone"] and failure["shrunk_actions"] == 3
        namespace: dict[str, Any] = {"Regression": _regression_class(), "Program": Program}
        namespace.update(Action=Action, Ref=Ref)
        exec("entry = " + failure["shrunk"].rstrip(","), namespace)
        entry = namespace["entry"]
        assert entry.expect == 6 and entry.preset == "legacy-2019"
        assert entry.program.actions == _OVERFLOW
        with pytest.raises(InvariantViolation):
            run_program(entry.program, entry.preset)
    app = typer.Typer(add_completion=False)
    app.add_typer(campaign_app, name="campaign")
    shown = CliRunner().invoke(app, ["campaign", "show", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "2 x invariant 6 at securecall FILL_SECURE_ALLOCATION" in shown.stdout
    assert "Regression(" in shown.stdout
