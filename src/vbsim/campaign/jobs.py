"""Soak jobs: ``(campaign seed, job index, preset, config) -> records``, pure and self-contained.

A *job* (a batch) is ``config.batch`` consecutive programs on machines of its own: it boots a
fresh machine, runs its programs on it with the monitor on (rebooting after a termination, a
violation, an escaped exception, or every ``reboot_every`` programs, as the soak always did), and
returns one record per program.  Its random generator is seeded from the campaign seed and the
job index only (:func:`job_seed`), so a job re-run alone, on any worker, gives the same records.

With the guided generator (:mod:`vbsim.invariants.guided`) the feedback state flows along a
*lane*: job ``j`` continues the guide state of job ``j - lanes`` and absorbs what the other
lanes' guides learned a round earlier (:func:`dependencies`; AFL's instances sync their corpora
the same way), so a resource one lane discovered is every lane's two rounds later.
``lanes`` is part of the config (not the worker count), so the records are the same on one
worker or forty and on either engine; job ``j``'s only inputs besides its index are those
states, which travel through the engine (the scheduler hands them over), never through a file
system.

A failing program is shrunk where it was found (:mod:`vbsim.campaign.shrink`), and the record
carries the shrunk program as Python source ready to paste into
``tests/invariants/regressions.py``, and its group key (:mod:`vbsim.campaign.groups`).
"""

from __future__ import annotations

import hashlib
import pickle
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vbsim.invariants.attacker import CAPABILITIES, Program, Session, random_program
from vbsim.invariants.guided import Guide
from vbsim.invariants.known_bugs import strip_known_bugs
from vbsim.invariants.monitor import InvariantViolation, Monitor
from vbsim.policy import Policy, preset

GENERATORS = ("guided", "random")
#: The guided generator's lanes unless a campaign says otherwise.  A fixed number, not the
#: worker count, so a seed gives the same records on a laptop and on a cluster; measured on
#: legacy-2019 (600 programs, seeds 1-32): 2 lanes found the SK bugs for 31 seeds, 1 lane for
#: 29, 4 lanes (each lane a quarter as deep) for 22.
DEFAULT_LANES = 2


