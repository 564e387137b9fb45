"""HvCallTranslateVirtualAddress (0x52) — vsm-spec §1.3.

Walks the *target VTL's* paging context over its SLAT, for the access kinds the control flags ask
to validate.  The target VTL (bits 63:56, an HV_INPUT_VTL) may not be above the caller's
(ACCESS_DENIED), so VTL0 cannot use the hypervisor to learn VTL1's translations.  A refusal by a
higher VTL's protection is result code 8 (Intercept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import abi, defs
from vbsim.hv.calls.common import check_partition, target_vp
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hv.defs import HvTranslateGvaControlFlags as F
from vbsim.hv.defs import HvTranslateGvaResultCode as Result
from vbsim.hv.dispatch import CallContext, CallSpec
from vbsim.hw.paging import PagingLayer, SimplePagingState
from vbsim.hw.x86 import Access

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor

_FLAGS_RSVD = ((1 << 56) - 1) & ~((1 << 11) - 1)

_RESULTS = {
    "paging.p": Result.PAGE_NOT_PRESENT,
    "canonical": Result.PAGE_NOT_PRESENT,
    "paging.rsvd": Result.INVALID_PAGE_TABLE_FLAGS,
    "ram.unbacked": Result.GPA_UNMAPPED,
    "slat": Result.INTERCEPT,
    "slat.walk": Result.INTERCEPT,
}


def _overlay_pages(hv: Hypervisor, vp_index: int, vtl: int) -> set[int]:
    st = hv.states[vp_index][vtl]
    pages = set()
    if st.hypercall_msr & defs.HYPERCALL_MSR_ENABLE.mask:
        pages.add(defs.HYPERCALL_MSR_GPFN.extract(st.hypercall_msr))
    if defs.SIMP_ENABLE.extract(st.synic.simp):
        pages.add(defs.SIMP_GPFN.extract(st.synic.simp))
    if st.synic.siefp & 1:
        pages.add(st.synic.siefp >> 12)
    return pages


def translate_virtual_address(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    partition_id, vp_index, flags, gva_page = defs.TRANSLATE_VIRTUAL_ADDRESS_INPUT.unpack(
        ctx.header
    )
    status = check_partition(partition_id, hv)
    if status is not None:
        return status, 0
    vp = target_vp(hv, ctx.vp, vp_index)
    if vp is None:
        return HvStatus.INVALID_VP_INDEX, 0
    if flags & _FLAGS_RSVD:
        return HvStatus.INVALID_PARAMETER, 0
    vtl = abi.decode_input_vtl(defs.TRANSLATE_INPUT_VTL.extract(flags), ctx.caller_vtl)
    if vtl is None or vtl >= len(vp.banks):
        return HvStatus.INVALID_PARAMETER, 0
    if vtl > ctx.caller_vtl:
        return HvStatus.ACCESS_DENIED, 0
    bank = vp.banks[vtl]
    if bank is None:
        return HvStatus.INVALID_VTL_STATE, 0
    cpl = 3 if flags & F.USER_ACCESS else 0 if flags & F.SUPERVISOR_ACCESS else bank.cpl
    state = SimplePagingState(bank.cr3, bank.cr0, bank.cr4, bank.efer, cpl, bank.rflags)
    layer = PagingLayer(hv.ram, hv.slat, vtl, state, vp.mbec[vtl])
    live = vp.layers[vtl]
    if live is not None:
        layer.hlat = live.hlat  # translate as the processor would, HLAT included
    va = (gva_page << 12) & 0xFFFF_FFFF_FFFF_FFFF
    wanted = [
        a
        for flag, a in (
            (F.VALIDATE_READ, Access.READ),
            (F.VALIDATE_WRITE, Access.WRITE),
            (F.VALIDATE_EXECUTE, Access.EXECUTE),
        )
        if flags & flag
    ]
    implicit = bool(flags & F.PRIVILEGE_EXEMPT)
    result, gpa_page = Result.SUCCESS, 0
    for access in wanted or [Access.READ]:
        verdict, leaf = layer.walk(
            va, access, implicit=implicit, update_ad=bool(flags & F.SET_PAGE_TABLE_BITS)
        )
        if leaf is None:
            result = _RESULTS.get(verdict.mechanism, Result.PRIVILEGE_VIOLATION)
            gpa_page = 0
            break
        gpa_page = verdict.address >> 12
    value = int(result)
    if result is Result.SUCCESS:
        # HV_TRANSLATE_GVA_RESULT CacheType (bits 39:32) and OverlayPage (bit 40): RAM is
        # write-back in the model; the overlay pages are the target VTL's hypercall page, SIMP
        # and SIEFP (TLFS: synthetic MSRs are private per VTL, so are their overlays).
        # kvm-unit-tests test_vtl_translate_va expects WB and OverlayPage=1 for a hypercall page.
        value = defs.TRANSLATE_RESULT_CACHE_TYPE.insert(value, int(defs.HvCacheType.WRITE_BACK))
        if gpa_page in _overlay_pages(hv, vp.index, vtl):
            value |= defs.TRANSLATE_RESULT_OVERLAY_PAGE.mask
    ctx.output += defs.TRANSLATE_VIRTUAL_ADDRESS_OUTPUT.pack(value, gpa_page)
    if hv.trace.on:
        ctx.vp.emit(
            "translate",
            "translate-virtual-address",
            result.name.lower(),
            target_vtl=vtl,
            gva=va,
            gpa_page=gpa_page,
        )
    return HvStatus.SUCCESS, 0


SPECS = (
    CallSpec(HvCallCode.TRANSLATE_VIRTUAL_ADDRESS, translate_virtual_address, 32, out_size=16),
)
