"""The soak: many attacker programs against one preset, the monitor on every step.

Machines are reused: a program runs on the machine the previous one left, and the machine is
rebooted only when a program ended it (a bugcheck or another guest termination), when it is no
longer in a state a new program can start from (see :attr:`Session.healthy`), after a violation
or an escaped exception, and every ``reboot_every`` programs (so state does not pile up).  Before
each reboot the monitor sweeps every page ever populated.  The programs come from the guided
generator (:mod:`vbsim.invariants.guided`) by default, or the plain random one.  The work is a
campaign (:mod:`vbsim.campaign`): jobs of ``batch`` programs on a local process pool or Dask,
records in a results directory when one is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vbsim.invariants.attacker import CAPABILITIES, Program
from vbsim.policy import Policy

if TYPE_CHECKING:
    from vbsim.campaign.engine import Engine


@dataclass
class Finding:
    kind: str  # "violation" or "exception"
    message: str
    program: str
    detail: str
    #: the shrunk program as a regression entry (None: it does not fail alone)
    shrunk: str | None = None
    group: str = ""


@dataclass
class SoakReport:
    preset: str
    programs: int = 0
    actions: int = 0
    checks: int = 0
    events: int = 0
    pages_scanned: int = 0
    boots: int = 0
    terminations: int = 0
    skipped_known_bugs: Counter[str] = field(default_factory=Counter)
    violations: list[Finding] = field(default_factory=list)
    exceptions: list[Finding] = field(default_factory=list)
    by_capability: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    workers: int = 1
    groups: list[dict[str, object]] = field(default_factory=list)
    out: str | None = None
    resumed_jobs: int = 0

    def merge(self, other: SoakReport) -> None:
        self.programs += other.programs
        self.actions += other.actions
        self.checks += other.checks
        self.events += other.events
        self.pages_scanned += other.pages_scanned
        self.boots += other.boots
        self.terminations += other.terminations
        self.skipped_known_bugs.update(other.skipped_known_bugs)
        self.violations.extend(other.violations)
        self.exceptions.extend(other.exceptions)
        self.by_capability.update(other.by_capability)
        self.cpu_seconds += other.cpu_seconds

    @property
    def ok(self) -> bool:
        return not self.violations and not self.exceptions

    @property
    def programs_per_second(self) -> float:
        return self.programs / self.seconds if self.seconds else 0.0

    @property
    def actions_per_second(self) -> float:
        return self.actions / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "preset": self.preset,
            "programs": self.programs,
            "actions": self.actions,
            "invariant_checks": self.checks,
            "events": self.events,
            "pages_scanned": self.pages_scanned,
            "boots": self.boots,
            "terminations": self.terminations,
            "by_capability": dict(self.by_capability),
            "skipped_known_bugs": dict(self.skipped_known_bugs),
            "violations": [vars(f) for f in self.violations],
            "escaped_exceptions": [vars(f) for f in self.exceptions],
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "workers": self.workers,
            "groups": self.groups,
            "out": self.out,
            "programs_per_second": round(self.programs_per_second, 1),
            "actions_per_second": round(self.actions_per_second, 1),
        }


def soak(
    preset: str | Policy,
    programs: int,
    *,
    max_actions: int = 50,
    seed: int = 0,
    workers: int = 1,
    capabilities: Sequence[str] = CAPABILITIES,
    include_known: bool = False,
    reboot_every: int = 200,
    generator: str = "guided",
    batch: int = 50,
    lanes: int | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    out: Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
    on_engine: Callable[[Engine], None] | None = None,
    stop_after: int | None = None,
    shrink: bool = True,
) -> SoakReport:
    """Run ``programs`` attacker programs as a campaign (:mod:`vbsim.campaign`) on ``engine``
    with ``workers`` processes; records go to ``out`` when given (``resume``: continue it)."""
    from vbsim.campaign.engine import make_engine
    from vbsim.campaign.jobs import DEFAULT_LANES, SoakConfig, policy_of
    from vbsim.campaign.results import ResultsDir
    from vbsim.campaign.soak import run, summary

    count = max(1, workers)
    config = SoakConfig(
        policy_of(preset),
        programs,
        max_actions=max_actions,
        capabilities=tuple(capabilities),
        include_known=include_known,
        reboot_every=reboot_every,
        batch=batch,
        lanes=lanes or DEFAULT_LANES,
        generator=generator,
        shrink=shrink,
    )
    results = ResultsDir(out) if out is not None else None
    with make_engine(engine, count, scheduler) as runner:
        if on_engine is not None:
            on_engine(runner)
        campaign = run(
            config, seed, runner, results, resume=resume, progress=progress, stop_after=stop_after
        )
        workers_used = runner.workers
    total = summary(campaign)
    report = SoakReport(config.policy.name, workers=workers_used)
    report.programs = int(total["programs"])
    report.actions = int(total["actions"])
    report.checks = int(total["invariant_checks"])
    report.events = int(total["events"])
    report.pages_scanned = int(total["pages_scanned"])
    report.boots = int(total["boots"])
    report.terminations = int(total["outcomes"].get("terminated", 0))
    report.skipped_known_bugs.update(total["skipped_known_bugs"])
    report.by_capability.update(total["by_capability"])
    report.cpu_seconds = sum(float(s["cpu_seconds"]) for s in campaign.stats.values())
    report.seconds = campaign.seconds
    report.groups = list(total["groups"])
    report.out = str(out) if out is not None else None
    report.resumed_jobs = campaign.resumed_jobs
    for index in sorted(campaign.records):
        record = campaign.records[index]
        if record["outcome"] in ("violation", "exception"):
            finding = Finding(
                record["outcome"],
                str(record.get("message", "")),
                str(record.get("program", "")),
                str(record.get("detail", "")),
                shrunk=record.get("shrunk"),
                group=str(record.get("group", "")),
            )
            (report.violations if finding.kind == "violation" else report.exceptions).append(
                finding
            )
    return report


def _name(preset: str | Policy) -> str:
    return preset if isinstance(preset, str) else preset.name


def format_report(report: SoakReport) -> str:
    lines = [
        f"soak under {report.preset}: {report.programs} programs, {report.actions} actions "
        f"({', '.join(f'{k} {v}' for k, v in sorted(report.by_capability.items()))})",
        f"  invariant checks made: {report.checks}  (events seen {report.events}, "
        f"pages scanned {report.pages_scanned})",
        f"  machines booted: {report.boots}; programs that ended their machine: "
        f"{report.terminations}",
        f"  violations: {len(report.violations)}",
        f"  escaped exceptions: {len(report.exceptions)}",
        f"  time: {report.seconds:.1f} s wall, {report.cpu_seconds:.1f} s CPU, "
        f"{report.workers} worker(s): {report.programs_per_second:.1f} programs/s, "
        f"{report.actions_per_second:.0f} actions/s",
    ]
    if report.skipped_known_bugs:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped_known_bugs.items()))
        lines.append(f"  actions left out (they reach known model bugs): {skipped}")
    if report.groups:
        lines.append(f"  distinct failures: {len(report.groups)}")
        for entry in report.groups[:10]:
            lines.append(
                f"    {entry['count']:>5} x {entry['key']}  (first: program {entry['first']})"
            )
    if report.out:
        lines.append(f"  results: {report.out}")
    shown: set[str] = set()
    for finding in (*report.violations, *report.exceptions):
        if finding.group in shown or len(shown) >= 5:
            continue
        shown.add(finding.group)
        lines.append(f"\n{finding.kind}: {finding.message}\n{finding.detail}\n{finding.program}")
        if finding.shrunk:
            lines.append(f"shrunk (paste into tests/invariants/regressions.py):\n{finding.shrunk}")
    return "\n".join(lines)


def replay_program(program: Program, preset: str | Policy) -> None:
    """Run one program on a fresh machine (raises what the soak would have recorded)."""
    from vbsim.invariants.attacker import run_program

    run_program(program, preset)
