"""Small end-to-end runs of the platform that the CLI, the benchmark and the tests share."""

from __future__ import annotations

from dataclasses import dataclass, field

from vbsim.guest.bare import MON_PROTECT, BareKernel, Monitor, boot_bare, monitor_call
from vbsim.hw.faults import GuestTermination
from vbsim.machine import Machine
from vbsim.trace import Event, Trace

SECRET = b"VTL1-ONLY:the quick brown fox"


@dataclass
class ProtectDemo:
    """VTL1 takes a page from VTL0, then VTL0 ring 0 tries to read it."""

    machine: Machine
    kernel: BareKernel
    monitor: Monitor
    page_gpa: int
    boot_failures: list[str]
    protect_status: int
    read_result: bytes | None
    termination: str | None
    events: list[Event] = field(default_factory=list)

    @property
    def leaked(self) -> bool:
        return self.read_result is not None and SECRET in self.read_result


def protect_demo(ram_size: int = 1 << 30, vps: int = 1) -> ProtectDemo:
    trace = Trace(record=True)
    machine = Machine(ram_size=ram_size, vps=vps, trace=trace)
    kernel, monitor, failures = boot_bare(machine)
    vp = machine.bsp
    vp.actor = "bare-kernel"
    va, gpa = kernel.space.alloc_data()
    vp.write(va, SECRET)  # VTL0 owns the page and writes something into it
    status = monitor_call(vp.cpu, MON_PROTECT, gpa, 0)  # VTL1: no access for VTL0
    read: bytes | None = None
    termination: str | None = None
    try:
        read = vp.read(va, len(SECRET))
    except GuestTermination as stop:
        termination = str(stop)
    return ProtectDemo(
        machine, kernel, monitor, gpa, failures, status, read, termination, list(trace.events)
    )
