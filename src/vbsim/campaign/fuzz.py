"""A fuzz campaign: N random-driver fuzzers on one target, sharing their corpus.

The campaign runs in rounds of ``interval`` seconds.  Every round each fuzzer gets the merged
corpus, the merged feature set (call edges of the model, :class:`vbsim.fuzz.engine.Coverage`)
and the crash signatures already known, fuzzes from its own seed (derived from the campaign seed,
the round and its index), and sends back the inputs that reached new features and its new
crashes, minimised where they were found.  The driver merges them (an input joins the corpus
only if it still adds a feature once the other fuzzers' finds are in), deduplicates crashes by
signature, saves corpus and crashes under the fuzz directory and the results directory, and
starts the next round.  Nothing travels through a file system: arguments and results go through
the engine.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbsim.campaign.engine import Engine
from vbsim.campaign.jobs import job_seed
from vbsim.campaign.results import ResultsDir, now
from vbsim.fuzz.engine import Crash, RoundResult, fuzz_round, load_corpus, save_crash
from vbsim.fuzz.targets import corpus_dir, get

#: entries sent to each fuzzer per round at most (the newest: they are what the others found)
SHARE = 2000


@dataclass
class CrashGroup:
    signature: str
    data: bytes
    error: str
    trace: str
    count: int = 1
    original_length: int = 0
    path: Path | None = None


@dataclass
class FuzzCampaign:
    target: str
    workers: int
    rounds: int = 0
    iterations: int = 0
    seconds: float = 0.0
    corpus: list[bytes] = field(default_factory=list)
    features: set[int] = field(default_factory=set)
    crashes: dict[str, CrashGroup] = field(default_factory=dict)
    #: per round and worker: (entries received, entries that came from another worker)
    shared: list[tuple[int, int, int]] = field(default_factory=list)
    origin: dict[bytes, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.iterations / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "workers": self.workers,
            "rounds": self.rounds,
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
            "inputs_per_second": round(self.rate, 1),
            "corpus": len(self.corpus),
            "features": len(self.features),
            "crashes": [
                {
                    "signature": c.signature,
                    "count": c.count,
                    "length": len(c.data),
                    "original_length": c.original_length,
                    "error": c.error,
                    "path": str(c.path) if c.path else None,
                }
                for c in sorted(self.crashes.values(), key=lambda c: -c.count)
            ],
        }


def run(
    target: str,
    seconds: float,
    engine: Engine,
    *,
    workers: int,
    seed: int = 0,
    interval: float = 5.0,
    max_iterations: int | None = None,
    results: ResultsDir | None = None,
    save: bool = True,
    progress: Callable[[FuzzCampaign], None] | None = None,
) -> FuzzCampaign:
    """Fuzz ``target`` with ``workers`` fuzzers for ``seconds`` (rounds of ``interval``), or for
    ``max_iterations`` inputs per fuzzer per round (a deterministic budget, for tests)."""
    campaign = FuzzCampaign(target, workers)
    spec = get(target)
    try:
        campaign.corpus = load_corpus(spec)
    finally:
        spec.close()
    if results is not None:
        results.create(
            {
                "kind": "fuzz",
                "target": target,
                "seed": seed,
                "engine": engine.name,
                "workers": workers,
                "interval": interval,
                "dashboard": engine.dashboard,
            }
        )
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if max_iterations is None and elapsed >= seconds:
            break
        if max_iterations is not None and campaign.rounds * interval >= seconds:
            break
        share = campaign.corpus[-SHARE:]
        round_seconds = (
            min(interval, max(0.1, seconds - elapsed)) if max_iterations is None else 1e9
        )
        futures = [
            engine.submit(
                fuzz_round,
                target,
                worker,
                job_seed(seed, campaign.rounds * 1000 + worker),
                share,
                sorted(campaign.features),
                sorted(campaign.crashes),
                round_seconds,
                max_iterations,
                campaign.rounds == 0 and worker == 0,  # one fuzzer replays the seeds
            )
            for worker in range(workers)
        ]
        received = [
            (w, len(share), sum(1 for d in share if campaign.origin.get(d, w) != w))
            for w in range(workers)
        ]
        pending = list(futures)
        parts: list[RoundResult] = []
        while pending:
            done, pending = engine.wait_any(pending)
            parts.extend(engine.result(f) for f in done)
        for part in sorted(parts, key=lambda p: p.worker):
            _merge(campaign, part, results, save)
        campaign.shared.extend(received)
        campaign.rounds += 1
        if results is not None:
            results.append(
                [
                    {
                        "round": campaign.rounds - 1,
                        "worker": p.worker,
                        "iterations": p.iterations,
                        "seconds": round(p.seconds, 3),
                        "corpus_in": p.corpus_in,
                        "new_inputs": len(p.new),
                        "crashes": [c[0] for c in p.crashes],
                    }
                    for p in sorted(parts, key=lambda p: p.worker)
                ]
            )
        if progress is not None:
            progress(campaign)
    campaign.seconds = time.perf_counter() - start
    if results is not None:
        manifest = results.manifest()
        manifest["ended"] = now()
        results.write_manifest(manifest)
        results.write_summary(campaign.summary())
    return campaign


def _merge(
    campaign: FuzzCampaign, part: RoundResult, results: ResultsDir | None, save: bool
) -> None:
    campaign.iterations += part.iterations
    directory = corpus_dir(campaign.target)
    for data, features in part.new:
        if set(features) <= campaign.features:
            continue  # another fuzzer's find already covers it
        campaign.features.update(features)
        campaign.corpus.append(data)
        campaign.origin[data] = part.worker
        name = f"input-{hashlib.sha1(data).hexdigest()[:16]}"
        if save:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)
        if results is not None:
            (results.path / "corpus").mkdir(exist_ok=True)
            (results.path / "corpus" / name).write_bytes(data)
    for sig, data, error, trace, length in part.crashes:
        known = campaign.crashes.get(sig)
        if known is not None:
            known.count += 1
            if len(data) < len(known.data):
                known.data = data
            continue
        group = CrashGroup(sig, data, error, trace, original_length=length)
        if save:
            group.path = save_crash(Crash(campaign.target, data, error, trace, signature=sig))
        if results is not None:
            (results.path / "crashes").mkdir(exist_ok=True)
            name = f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
            (results.path / "crashes" / name).write_bytes(data)
        campaign.crashes[sig] = group
