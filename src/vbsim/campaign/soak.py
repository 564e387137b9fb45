"""A soak campaign: the jobs of :mod:`vbsim.campaign.jobs` scheduled on an engine, their records
kept in a results directory, resumable.

Scheduling follows the lanes (see :mod:`vbsim.campaign.jobs`): with the guided generator job
``j`` starts when its lane's previous job and the other lanes' jobs of the round before that
have handed over their guide states, so at most ``lanes`` jobs run at once (``lanes`` is part of
the config, 2 by default, never the worker count).  On an engine that chains jobs (Dask) every
guided job is submitted at once with its dependencies' futures; on the process pool a job is
submitted when its dependencies have finished.  With the plain random generator every job is
independent and up to twice the worker count are in flight.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbsim.campaign.engine import Engine
from vbsim.campaign.groups import group
from vbsim.campaign.jobs import JobResult, SoakConfig, dependencies, run_chained
from vbsim.campaign.results import ResultsDir, now

Progress = Callable[[int, int, int], None]  # programs done, violations, exceptions


@dataclass
class Campaign:
    config: SoakConfig
    seed: int
    results: ResultsDir | None
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_jobs: int = 0

    def finished_jobs(self) -> set[int]:
        done = set()
        for job in range(self.config.jobs):
            if all(i in self.records for i in self.config.job_range(job)):
                done.add(job)
        return done


def run(
    config: SoakConfig,
    seed: int,
    engine: Engine,
    results: ResultsDir | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> Campaign:
    """Run (or resume) a soak campaign; with ``stop_after``, no new job starts once that many
    programs failed (on a chaining engine the jobs not finished are dropped; either way the
    records stay whole jobs)."""
    campaign = Campaign(config, seed, results)
    if results is not None:
        if resume and results.exists():
            for record in results.records():
                if "index" in record:
                    campaign.records[int(record["index"])] = record
            for path in sorted((results.path / "state").glob("job-*.json")):
                data = json.loads(path.read_text())
                campaign.stats[int(data["index"])] = data
        else:
            results.create(_manifest(config, seed, engine))
    finished = campaign.finished_jobs()
    campaign.resumed_jobs = len(finished)
    start = time.perf_counter()
    counts = Counter(r["outcome"] for r in campaign.records.values())
    done_programs = len(campaign.records)
    if progress is not None:
        progress(done_programs, counts["violation"], counts["exception"])

    guided = config.generator == "guided"
    todo = [j for j in range(config.jobs) if j not in finished]
    pending: list[Any] = []
    queued: dict[Any, int] = {}

    def submit(job: int, own: Any = None, shared: tuple[Any, ...] = ()) -> Any:
        """Submit job ``job``; its lane inputs are states, or (chaining) the futures of the
        jobs that will produce them."""
        future = engine.submit(run_chained, config, seed, job, own, shared)
        pending.append(future)
        queued[future] = job
        return future

    # guided: the jobs not yet submitted, the finished ones, and the states still needed
    waiting = list(todo) if guided else []
    ended = set(finished)
    states: dict[int, bytes | None] = {}

    def state_of(job: int) -> bytes | None:
        if job not in states and results is not None:
            states[job] = results.load_state(job)  # finished by an earlier run
        return states.get(job)

    def release() -> None:
        """Submit every waiting job whose dependencies have all finished, and forget the
        states no waiting job needs any more."""
        for job in list(waiting):
            needs = dependencies(config, job)
            if all(d in ended for d in needs):
                waiting.remove(job)
                own = state_of(needs[-1]) if needs else None
                submit(job, own, tuple(state_of(d) for d in needs[:-1]))
        oldest = min(
            (min(dependencies(config, j), default=j) for j in waiting), default=config.jobs
        )
        for job in [j for j in states if j < oldest]:
            del states[job]

    if guided and engine.chains:
        # Every job at once, each given its dependencies' futures: the engine starts a job when
        # its lane inputs exist, with no round trip through this loop between two jobs.
        submitted: dict[int, Any] = {}
        for job in waiting:
            needs = dependencies(config, job)
            inputs = [submitted[d] if d in submitted else state_of(d) for d in needs]
            submitted[job] = submit(job, inputs[-1] if inputs else None, tuple(inputs[:-1]))
        waiting.clear()
    elif guided:
        release()
    else:
        for job in todo[: 2 * max(1, engine.workers)]:
            submit(job, None)
        todo = todo[2 * max(1, engine.workers) :]
    try:
        while pending:
            done, rest = engine.wait_any(pending)
            pending[:] = rest
            for future in done:
                job = queued.pop(future)
                part: JobResult = engine.result(future)
                done_programs += len(part.records)
                counts.update(r["outcome"] for r in part.records)
                if (
                    stop_after is not None
                    and counts["violation"] + counts["exception"] >= stop_after
                ):
                    todo.clear()
                    waiting.clear()
                    if engine.chains:  # every chained job still queued or running is dropped
                        engine.cancel(pending)
                        pending.clear()
                elif guided:
                    if not engine.chains:  # (chained jobs were all submitted up front)
                        ended.add(job)
                        states[job] = part.state
                        release()
                elif todo:
                    submit(todo.pop(0), None)
                # the next jobs are on their way before this one's records go to disk: the
                # writes are off the critical path of every lane
                _keep(campaign, part)
                if progress is not None:
                    progress(done_programs, counts["violation"], counts["exception"])
    finally:
        campaign.seconds = time.perf_counter() - start
        if results is not None:
            manifest = results.manifest()
            manifest["ended"] = now()
            manifest.setdefault("runs", []).append(
                {"engine": engine.name, "workers": engine.workers, "seconds": campaign.seconds}
            )
            results.write_manifest(manifest)
            results.write_summary(summary(campaign))
    return campaign


def _keep(campaign: Campaign, part: JobResult) -> None:
    stats = {
        "index": part.index,
        "boots": part.boots,
        "events": part.events,
        "pages_scanned": part.pages_scanned,
        "skipped_known_bugs": part.skipped_known_bugs,
        "cpu_seconds": round(part.cpu_seconds, 3),
    }
    campaign.stats[part.index] = stats
    for record in part.records:
        campaign.records[int(record["index"])] = record
    results = campaign.results
    if results is not None:
        # state first: a job whose records are written is finished, and its state must be there
        results.save_state(part.index, part.state)
        path = results.path / "state" / f"job-{part.index}.json"
        path.write_text(json.dumps(stats))
        results.append(part.records)


def _manifest(config: SoakConfig, seed: int, engine: Engine) -> dict[str, Any]:
    return {
        "kind": "soak",
        "seed": seed,
        "config": config.describe(),
        "policy": config.policy.to_dict(),
        "engine": engine.name,
        "workers": engine.workers,
        "dashboard": engine.dashboard,
    }


def summary(campaign: Campaign) -> dict[str, Any]:
    records = [campaign.records[i] for i in sorted(campaign.records)]
    outcomes = Counter(r["outcome"] for r in records)
    skipped: Counter[str] = Counter()
    for stats in campaign.stats.values():
        skipped.update(stats.get("skipped_known_bugs", {}))
    groups = group(records)
    return {
        "preset": campaign.config.policy.name,
        "seed": campaign.seed,
        "programs": len(records),
        "planned": campaign.config.programs,
        "actions": sum(int(r["actions"]) for r in records),
        "invariant_checks": sum(int(r["checks"]) for r in records),
        "outcomes": dict(outcomes),
        "by_capability": dict(Counter(r["capability"] for r in records)),
        "boots": sum(int(s["boots"]) for s in campaign.stats.values()),
        "events": sum(int(s["events"]) for s in campaign.stats.values()),
        "pages_scanned": sum(int(s["pages_scanned"]) for s in campaign.stats.values()),
        "skipped_known_bugs": dict(skipped),
        "violations": outcomes["violation"],
        "escaped_exceptions": outcomes["exception"],
        "groups": [
            {
                "key": g.key,
                "count": g.count,
                "first": g.first.get("index"),
                "message": g.first.get("message"),
                "shrunk": g.first.get("shrunk"),
            }
            for g in groups
        ],
        "seconds": round(campaign.seconds, 3),
    }


def results_path(path: Path | str) -> ResultsDir:
    return ResultsDir(Path(path))