@dataclass(frozen=True)
class SoakConfig:
    """Everything a soak job depends on besides the campaign seed and its index."""

    policy: Policy
    programs: int
    max_actions: int = 50
    capabilities: tuple[str, ...] = CAPABILITIES
    include_known: bool = False
    reboot_every: int = 200
    batch: int = 50
    lanes: int = DEFAULT_LANES
    generator: str = "guided"
    shrink: bool = True

    @property
    def jobs(self) -> int:
        return -(-self.programs // self.batch)

    def job_range(self, index: int) -> range:
        return range(index * self.batch, min(self.programs, (index + 1) * self.batch))

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy"] = self.policy.name
        data["capabilities"] = list(self.capabilities)
        return data


def job_seed(campaign_seed: int, index: int) -> int:
    """A job's seed: a hash of the campaign seed and the index (stable across processes and
    Python versions, unlike ``hash``)."""
    digest = hashlib.sha256(f"vbsim-campaign:{campaign_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class JobResult:
    index: int
    records: list[dict[str, Any]] = field(default_factory=list)
    #: the guide state handed to job ``index + lanes`` (pickled), or None
    state: bytes | None = None
    boots: int = 0
    events: int = 0
    pages_scanned: int = 0
    skipped_known_bugs: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0


def boot_entropy_seed(job: int, boot: int) -> int:
    """The platform generator's seed for boot ``boot`` of the job seeded ``job``."""
    return (job << 32) | (boot & 0xFFFF_FFFF)


def new_guide(config: SoakConfig, seed: int) -> Guide:
    return Guide(random.Random(seed), config.capabilities, config.max_actions)


def dependencies(config: SoakConfig, job: int) -> tuple[int, ...]:
    """The jobs whose guide states job ``job`` starts from (guided generator): the other
    lanes' jobs of the round before last, then (last) its own lane's predecessor, whose state
    it continues; the others' it absorbs.  Empty for the first round.

    Absorbing from two rounds back, not one, gives each lane a round of slack: a lane whose
    job ran short starts its next one without waiting for the slowest lane to finish the
    current round (with one round back, every round ended at a barrier and two workers sat
    idle about a tenth of the time).  A lane still learns what every other lane found, one
    round later; AFL's instances sync just as loosely."""
    lanes = max(1, config.lanes)
    round_, lane = divmod(job, lanes)
    if round_ == 0:
        return ()
    base = (round_ - 2) * lanes
    others = tuple(base + m for m in range(lanes) if m != lane) if round_ >= 2 else ()
    return (*others, job - lanes)


def run_chained(
    config: SoakConfig,
    campaign_seed: int,
    index: int,
    own: JobResult | bytes | None,
    shared: tuple[JobResult | bytes | None, ...] = (),
) -> JobResult:
    """:func:`run_job` with its lane inputs given as the jobs' results themselves (what an
    engine that chains jobs hands over when a dependency's future resolves) or as states."""

    def state(source: JobResult | bytes | None) -> bytes | None:
        return source.state if isinstance(source, JobResult) else source

    return run_job(config, campaign_seed, index, state(own), tuple(state(s) for s in shared))


def run_job(
    config: SoakConfig,
    campaign_seed: int,
    index: int,
    state: bytes | None = None,
    shared: tuple[bytes | None, ...] = (),
) -> JobResult:
    """Run job ``index`` of a soak campaign (see the module doc): ``state`` is its lane
    predecessor's guide, ``shared`` the other lanes' of the round before (:func:`dependencies`)."""
    seed = job_seed(campaign_seed, index)
    result = JobResult(index)
    started = time.process_time()
    rng = random.Random(seed)
    guide: Guide | None = None
    if config.generator == "guided":
        guide = pickle.loads(state) if state is not None else new_guide(config, seed)
        for other in shared:
            if other is not None:
                guide.absorb(pickle.loads(other))
        guide.rng = rng  # the job's own stream: the state brings the corpus, not the draws
    session: Session | None = None
    since_boot = 0
    last: dict[str, Any] | None = None

    def retire() -> None:
        nonlocal session
        if session is None:
            return
        monitor = session.monitor
        try:
            if monitor is not None:
                monitor.sweep()
        except InvariantViolation as violation:
            if last is not None and last["outcome"] != "violation":
                last.update(_violation_fields(violation, "(final sweep)"))
        if monitor is not None:
            result.events += monitor.stats.events
            result.pages_scanned += monitor.stats.pages_scanned
        if guide is not None:
            session.system.trace.unlisten(guide.listen)
        session.close()
        session = None

    skipped: dict[str, int] = {}
    entropy_seed = 0
    try:
        for number in config.job_range(index):
            program = guide.next() if guide is not None else _random(rng, config)
            if not config.include_known:
                program, removed = strip_known_bugs(program)
                for key in removed:
                    skipped[key] = skipped.get(key, 0) + 1
            if not program.actions:
                program = Program(program.capability, ())
            if session is None or not session.healthy or since_boot >= config.reboot_every:
                retire()
                # Each boot's platform generator is seeded from the job's seed and the boot's
                # number, so a job replays byte for byte (keys, GUIDs, nonces, canaries).
                # A policy that names a seed shifts every job's stream by it.
                entropy_seed = boot_entropy_seed(
                    seed ^ (config.policy.entropy_seed or 0), result.boots
                )
                session = Session(config.policy.with_changes(entropy_seed=entropy_seed))
                if guide is not None:
                    session.system.trace.listen(guide.listen)
                result.boots += 1
                since_boot = 0
            since_boot += 1
            record: dict[str, Any] = {
                "index": number,
                "job": index,
                "seed": seed,
                "entropy_seed": entropy_seed,
                "preset": config.policy.name,
                "capability": program.capability,
                "length": len(program.actions),
                "actions": 0,
                "checks": 0,
                "outcome": "ok",
            }
            last = record
            monitor = session.monitor
            checks_before = monitor.stats.checks if monitor is not None else 0
            if guide is not None:
                guide.begin(_step_counter(monitor))
            try:
                run = session.run(program)
                record["actions"] = run.actions
                if run.terminated is not None:
                    record["outcome"] = "terminated"
                    record["terminated"] = run.terminated
                if guide is not None:
                    guide.observe(program, run)
            except InvariantViolation as violation:
                record["actions"] = step_index(violation.violation.label) + 1
                record.update(_violation_fields(violation, repr(program)))
                if guide is not None:
                    guide.observe(program, None)
                if config.shrink:
                    from vbsim.campaign.shrink import shrink_violation

                    seeded = config.policy.with_changes(entropy_seed=entropy_seed)  # as it booted
                    record.update(shrink_violation(program, seeded, violation.violation))
                retire()
            except Exception as error:  # an escaped exception: a model bug
                record.update(
                    {
                        "outcome": "exception",
                        "message": f"{type(error).__name__}: {error}",
                        "program": repr(program),
                        "detail": traceback.format_exc(),
                    }
                )
                if guide is not None:
                    guide.observe(program, None)
                if config.shrink:
                    from vbsim.campaign.shrink import shrink_exception

                    seeded = config.policy.with_changes(entropy_seed=entropy_seed)  # as it booted
                    record.update(shrink_exception(program, seeded, error))
                retire()
            if monitor is not None:
                record["checks"] = monitor.stats.checks - checks_before
            result.records.append(record)
    finally:
        retire()
        result.skipped_known_bugs = skipped
        result.cpu_seconds = time.process_time() - started
    from vbsim.campaign.groups import group_key

    for record in result.records:
        if record["outcome"] in ("violation", "exception"):
            record["group"] = group_key(record)
    if guide is not None:
        result.state = pickle.dumps(guide)
    return result


def _step_counter(monitor: Monitor | None) -> Callable[[], int] | None:
    if monitor is None:
        return None
    return lambda: monitor.step_number


def _random(rng: random.Random, config: SoakConfig) -> Program:
    return random_program(rng, rng.choice(list(config.capabilities)), config.max_actions)


def _violation_fields(error: InvariantViolation, program: str) -> dict[str, Any]:
    violation = error.violation
    return {
        "outcome": "violation",
        "invariant": violation.invariant,
        "step": violation.step,
        "label": violation.label,
        "message": violation.message,
        "program": program,
        "detail": violation.report(events=20),
    }


def step_index(label: str) -> int:
    """The program's action index in a monitor step label (``"K0 #3 Action(...)"``)."""
    try:
        return int(label.split("#", 1)[1].split(" ", 1)[0])
    except (IndexError, ValueError):
        return 0


def policy_of(name_or_policy: str | Policy) -> Policy:
    return preset(name_or_policy) if isinstance(name_or_policy, str) else name_or_policy


JobFunction = Callable[[SoakConfig, int, int, bytes | None], JobResult]
