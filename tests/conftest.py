"""Shared fixtures: a bare partition with VTL1 enabled, and a way to act as a given VTL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from vbsim.guest.bare import BareKernel, Monitor, boot_bare
from vbsim.hw.vp import VirtualProcessor
from vbsim.machine import Machine
from vbsim.trace import Trace


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The model PKI is created on first use under the user's data directory; tests use their
    own, so a test run never touches (or depends on) the user's."""
    previous = os.environ.get("VBSIM_DATA_DIR")
    os.environ["VBSIM_DATA_DIR"] = str(tmp_path_factory.mktemp("vbsim-data"))
    yield
    if previous is None:
        os.environ.pop("VBSIM_DATA_DIR", None)
    else:
        os.environ["VBSIM_DATA_DIR"] = previous


@dataclass
class Bare:
    machine: Machine
    kernel: BareKernel
    monitor: Monitor
    trace: Trace

    @property
    def vp(self) -> VirtualProcessor:
        return self.machine.bsp


def make_bare(vps: int = 1, ram: int = 64 << 20) -> Bare:
    trace = Trace(record=True)
    machine = Machine(ram_size=ram, vps=vps, trace=trace)
    kernel, monitor, failures = boot_bare(machine)
    assert failures == []
    return Bare(machine, kernel, monitor, trace)


@pytest.fixture
def bare() -> Iterator[Bare]:
    env = make_bare()
    yield env
    env.machine.close()


@contextmanager
def as_vtl(vp: VirtualProcessor, vtl: int) -> Iterator[VirtualProcessor]:
    """Run test code as if it were the software of ``vtl`` on ``vp`` (a debugger's view: the
    harness stands in for code that VTL would run)."""
    previous = vp.vtl
    vp.switch_vtl(vtl)
    try:
        yield vp
    finally:
        vp.switch_vtl(previous)
