"""Helpers for the invariant tests: a booted system with the monitor attached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vbsim.boot.chain import System, boot
from vbsim.hw.vp import VirtualProcessor
from vbsim.invariants import Monitor
from vbsim.invariants.attacker import Ref
from vbsim.invariants.teardown import release
from vbsim.machine import Machine
from vbsim.nt.kernel import NtKernel
from vbsim.policy import Policy, preset
from vbsim.sk.kernel import SecureKernel
from vbsim.trace import Trace


@dataclass
class Rig:
    system: System
    monitor: Monitor

    @property
    def machine(self) -> Machine:
        assert self.system.machine is not None
        return self.system.machine

    @property
    def nt(self) -> NtKernel:
        assert self.system.nt is not None
        return self.system.nt

    @property
    def sk(self) -> SecureKernel:
        assert self.system.sk is not None
        return self.system.sk

    @property
    def vp(self) -> VirtualProcessor:
        return self.machine.bsp

    def invariants(self) -> set[int]:
        return {v.invariant for v in self.monitor.violations}

    def close(self) -> None:
        self.monitor.detach()
        release(self.machine)


def attached(name: str | Policy = "vbs", **options: Any) -> Rig:
    policy = preset(name) if isinstance(name, str) else name
    system = boot(policy, trace=Trace(record=True))
    assert system.booted, system.halted
    return Rig(system, Monitor.attach(system, **options))


def refs_in(value: object) -> list[Ref]:
    """Every attacker Ref inside an action argument (tuples walked)."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, tuple):
        return [r for v in value for r in refs_in(v)]
    return []
