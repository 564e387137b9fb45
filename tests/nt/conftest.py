"""Fixtures for the NT tests: booted systems (each test gets its own machine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from vbsim.boot.chain import System, boot
from vbsim.policy import Policy, preset
from vbsim.trace import Trace


@pytest.fixture
def make_system() -> Iterator[Callable[..., System]]:
    """Boot a preset (or a policy); ``record`` keeps the trace's events and breakpoint hits.
    Machines are closed after the test."""
    booted: list[System] = []

    def make(policy: str | Policy = "vbs", record: bool = False) -> System:
        chosen = preset(policy) if isinstance(policy, str) else policy
        system = boot(chosen, trace=Trace(record=True) if record else None)
        assert system.booted, system.halted
        booted.append(system)
        return system

    yield make
    for system in booted:
        if system.machine is not None:
            system.machine.close()


@pytest.fixture(params=["vbs", "vbs-off"])
def system(request: pytest.FixtureRequest, make_system: Callable[..., System]) -> System:
    """A booted system, with and without VBS."""
    return make_system(request.param)
