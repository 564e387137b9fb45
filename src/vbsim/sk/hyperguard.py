"""HyperGuard: secure intercepts on VTL0 writes to control registers, MSRs and descriptor tables
(vbs-internals §5.7; the set and masks follow LVBS's ``mshv_vsm_lock_regs``, vsm-spec §6.4).

A model simplification: on Windows NT hands HyperGuard the MSR and control-register extents to
watch (SKPG extent types 0x1003/0x1006/0x100C, Shafir 2022); here the SK uses that fixed set.
It runs when the policy's ``hyperguard`` switch is on (every VBS preset; see ``vbsim.policy``).

Until PHASE3_INIT the SK trusts VTL0 and lets every write through (emulating it into VTL0's state
and stepping over the instruction).  At PHASE3_INIT it records the values NT set ("trusted IDT/GDT/
syscall-MSR values", vbs-internals §1.1 row 13); from then on a write that changes a protected bit
bugchecks the machine with HYPERGUARD_VIOLATION (0x18C).  Writes of the trusted value itself (an AP
loading the same IDT as the BSP) are emulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from vbsim.guest import hvcall
from vbsim.hv.defs import HvCrInterceptControl as Cic
from vbsim.hv.defs import HvRegisterName as Reg
from vbsim.hw.x86 import Cr0, Cr4, Msr
from vbsim.ntstatus import BugCheck
from vbsim.sk.layouts import Config

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

CONTROL = int(
    Cic.CR0_WRITE
    | Cic.CR4_WRITE
    | Cic.GDTR_WRITE
    | Cic.IDTR_WRITE
    | Cic.LDTR_WRITE
    | Cic.TR_WRITE
    | Cic.MSR_LSTAR_WRITE
    | Cic.MSR_STAR_WRITE
    | Cic.MSR_CSTAR_WRITE
    | Cic.APIC_BASE_MSR_WRITE
    | Cic.MSR_EFER_WRITE
    | Cic.MSR_SYSENTER_CS_WRITE
    | Cic.MSR_SYSENTER_EIP_WRITE
    | Cic.MSR_SYSENTER_ESP_WRITE
    | Cic.MSR_SFMASK_WRITE
)
CR0_MASK = int(Cr0.PE | Cr0.WP | Cr0.PG)
CR4_MASK = ~int(Cr4.MCE | Cr4.PGE | Cr4.PCE | Cr4.VMXE) & 0xFFFF_FFFF_FFFF_FFFF

#: Registers whose VTL0 values are recorded at PHASE3 (name, mask compared).
TRUSTED: Mapping[int, int] = MappingProxyType(
    {
        int(Reg.CR0): CR0_MASK,
        int(Reg.CR4): CR4_MASK,
        int(Reg.EFER): 0xFFFF_FFFF_FFFF_FFFF,
        int(Reg.LSTAR): 0xFFFF_FFFF_FFFF_FFFF,
        int(Reg.STAR): 0xFFFF_FFFF_FFFF_FFFF,
        int(Reg.CSTAR): 0xFFFF_FFFF_FFFF_FFFF,
        int(Reg.SFMASK): 0xFFFF_FFFF_FFFF_FFFF,
        int(Reg.IDTR): (1 << 128) - 1,
        int(Reg.GDTR): (1 << 128) - 1,
    }
)

MSR_REGISTERS: Mapping[int, int] = MappingProxyType(
    {
        int(Msr.LSTAR): int(Reg.LSTAR),
        int(Msr.STAR): int(Reg.STAR),
        int(Msr.CSTAR): int(Reg.CSTAR),
        int(Msr.SFMASK): int(Reg.SFMASK),
        int(Msr.EFER): int(Reg.EFER),
        int(Msr.APIC_BASE): int(Reg.APIC_BASE),
        int(Msr.SYSENTER_CS): int(Reg.SYSENTER_CS),
        int(Msr.SYSENTER_EIP): int(Reg.SYSENTER_EIP),
        int(Msr.SYSENTER_ESP): int(Reg.SYSENTER_ESP),
    }
)


def register_intercepts(sk: SecureKernel, vp: Cpu) -> None:
    """On this processor (the SK runs it on each one as it starts, as SkpgConnect's IPI runs
    SkpgxInstallIntercepts on every processor: Shafir 2022), ask the hypervisor for the secure
    intercepts — unless HyperGuard is switched off (``policy.hyperguard``), when VTL0's CR, MSR
    and descriptor-table writes go straight through."""
    if not sk.config(vp, Config.HYPERGUARD):
        sk.emit(vp, "hyperguard", "hyperguard", "disabled", vp_index=vp.index)
        return
    result = hvcall.set_vp_registers(
        vp,
        sk.params,
        [
            (int(Reg.CR_INTERCEPT_CR0_MASK), CR0_MASK),
            (int(Reg.CR_INTERCEPT_CR4_MASK), CR4_MASK),
            (int(Reg.CR_INTERCEPT_CONTROL), CONTROL),
        ],
    )
    if not result.ok:
        sk.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 3, result.status)


def record_trusted(sk: SecureKernel, vp: Cpu) -> None:
    names = list(TRUSTED)
    result, values = hvcall.get_vp_registers(vp, sk.params, names, target_vtl=0)
    if not result.ok:
        sk.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 4, result.status)
    sk.record_trusted(vp, dict(zip(names, values, strict=True)))


def decide(sk: SecureKernel, vp: Cpu, register: int, value: int, rip: int, length: int) -> None:
    """Allow (emulate and step over) or bugcheck."""
    from vbsim.sk.kernel import Phase

    allowed = True
    trusted = sk.trusted(vp)
    if sk.phase(vp) in (Phase.PHASE3, Phase.PHASE4) and register in trusted:
        mask = TRUSTED[register]
        allowed = (value & mask) == (trusted[register] & mask)
    name = Reg(register).name if register in Reg._value2member_map_ else hex(register)
    if not allowed:
        sk.emit(
            vp,
            "hyperguard",
            "hyperguard",
            "violation",
            register=name,
            value=value,
            trusted=trusted.get(register),
        )
        sk.bugcheck(vp, BugCheck.HYPERGUARD_VIOLATION, register, value)
    result = hvcall.set_vp_registers(
        vp, sk.params, [(register, value), (int(Reg.RIP), rip + length)], target_vtl=0
    )
    sk.emit(
        vp,
        "hyperguard",
        "hyperguard",
        "allowed",
        register=name,
        value=value,
        status=result.status_name,
    )
