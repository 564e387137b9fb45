"""Fuzz campaigns: fuzzers sharing one corpus, crashes deduplicated and minimised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbsim.campaign import fuzz as campaign
from vbsim.campaign.engine import LocalEngine, dask_available, make_engine
from vbsim.campaign.results import ResultsDir
from vbsim.fuzz import engine as engines
from vbsim.fuzz.targets import Target


@pytest.fixture(autouse=True)
def _fuzz_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VBSIM_FUZZ_DIR", str(tmp_path / "fuzz"))


def test_two_fuzzers_share_their_corpus(tmp_path: Path) -> None:
    with LocalEngine(2) as engine:
        result = campaign.run(
            "policy",
            2,
            engine,
            workers=2,
            seed=4,
            interval=1,
            max_iterations=150,
            results=ResultsDir(tmp_path / "out"),
        )
    assert result.rounds == 2 and result.iterations == 2 * 2 * 150
    assert result.origin, "the fuzzers grew the corpus"
    # round 1: every fuzzer started from the merged corpus, so from the other one's finds too
    second = result.shared[2:]
    assert [w for w, _, _ in second] == [0, 1]
    assert sum(others for _, _, others in second) > 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "jobs.jsonl").read_text().splitlines()]
    assert [(r["round"], r["worker"]) for r in lines] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert lines[2]["corpus_in"] == lines[3]["corpus_in"] > lines[0]["corpus_in"]
    saved = list((tmp_path / "fuzz" / "policy").iterdir())
    assert len(saved) == len(result.origin) and list((tmp_path / "out" / "corpus").iterdir())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["corpus"] == len(result.corpus) and summary["crashes"] == []


def test_crashes_are_deduplicated_and_minimised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []

    def one(data: bytes) -> None:
        calls.append(data)
        if data.count(b"A") >= 3:
            raise KeyError("a planted bug")

    target = Target("planted", "", one, lambda: [b"xxAxxAxxxxxxxxAxxxx"], 64)
    monkeypatch.setattr(engines, "get", lambda name: target)
    result = engines.fuzz_round("planted", 0, 1, [], [], [], 60, 300, True)
    assert len(result.crashes) == 1, "one bug, one crash, however many inputs reach it"
    signature, data, error, _, length = result.crashes[0]
    assert signature.startswith("KeyError at ") and "a planted bug" in error
    assert data == b"AAA" and length >= len(b"xxAxxAxxxxxxxxAxxxx")


@pytest.mark.skipif(not dask_available(), reason="dask is not installed (pip install '.[cluster]')")
def test_a_fuzz_campaign_on_dask(tmp_path: Path) -> None:
    with make_engine("dask", 2) as engine:
        result = campaign.run("policy", 1, engine, workers=2, interval=1, max_iterations=60)
    assert result.rounds == 1 and result.iterations == 120 and result.corpus
