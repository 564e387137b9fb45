"""Synthetic MSRs (vsm-spec §4, §5.5: per-VTL private HV MSRs).

HV_X64_MSR_HYPERCALL: the hypercall page can be enabled only once the guest OS ID is non-zero
(vsm-spec §1.1); enabling it makes the hypervisor place its stubs (vsm-spec §1.3) in that page.
The real page is an overlay; the model writes the stub bytes into RAM at that GPA (a documented
simplification: other VTLs could see them, which no scenario depends on; the stubs are written
only where the VTL's SLAT grants it write access).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import crash, defs, synic
from vbsim.hv.defs import HvMsr

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

_SINT_FIRST = int(HvMsr.SINT0)
_SINT_LAST = _SINT_FIRST + defs.HV_SYNIC_SINT_COUNT - 1
_SYNIC_VERSION = 1

#: Which partition privilege grants each synthetic MSR (TLFS hv_partition_privilege_mask.md):
#: AccessSynicRegs "HV_X64_MSR_SCONTROL through HV_X64_MSR_EOM and HV_X64_MSR_SINT0 through
#: HV_X64_MSR_SINT15"; AccessHypercallMsrs "HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL";
#: AccessVpIndex HV_X64_MSR_VP_INDEX.  Without it the MSR does not exist for the partition: #GP.
_SYNIC_MSRS = frozenset(
    {int(HvMsr.SCONTROL), int(HvMsr.SVERSION), int(HvMsr.SIEFP), int(HvMsr.SIMP), int(HvMsr.EOM)}
    | set(range(_SINT_FIRST, _SINT_LAST + 1))
)
_PRIVILEGE: dict[int, int] = {
    int(m): int(defs.HvPartitionPrivilege.ACCESS_SYNIC_REGS) for m in _SYNIC_MSRS
}
_PRIVILEGE[int(HvMsr.GUEST_OS_ID)] = int(defs.HvPartitionPrivilege.ACCESS_HYPERCALL_MSRS)
_PRIVILEGE[int(HvMsr.HYPERCALL)] = int(defs.HvPartitionPrivilege.ACCESS_HYPERCALL_MSRS)
_PRIVILEGE[int(HvMsr.VP_INDEX)] = int(defs.HvPartitionPrivilege.ACCESS_VP_INDEX)


def access(hv: Hypervisor, vp: VirtualProcessor, msr: int, value: int | None) -> int | None:
    """Read (``value`` None) or write a synthetic MSR; None means #GP."""
    needed = _PRIVILEGE.get(msr, 0)
    if needed and not hv.privileges & needed:
        return None
    st = hv.states[vp.index][vp.vtl]
    syn = st.synic
    if msr == HvMsr.GUEST_OS_ID:
        if value is None:
            return st.guest_os_id
        st.guest_os_id = value
        if value == 0:
            st.hypercall_msr &= ~defs.HYPERCALL_MSR_ENABLE.mask  # TLFS: zero disables hypercalls
        return 0
    if msr == HvMsr.HYPERCALL:
        if value is None:
            return st.hypercall_msr
        if defs.HYPERCALL_MSR_LOCKED.extract(st.hypercall_msr):
            return 0  # locked: writes are ignored
        if st.guest_os_id == 0:
            value &= ~defs.HYPERCALL_MSR_ENABLE.mask
        st.hypercall_msr = value
        if defs.HYPERCALL_MSR_ENABLE.extract(value):
            gpn = defs.HYPERCALL_MSR_GPFN.extract(value)
            page = gpn << 12
            # The real page is an overlay seen only by this VTL; the model writes RAM, so it does
            # so only where this VTL's own SLAT lets it write.  Otherwise a VTL0 kernel could
            # make the hypervisor overwrite Secure Kernel pages (found by the invariant monitor).
            writable = hv.ram.backed(page, 4096) and bool(
                hv.slat.rights(vp.vtl, gpn) & defs.HvMapGpaFlags.WRITABLE
            )
            if writable:
                for offset, stub in defs.HYPERCALL_PAGE_STUBS:
                    hv.ram.write(page + offset, stub)
            elif hv.trace.on:
                vp.emit("msr", "hypercall-page", "overlay-refused", gpa=page)
        if hv.trace.on:
            vp.emit(
                "msr",
                "hypercall-page",
                "enabled" if defs.HYPERCALL_MSR_ENABLE.extract(value) else "disabled",
                value=value,
            )
        return 0
    if msr == HvMsr.VP_INDEX:
        return vp.index if value is None else None
    if msr == HvMsr.VP_ASSIST_PAGE:
        if value is None:
            return st.vp_assist_msr
        st.vp_assist_msr = value & ~0xFFE  # bits 11:1 RsvdP read as zero in the model
        return 0
    if msr == HvMsr.SCONTROL:
        if value is None:
            return syn.scontrol
        syn.scontrol = value
        return 0
    if msr == HvMsr.SVERSION:
        return _SYNIC_VERSION if value is None else None
    if msr == HvMsr.SIMP:
        if value is None:
            return syn.simp
        syn.simp = value
        return 0
    if msr == HvMsr.SIEFP:
        if value is None:
            return syn.siefp
        syn.siefp = value
        return 0
    if msr == HvMsr.EOM:
        if value is None:
            return 0
        synic.end_of_message(hv, vp, vp.vtl)
        return 0
    if _SINT_FIRST <= msr <= _SINT_LAST:
        index = msr - _SINT_FIRST
        if value is None:
            return syn.sints[index]
        syn.sints[index] = value
        return 0
    if crash.FIRST_PARAMETER <= msr <= HvMsr.CRASH_CTL:
        return crash.access(hv, vp, msr, value)
    return None
