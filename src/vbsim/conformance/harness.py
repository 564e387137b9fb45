"""The partitions conformance cases run on: the bare partition (``vbsim.guest.bare``) before and
after VSM is enabled, and a way for a case to act as the software of a given VTL.

A case is host-side (like a kvm-unit-tests or OpenTMK test binary's harness): it builds the
partition, then issues hypercalls and memory accesses through a virtual processor exactly as
guest code would, and reads results from guest RAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vbsim.guest import hvcall
from vbsim.guest.bare import BareKernel, Monitor, boot_vtl1, enable_hypercalls
from vbsim.hv.hypervisor import Hypervisor
from vbsim.hv.profile import StatusProfile
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.vp import VirtualProcessor
from vbsim.machine import Machine
from vbsim.trace import Trace

RAM = 64 << 20
#: The status profile partitions are built with (None: the hypervisor's default), set by
#: :func:`using_profile` so one run can compare the model's behaviour under each source.
_PROFILE: list[StatusProfile | None] = [None]


@contextmanager
def using_profile(profile: StatusProfile | None) -> Iterator[None]:
    previous = _PROFILE[0]
    _PROFILE[0] = profile
    try:
        yield
    finally:
        _PROFILE[0] = previous


@dataclass
class Partition:
    """A bare partition: VTL0 kernel always, the VTL1 monitor once :meth:`enable_vsm` ran."""

    machine: Machine
    kernel: BareKernel
    monitor: Monitor
    trace: Trace

    @property
    def vp(self) -> VirtualProcessor:
        return self.machine.bsp

    @property
    def hv(self) -> Hypervisor:
        hv = self.machine.hv
        assert hv is not None
        return hv

    def enable_vsm(self) -> None:
        """VTL0 enables VTL1 on the BSP and the monitor configures VSM (LVBS's order)."""
        failures = boot_vtl1(self.vp.cpu, self.kernel, self.monitor)
        if failures:
            raise AssertionError(f"VSM enablement failed: {failures}")

    def close(self) -> None:
        self.machine.close()


def partition(
    vps: int = 2, vsm: bool = True, profile: StatusProfile | None = None, ram: int = RAM
) -> Partition:
    """A fresh partition; with ``vsm`` False, VTL0 has only its hypercall page (the state
    kvm-unit-tests' negative tests start from).  The test suite's ``bare`` fixture is one too."""
    trace = Trace(record=True)
    machine = Machine(ram_size=ram, vps=vps, trace=trace)
    profile = profile if profile is not None else _PROFILE[0]
    if profile is not None:
        assert machine.hv is not None
        machine.hv.profile = profile
    kernel = BareKernel.load(machine)
    monitor = Monitor.load(machine)
    env = Partition(machine, kernel, monitor, trace)
    if vsm:
        env.enable_vsm()
    else:
        _, hypercall_gpa = kernel.space.alloc_data()
        for vp in machine.vps:
            enable_hypercalls(vp.cpu, hypercall_gpa)
    return env


@contextmanager
def as_vtl(vp: VirtualProcessor, vtl: int) -> Iterator[VirtualProcessor]:
    """Act as the software of ``vtl`` on ``vp`` (a debugger's view, as tests/conftest.py does:
    the case stands in for code that VTL would run)."""
    previous = vp.vtl
    vp.switch_vtl(vtl)
    try:
        yield vp
    finally:
        vp.switch_vtl(previous)


def vtl1_pages(env: Partition) -> hvcall.ParamPages:
    return env.monitor.params


@guest_code("conformance.ret")
def _ret(cpu: Cpu) -> None:
    """A routine that only returns: what an execute probe tries to run."""
