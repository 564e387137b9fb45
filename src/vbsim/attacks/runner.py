"""Run scenarios under presets and compare with the public record."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vbsim.attacks.context import AttackAborted, AttackContext
from vbsim.attacks.model import PRESET_ORDER, Outcome, RunResult, Scenario
from vbsim.attacks.verdict import deciding_mechanism
from vbsim.boot.disk import Disk
from vbsim.hw.faults import GuestTermination
from vbsim.policy import preset


def prepare(scenario: Scenario, preset_name: str) -> AttackContext:
    policy = preset(preset_name)
    return AttackContext(policy, preset_name, Disk.install(policy))


def run(scenario: Scenario, preset_name: str) -> tuple[RunResult, AttackContext]:
    ctx = prepare(scenario, preset_name)
    expected = scenario.expected.get(preset_name, Outcome.NOT_APPLICABLE)
    if not scenario.applicable(ctx.policy):
        result = RunResult(
            scenario.id,
            scenario.title,
            str(scenario.capability),
            preset_name,
            Outcome.NOT_APPLICABLE,
            expected,
            "-",
            scenario.source,
        )
        return result, ctx
    detail = ""
    try:
        if scenario.before_boot is not None:
            scenario.before_boot(ctx)
        ctx.boot()
        ctx.attack_start = len(ctx.trace.events)
        scenario.steps(ctx)
    except AttackAborted as stop:
        detail = str(stop)
    except GuestTermination as stop:  # a flow the scenario did not wrap
        ctx.stops.append(stop)
    succeeded = scenario.goal_met(ctx)
    events = ctx.trace.events[ctx.attack_start :]
    mechanism = "-" if succeeded else deciding_mechanism(events, scenario.decisive)
    if not detail and ctx.stops:
        detail = str(ctx.stops[-1])
    if ctx.system is not None and ctx.system.halted:
        detail = ctx.system.halted
        if not succeeded and mechanism == "-":
            mechanism = deciding_mechanism(ctx.trace.events)
    outcome = Outcome.SUCCEEDED if succeeded else Outcome.BLOCKED
    result = RunResult(
        scenario.id,
        scenario.title,
        str(scenario.capability),
        preset_name,
        outcome,
        expected,
        mechanism,
        scenario.source,
        detail,
        len(ctx.trace.events),
    )
    return result, ctx


def run_catalogue(
    scenarios: Iterable[Scenario],
    presets: Iterable[str] = PRESET_ORDER,
    progress: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every scenario under every preset; ``progress`` hears of each run as it ends."""
    results = []
    presets = list(presets)
    for scenario in scenarios:
        for name in presets:
            result = run(scenario, name)[0]
            results.append(result)
            if progress is not None:
                progress(result)
    return results
