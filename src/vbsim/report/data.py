"""Everything the report shows, collected once from the model — the same data the JSON outputs
use (``vbsim boot --json``, ``vbsim matrix --json``, ``vbsim attacks --json``):

- per preset: a booted :class:`~vbsim.boot.chain.System` (what runs where, the boot chain, VTL0's
  memory map) and the live access matrix;
- per scenario and preset: one run of the catalogue (its :class:`RunResult` and the sequence
  diagram of its trace).  Each scenario runs once per preset.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vbsim.attacks.matrix import Cell, access_matrix, matrix_json
from vbsim.attacks.model import PRESET_ORDER, Outcome, RunResult, Scenario
from vbsim.attacks.report import catalogue_json
from vbsim.attacks.runner import run
from vbsim.boot.chain import System, boot
from vbsim.boot.memory_map import MemoryRun, vtl0_memory_map
from vbsim.machine import Machine
from vbsim.policy import PRESETS, Policy, PolicyError, preset
from vbsim.report.sequence import DEFAULT_CAP, Diagram, diagram


@dataclass
class ProcessInfo:
    pid: int
    name: str
    user: str
    trustlet_id: int | None
    protection: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "user": self.user,
            "secure": self.trustlet_id is not None,
            "trustlet_id": self.trustlet_id,
            "protection": self.protection,
        }


@dataclass
class ChainStep:
    seq: int
    vp: int | None
    vtl: int | None
    step: str
    outcome: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "vp": self.vp,
            "vtl": self.vtl,
            "step": self.step,
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass
class PresetData:
    name: str
    policy: Policy
    halted: str | None
    vbs_running: bool
    ram_bytes: int
    processes: list[ProcessInfo]
    drivers: list[str]
    memory: list[MemoryRun]
    chain: list[ChainStep]
    #: ``System.steps``: the chain's own steps (a subset of ``chain``).
    steps: list[dict[str, Any]]
    matrix: list[Cell]

    @property
    def trustlets(self) -> list[ProcessInfo]:
        return [p for p in self.processes if p.trustlet_id is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "policy": self.policy.to_dict(),
            "halted": self.halted,
            "vbs_running": self.vbs_running,
            "ram": self.ram_bytes,
            "chain": [step.to_json() for step in self.chain],
            "memory": [run.to_json() for run in self.memory],
            "processes": [p.to_json() for p in self.processes],
            "drivers": self.drivers,
            "matrix": matrix_json(self.matrix),
        }


@dataclass
class RunData:
    result: RunResult
    anchor: str
    #: None when the scenario does not apply under the preset.
    diagram: Diagram | None


@dataclass
class ReportData:
    presets: list[PresetData]
    scenarios: list[Scenario]
    runs: dict[tuple[str, str], RunData]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def preset_names(self) -> list[str]:
        return [p.name for p in self.presets]

    def run_for(self, scenario_id: str, preset_name: str) -> RunData:
        return self.runs[(scenario_id, preset_name)]

    @property
    def mismatches(self) -> int:
        return sum(1 for r in self.runs.values() if not r.result.matches)

    def to_json(self) -> dict[str, Any]:
        """The report's data as JSON (without traces): what ``--json`` outputs give."""
        return {
            "presets": [p.to_json() for p in self.presets],
            "catalogue": catalogue_json([r.result for r in self.runs.values()]),
        }


def anchor(scenario_id: str, preset_name: str) -> str:
    """The in-page id of a run's sequence diagram."""
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{scenario_id}--{preset_name}")


def scenario_anchor(scenario_id: str) -> str:
    return "scn-" + re.sub(r"[^A-Za-z0-9_-]+", "-", scenario_id)


def validate_presets(names: Sequence[str] | None) -> list[str]:
    """The presets in the order given (all five, in their usual order, when none are)."""
    chosen = list(dict.fromkeys(names)) if names else list(PRESET_ORDER)
    unknown = [n for n in chosen if n not in PRESETS]
    if unknown:
        raise PolicyError(f"unknown preset(s) {', '.join(unknown)} (known: {', '.join(PRESETS)})")
    return chosen


def _close(machine: Machine | None) -> None:
    if machine is not None:
        with contextlib.suppress(BufferError, ValueError):
            machine.close()


def chain_of(system: System) -> list[ChainStep]:
    """The boot chain as ``vbsim boot --json`` shows it (boot events and the secure calls the
    Secure Kernel entered while booting)."""
    return [
        ChainStep(e.seq, e.vp, e.vtl, e.mechanism, e.outcome, e.to_json()["detail"])
        for e in system.trace.events
        if e.kind == "boot" or (e.kind == "securecall" and e.outcome == "entered")
    ]


def collect_preset(name: str) -> PresetData:
    policy = preset(name)
    system = boot(policy)
    machine = system.machine
    processes: list[ProcessInfo] = []
    drivers: list[str] = []
    if system.nt is not None and machine is not None:
        views = system.process_views()
        processes = [
            ProcessInfo(p.pid, p.name, p.user, p.trustlet_id, f"{p.protection:#04x}") for p in views
        ]
        drivers = sorted(system.modules())
    memory = (
        vtl0_memory_map(machine, include_free=True, nt=system.nt) if machine is not None else []
    )
    data = PresetData(
        name=name,
        policy=policy,
        halted=system.halted,
        vbs_running=system.vbs_running,
        ram_bytes=machine.ram.size if machine is not None else policy.ram_mib << 20,
        processes=processes,
        drivers=drivers,
        memory=memory,
        chain=chain_of(system),
        steps=list(system.steps),
        matrix=access_matrix(name),
    )
    _close(machine)
    return data


def collect_run(scenario: Scenario, preset_name: str, cap: int = DEFAULT_CAP) -> RunData:
    result, ctx = run(scenario, preset_name)
    picture: Diagram | None = None
    if result.outcome is not Outcome.NOT_APPLICABLE:
        events = ctx.trace.events
        picture = diagram(
            events[ctx.attack_start :],
            result.mechanism,
            scenario.decisive,
            cap=cap,
            before=events[: ctx.attack_start],
        )
    if ctx.system is not None:
        _close(ctx.system.machine)
    return RunData(result, anchor(scenario.id, preset_name), picture)


def collect(
    preset_names: Sequence[str] | None = None,
    scenarios: Sequence[Scenario] | None = None,
    cap: int = DEFAULT_CAP,
    progress: Callable[[str], None] | None = None,
) -> ReportData:
    """Everything the page shows; ``progress`` hears the label of each preset and run done."""
    from vbsim.attacks.catalogue import SCENARIOS

    def done(label: str) -> None:
        if progress is not None:
            progress(label)

    names = validate_presets(preset_names)
    chosen = list(scenarios if scenarios is not None else SCENARIOS)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    presets = []
    for name in names:
        presets.append(collect_preset(name))
        done(f"boot and matrix of {name}")
    seconds["presets"] = time.perf_counter() - start
    start = time.perf_counter()
    runs = {}
    for scenario in chosen:
        for name in names:
            runs[(scenario.id, name)] = collect_run(scenario, name, cap)
            done(f"{scenario.id} on {name}")
    seconds["catalogue"] = time.perf_counter() - start
    return ReportData(presets, chosen, runs, seconds)
