"""The soak: many random attacker programs against one preset, the monitor on every step.

Machines are reused: a program runs on the machine the previous one left, and the machine is
rebooted only when a program ended it (a bugcheck or another guest termination), when it is no
longer in a state a new program can start from (see :attr:`Session.healthy`), after a violation
or an escaped exception, and every ``reboot_every`` programs (so state does not pile up).  Before
each reboot the monitor sweeps every page ever populated.  Work is split over ``workers``
processes, each with its own seed.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from vbsim.invariants.attacker import CAPABILITIES, Program, Session, random_program
from vbsim.invariants.known_bugs import strip_known_bugs
from vbsim.invariants.monitor import InvariantViolation
from vbsim.policy import Policy


@dataclass
class Finding:
    kind: str  # "violation" or "exception"
    message: str
    program: str
    detail: str


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
            "programs_per_second": round(self.programs_per_second, 1),
            "actions_per_second": round(self.actions_per_second, 1),
        }


def _worker(
    preset: str | Policy,
    programs: int,
    max_actions: int,
    seed: int,
    capabilities: Sequence[str],
    include_known: bool,
    reboot_every: int,
) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(_name(preset))
    started = time.process_time()
    session: Session | None = None
    since_boot = 0

    def retire() -> None:
        nonlocal session
        if session is None:
            return
        monitor = session.monitor
        try:
            if monitor is not None:
                monitor.sweep()
        except InvariantViolation as violation:
            report.violations.append(
                Finding("violation", violation.violation.message, "(final sweep)", str(violation))
            )
        if monitor is not None:
            report.checks += monitor.stats.checks
            report.events += monitor.stats.events
            report.pages_scanned += monitor.stats.pages_scanned
        session.close()
        session = None

    try:
        while report.programs < programs:
            program = random_program(rng, rng.choice(list(capabilities)), max_actions)
            if not include_known:
                program, removed = strip_known_bugs(program)
                report.skipped_known_bugs.update(removed)
                if not program.actions:
                    continue
            if session is None or not session.healthy or since_boot >= reboot_every:
                retire()
                session = Session(preset)
                report.boots += 1
                since_boot = 0
            since_boot += 1
            report.programs += 1
            report.by_capability[program.capability] += 1
            try:
                result = session.run(program)
                report.actions += result.actions
                if result.terminated is not None:
                    report.terminations += 1
            except InvariantViolation as violation:
                report.actions += violation.violation.step
                report.violations.append(
                    Finding(
                        "violation",
                        violation.violation.message,
                        repr(program),
                        violation.violation.report(events=20),
                    )
                )
                retire()
            except Exception as error:  # an escaped exception: a model bug
                report.exceptions.append(
                    Finding(
                        "exception",
                        f"{type(error).__name__}: {error}",
                        repr(program),
                        traceback.format_exc(),
                    )
                )
                retire()
    finally:
        retire()
        report.cpu_seconds = time.process_time() - started
    return report


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
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run ``programs`` random programs (split over ``workers`` processes)."""
    start = time.perf_counter()
    total = SoakReport(_name(preset), workers=max(1, workers))
    shares = [programs // max(1, workers)] * max(1, workers)
    for index in range(programs - sum(shares)):
        shares[index] += 1
    jobs = [
        (
            preset,
            share,
            max_actions,
            seed * 1000 + index,
            tuple(capabilities),
            include_known,
            reboot_every,
        )
        for index, share in enumerate(shares)
        if share
    ]
    if len(jobs) <= 1:
        for job in jobs:
            total.merge(_worker(*job))
    else:
        # forkserver, not fork: a forked worker inherits every guest-RAM mapping of the caller
        # (a test run holds many), and fork then fails with ENOMEM under overcommit accounting.
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
            futures = [pool.submit(_worker, *job) for job in jobs]
            for future in futures:
                part = future.result()
                total.merge(part)
                if progress is not None:
                    progress(f"worker done: {part.programs} programs, {part.actions} actions")
    total.seconds = time.perf_counter() - start
    return total


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
    for finding in (*report.violations, *report.exceptions)[:5]:
        lines.append(f"\n{finding.kind}: {finding.message}\n{finding.detail}\n{finding.program}")
    return "\n".join(lines)


def replay_program(program: Program, preset: str | Policy) -> None:
    """Run one program on a fresh machine (raises what the soak would have recorded)."""
    from vbsim.invariants.attacker import run_program

    run_program(program, preset)
