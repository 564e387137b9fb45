"""Issue 11 item 13: HyperGuard is a policy switch, on in every VBS preset (WI7-P2; Shafir,
'HyperGuard' 2022), and A4's outcome follows it rather than VBS as such."""

from __future__ import annotations

from collections.abc import Callable

from vbsim.attacks.catalogue import by_id
from vbsim.attacks.model import Outcome
from vbsim.attacks.runner import run
from vbsim.policy import PRESETS


def test_every_vbs_preset_runs_hyperguard_and_vbs_off_none() -> None:
    assert {name: p.hyperguard for name, p in PRESETS.items()} == {
        name: p.vbs for name, p in PRESETS.items()
    }


def test_a4_follows_the_switch(preset_variant: Callable[..., str]) -> None:
    a4 = by_id("A4")
    result, ctx = run(a4, "vbs")
    assert result.outcome is Outcome.BLOCKED and result.mechanism == "hyperguard"
    result, ctx = run(a4, preset_variant("vbs", hyperguard=False))
    assert result.outcome is Outcome.SUCCEEDED
    disabled = [e for e in ctx.trace.events if e.mechanism == "hyperguard"]
    assert disabled and {e.outcome for e in disabled} == {"disabled"}
    assert ctx.system is not None and ctx.system.machine is not None
    assert len(disabled) == len(ctx.system.machine.vps)  # each processor skipped its intercepts
