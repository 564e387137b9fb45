"""Hypervisor-side state: per-partition VSM state and per-(VP, VTL) synthetic state.

Architectural x86 state lives in the VP's register banks (:mod:`vbsim.hw.regs`).  What the
hypervisor adds — synthetic MSRs, the SynIC, VSM registers, pending events, intercept
configuration — is kept here, indexed by VTL like OpenVMM's ``VtlArray`` (vsm-spec §7.1 point 6).
Per-VTL synthetic MSRs are private to their VTL (vsm-spec §5.5: HYPERCALL, GUEST_OS_ID, VP assist
page, SynIC MSRs are in the private column).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vbsim.hv import defs

#: SINTx power-on value: masked (vsm-spec §4 SynIC table, bit 16).
SINT_MASKED = 1 << 16


@dataclass(slots=True)
class Synic:
    """One VTL's SynIC on one VP (vsm-spec §4 "SynIC pieces used for intercepts")."""

    scontrol: int = 0
    simp: int = 0
    siefp: int = 0
    sints: list[int] = field(default_factory=lambda: [SINT_MASKED] * defs.HV_SYNIC_SINT_COUNT)
    #: Messages waiting for their SIM slot to be freed (delivered on EOM), per SINT.
    queued: list[deque[bytes]] = field(
        default_factory=lambda: [deque() for _ in range(defs.HV_SYNIC_SINT_COUNT)]
    )

    def ready(self, sint: int) -> bool:
        """SCONTROL enabled, SIMP enabled and SINTx unmasked with a vector."""
        return bool(
            self.scontrol & 1
            and defs.SIMP_ENABLE.extract(self.simp)
            and not defs.SINT_MASKED.extract(self.sints[sint])
        )


@dataclass(slots=True)
class VpVtlState:
    """Hypervisor state of one VTL on one VP."""

    guest_os_id: int = 0
    hypercall_msr: int = 0
    vp_assist_msr: int = 0
    synic: Synic = field(default_factory=Synic)
    vina: int = 0
    #: HvRegisterPendingEvent0/1 of *this* VTL (written by a higher VTL to inject into this one).
    pending_event: list[int] = field(default_factory=lambda: [0, 0])
    #: HvRegisterVsmVpSecureConfigVtlN owned by this VTL, for each lower VTL N.
    secure_config: dict[int, int] = field(default_factory=dict)
    #: Secure register intercepts this VTL installed on the lower VTL (vsm-spec §4.1, §6.1).
    cr_intercept_control: int = 0
    cr0_mask: int = 0
    cr4_mask: int = 0
    misc_enable_mask: int = 0
    #: I/O ports this VTL intercepts on lower VTLs (HvCallInstallIntercept, X64IoPort).
    io_ports: dict[int, int] = field(default_factory=dict)
    #: Interrupt vectors pending for this VTL while a higher VTL runs (vsm-spec §5.6).
    pending_interrupts: deque[int] = field(default_factory=deque)
    #: A flush requested while this VTL's TLB was locked by a higher VTL (vsm-spec §5.7).
    deferred_flush: bool = False


@dataclass(slots=True)
class PartitionVsm:
    """Partition-wide VSM state (vsm-spec §4.1 VsmPartitionStatus / Config)."""

    max_vtl: int = 1
    enabled_vtls: int = 0b1  # VTL0 always runs (vsm-spec §3.4)
    mbec_vtls: int = 0
    #: VTLs enabled with EnablePartitionVtlFlags.enable_hardware_hvpt (hvdef).
    hvpt_vtls: int = 0
    #: HvRegisterVsmPartitionConfig, one instance per VTL > 0.
    config: dict[int, int] = field(default_factory=dict)

    def vtl_enabled(self, vtl: int) -> bool:
        return bool(self.enabled_vtls >> vtl & 1)

    def highest_enabled(self) -> int:
        return self.enabled_vtls.bit_length() - 1
