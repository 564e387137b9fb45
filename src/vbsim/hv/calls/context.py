"""Decoding and encoding HV_INITIAL_VP_CONTEXT (vsm-spec §1.3, 224 bytes)."""

from __future__ import annotations

from vbsim.hv import defs
from vbsim.hw.regs import PrivateState, Segment
from vbsim.hw.x86 import Cr0, Efer

_SEGMENT_KEYS = [seg.name.lower() for seg in defs.INITIAL_VP_CONTEXT_SEGMENTS]


def decode_context(raw: bytes) -> PrivateState | None:
    """A private register bank from an initial context; None for a real-mode context.

    TLFS vsm.md "Real Mode (x64 Only)": "Real mode is not supported for any VTL greater than 0 on
    x64 platforms.  VTLs greater than 0 can run in 32-bit or 64-bit mode on x64."  So CR0.PE is
    required and EFER.LMA is not: a 32-bit protected-mode context (paged or not) is accepted.
    Long mode needs paging (SDM Vol. 3A §9.8.5: LMA is set only with CR0.PG), so LMA without PG
    is an impossible context and refused as well."""
    values = dict(
        zip(defs.INITIAL_VP_CONTEXT_FIELDS, defs.INITIAL_VP_CONTEXT.unpack(raw), strict=True)
    )
    state = PrivateState(
        rip=values["rip"],
        rsp=values["rsp"],
        rflags=values["rflags"] | 2,
        cr0=values["cr0"],
        cr3=values["cr3"],
        cr4=values["cr4"],
        efer=values["efer"],
        pat=values["msr_cr_pat"],
        idtr_base=values["idtr.base"],
        idtr_limit=values["idtr.limit"],
        gdtr_base=values["gdtr.base"],
        gdtr_limit=values["gdtr.limit"],
    )
    for key in _SEGMENT_KEYS:
        segment = Segment(
            values[f"{key}.base"],
            values[f"{key}.limit"],
            values[f"{key}.selector"],
            values[f"{key}.attributes"],
        )
        if key == "tr":
            state.tr = segment
        elif key == "ldtr":
            state.ldtr = segment
        else:
            state.segments[key] = segment
    # In 64-bit mode the FS and GS bases are the IA32_FS_BASE/IA32_GS_BASE MSRs (SDM Vol. 3A
    # §3.4.4.1): the context's segment bases load them.
    state.fs_base = state.segments["fs"].base
    state.gs_base = state.segments["gs"].base
    state.cpl = defs.SEG_ATTR_DPL.extract(state.segments["cs"].attributes)
    if not state.cr0 & Cr0.PE:
        return None
    if state.efer & Efer.LMA and not state.cr0 & Cr0.PG:
        return None
    return state


def encode_context(state: PrivateState) -> bytes:
    values: dict[str, int] = {
        "rip": state.rip,
        "rsp": state.rsp,
        "rflags": state.rflags,
        "cr0": state.cr0,
        "cr3": state.cr3,
        "cr4": state.cr4,
        "efer": state.efer,
        "msr_cr_pat": state.pat,
        "idtr.base": state.idtr_base,
        "idtr.limit": state.idtr_limit,
        "gdtr.base": state.gdtr_base,
        "gdtr.limit": state.gdtr_limit,
    }
    for key in _SEGMENT_KEYS:
        segment = state.tr if key == "tr" else state.ldtr if key == "ldtr" else state.segments[key]
        values[f"{key}.base"] = (
            state.gs_base if key == "gs" else state.fs_base if key == "fs" else segment.base
        )
        values[f"{key}.limit"] = segment.limit
        values[f"{key}.selector"] = segment.selector
        values[f"{key}.attributes"] = segment.attributes
    return defs.INITIAL_VP_CONTEXT.pack(*(values[name] for name in defs.INITIAL_VP_CONTEXT_FIELDS))
