"""Fixtures for the NT tests: booted systems (each test gets its own machine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from vbsim.boot.chain import System, boot
from vbsim.policy import Policy, preset


@pytest.fixture
def make_system() -> Iterator[Callable[..., System]]:
    """Boot a preset (or a policy); machines are closed after the test."""
    booted: list[System] = []

    def make(policy: str | Policy = "vbs") -> System:
        system = boot(preset(policy) if isinstance(policy, str) else policy)
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
