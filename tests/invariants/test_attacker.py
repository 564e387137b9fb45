"""The property-based attacker: random programs per capability, under every VBS preset, with the
monitor on every step.  No invariant may break and nothing but a guest termination may escape.

A failing program is printed by Hypothesis, shrunk; keep it in ``regressions.py``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vbsim.invariants import InvariantViolation
from vbsim.invariants.attacker import (
    CAPABILITIES,
    Action,
    Focus,
    Program,
    Ref,
    Session,
    programs,
    random_program,
    run_program,
)
from vbsim.invariants.known_bugs import strip_known_bugs
from vbsim.sk.sscn import Service

PRESETS = ("vbs", "vbs-hvci", "hardened")


@pytest.mark.parametrize("preset_name", PRESETS)
@pytest.mark.parametrize("capability", CAPABILITIES)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_program_breaks_an_invariant(
    preset_name: str, capability: str, data: st.DataObject
) -> None:
    program = data.draw(programs(capability, max_actions=12), label="program")
    program, _ = strip_known_bugs(program)
    assume(program.actions)
    run_program(program, preset_name)


def test_programs_are_reproducible_and_printable() -> None:
    for capability in CAPABILITIES:
        first = random_program(random.Random(7), capability, 30)
        assert first == random_program(random.Random(7), capability, 30)
        namespace = {"Program": Program, "Action": Action, "Ref": Ref}
        assert eval(repr(first), namespace) == first  # regressions.py keeps them as written


def test_each_capability_uses_only_its_own_interface() -> None:
    rng = random.Random(3)
    ops = {
        c: {a.op for _ in range(60) for a in random_program(rng, c, 20).actions}
        for c in CAPABILITIES
    }
    assert ops["PHYS"] <= {"dma_read", "dma_write"}
    assert "securecall" in ops["K0"] and "fuzzlet" in ops["K0"]
    assert "syscall" in ops["U0"] and not ops["U0"] & {"securecall", "wrmsr", "alpc", "ioctl"}
    assert {"alpc", "ioctl"} <= ops["A0"]


def test_a_session_reused_across_programs() -> None:
    session = Session("hardened")
    try:
        rng = random.Random(11)
        ran = 0
        while ran < 6 and session.healthy:
            program, _ = strip_known_bugs(random_program(rng, rng.choice(("U0", "PHYS")), 8))
            if program.actions:
                session.run(program)
                ran += 1
        assert ran >= 3
        assert session.monitor is not None and session.monitor.violations == []
    finally:
        session.close()


def test_the_attacker_finds_the_legacy_2019_bugs() -> None:
    """Focused on secure allocations, random K0 programs break legacy-2019's Secure Kernel: its
    unchecked parameters let them overwrite SK data (invariant 6) or read VTL1 memory out
    through a normal call (invariant 1)."""
    focus = Focus((Service.CREATE_SECURE_ALLOCATION, Service.FILL_SECURE_ALLOCATION))
    rng = random.Random(1)
    found: InvariantViolation | None = None
    for _ in range(300):
        try:
            run_program(random_program(rng, "K0", 12, focus), "legacy-2019", monitor=True)
        except InvariantViolation as violation:
            found = violation
            break
    assert found is not None and found.violation.invariant in (1, 6)
