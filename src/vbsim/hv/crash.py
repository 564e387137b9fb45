"""The guest crash enlightenment (TLFS partition-properties.md, "Partition Crash Enlightenment").

A guest that stops (a bugcheck) writes its crash parameters into HV_X64_MSR_CRASH_P0..P4 and then
HV_X64_MSR_CRASH_CTL with CrashNotify; the hypervisor logs the parameters for the root partition
("the hypervisor then makes this information available to the root partition for logging").  This
is how Hyper-V knows that a Windows guest bugchecked and with which code (the root's Hyper-V-Worker
event 18590 lists "ErrorCode0" .. "ErrorCode4": P0..P4); Linux's ``hyperv_report_panic`` writes
the same registers.

The record is the hypervisor's own observation, not the guest's claim: the VTL and VP in it are
the ones that executed the CTL write (the crash MSRs are not VTL-private state, TLFS vsm.md's
list, so every VTL writes the same five parameters; which VTL notified is what the write tells the
hypervisor).  ``wrmsr`` is a CPL0 instruction, so only a kernel of that VTL can notify.  Goals that
ask whether the Secure Kernel stopped the machine read these records (``Hypervisor.crashes``),
which guest code cannot write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.defs import HvMsr

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

FIRST_PARAMETER = int(HvMsr.CRASH_P0)
LAST_PARAMETER = int(HvMsr.CRASH_P4)
_NOTIFY = defs.CRASH_CTL_CRASH_NOTIFY.mask
_MESSAGE = defs.CRASH_CTL_CRASH_MESSAGE.mask
#: What a read of CRASH_CTL reports: the actions this hypervisor supports (TLFS "Determining Guest
#: Crash Capabilities"): CrashNotify, and CrashMessage with it.
CAPABILITIES = _NOTIFY | _MESSAGE


@dataclass(frozen=True)
class GuestCrash:
    """One CrashNotify, as the hypervisor saw it."""

    vp: int
    vtl: int
    #: P0..P4 at the time of the notify (Windows: the bugcheck code, then its four parameters).
    parameters: tuple[int, int, int, int, int]
    #: The CrashMessage bytes (empty without CrashMessage, or when the writer may not read them).
    message: bytes = b""

    @property
    def code(self) -> int:
        return self.parameters[0]


@dataclass
class CrashRegisters:
    """The partition's five shared crash parameter registers and the notifications so far."""

    parameters: list[int] = field(default_factory=lambda: [0] * 5)
    notified: list[GuestCrash] = field(default_factory=list)


def access(hv: Hypervisor, vp: VirtualProcessor, msr: int, value: int | None) -> int | None:
    """A crash MSR read (``value`` None) or write; None means #GP (not a crash MSR)."""
    registers = hv.crash_registers
    if FIRST_PARAMETER <= msr <= LAST_PARAMETER:
        if value is None:
            return registers.parameters[msr - FIRST_PARAMETER]
        registers.parameters[msr - FIRST_PARAMETER] = value
        return 0
    if msr != HvMsr.CRASH_CTL:
        return None
    if value is None:
        return CAPABILITIES
    if value & _NOTIFY:
        p = registers.parameters
        message = _message(hv, vp, p[3], p[4]) if value & _MESSAGE else b""
        crash = GuestCrash(vp.index, vp.vtl, (p[0], p[1], p[2], p[3], p[4]), message)
        registers.notified.append(crash)
        if hv.trace.on:
            vp.emit("crash", "hypervisor", "notified", code=p[0], params=p[1:])
    return 0


def _message(hv: Hypervisor, vp: VirtualProcessor, gpa: int, length: int) -> bytes:
    """The CrashMessage bytes at ``gpa`` (at most 4096, TLFS).  [model] The TLFS does not say
    whose view of memory the hypervisor reads them through; the model reads only pages the
    notifying VTL's own SLAT lets it read, as it checks hypercall parameter pages, so that VTL0
    cannot have VTL1's memory copied into the root's log."""
    length = min(length, defs.CRASH_MESSAGE_MAX)
    if length <= 0 or not hv.ram.backed(gpa, length):
        return b""
    first, last = gpa >> 12, (gpa + length - 1) >> 12
    readable = defs.HvMapGpaFlags.READABLE
    if any(not hv.slat.rights(vp.vtl, gpn) & readable for gpn in range(first, last + 1)):
        return b""
    return hv.ram.read(gpa, length)
