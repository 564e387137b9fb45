"""A kernel's last act before it stops: report the crash to the hypervisor, if there is one.

The guest side of the TLFS guest crash enlightenment (partition-properties.md): find the
hypervisor (CPUID.01h:ECX bit 31) and its crash MSRs (CPUID 0x40000003 EDX bit 10), write the
bugcheck code and its four parameters into HV_X64_MSR_CRASH_P0..P4, then CrashNotify into
HV_X64_MSR_CRASH_CTL, one write per crash as the TLFS asks.  Windows guests do this (the root's
Hyper-V-Worker event 18590 shows a guest's bugcheck code and parameters as ErrorCode0..4); the
Secure Kernel doing it from VTL1 is the model's choice ([model]: no public source says how the
SK's own bugcheck reaches the root), so the hypervisor's record names the VTL that stopped.
On bare metal there is no one to tell.
"""

from __future__ import annotations

from vbsim.hv import defs
from vbsim.hv.defs import HvMsr
from vbsim.hw.cpu import Cpu

_PARAMETERS = (HvMsr.CRASH_P0, HvMsr.CRASH_P1, HvMsr.CRASH_P2, HvMsr.CRASH_P3, HvMsr.CRASH_P4)


def crash_msrs_available(vp: Cpu) -> bool:
    vp.cpuid(1)
    if not vp.rcx & defs.CPUID_HYPERVISOR_PRESENT:
        return False
    vp.cpuid(defs.CPUID_FEATURES)
    return bool(vp.rdx & defs.CPUID_EDX_GUEST_CRASH_MSRS)


def notify_hypervisor(vp: Cpu, code: int, *params: int) -> None:
    """P0 = the bugcheck code, P1..P4 = its parameters (missing ones zero), then CrashNotify.
    Ring 0 only, as the MSR writes are."""
    if not crash_msrs_available(vp):
        return
    values = (code, *params, 0, 0, 0, 0)[:5]
    for msr, value in zip(_PARAMETERS, values, strict=True):
        vp.wrmsr(msr, value & 0xFFFF_FFFF_FFFF_FFFF)
    vp.wrmsr(HvMsr.CRASH_CTL, defs.CRASH_CTL_CRASH_NOTIFY.mask)


def stop_processor(vp: Cpu) -> None:
    """The end of KeBugCheckEx, after the crash report: interrupts off, then HLT, so nothing
    runs on this processor again and IPIs to it are held (Intel SDM Vol. 2A, HLT; Windows
    Internals 7th ed. part 2 ch. 10, "Crash dump analysis")."""
    vp.cli()
    vp.hlt()
