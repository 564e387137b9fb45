"""HvCallFlushVirtualAddressSpace (0x02) / List (0x03) — vsm-spec §1.3, §5.7.

Flushes the caller VTL's TLB on the VPs in the processor mask.  The model's TLB is not tagged by
address space (no PCIDs), so a flush for a given CR3 drops the whole VTL's entries on a VP whose
current CR3 is that address space.  A VP whose TLB a higher VTL has locked (TlbLocked) keeps its
entries until the lock is released at the higher VTL's VtlReturn (the caller would be suspended
until then; the model defers the flush instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.defs import HvCallCode, HvStatus
from vbsim.hv.defs import HvFlushFlags as Flags
from vbsim.hv.dispatch import CallContext, CallSpec

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

_KNOWN = int(
    Flags.ALL_PROCESSORS | Flags.ALL_VIRTUAL_ADDRESS_SPACES | Flags.NON_GLOBAL_MAPPINGS_ONLY
)


def _targets(hv: Hypervisor, flags: int, mask: int) -> list[VirtualProcessor]:
    if flags & Flags.ALL_PROCESSORS:
        return list(hv.vps)
    return [vp for vp in hv.vps if vp.index < 64 and mask >> vp.index & 1]


def _locked(hv: Hypervisor, vp: VirtualProcessor, vtl: int) -> bool:
    return any(
        hv.states[vp.index][higher].secure_config.get(vtl, 0) & defs.SECCFG_TLB_LOCKED.mask
        for higher in range(vtl + 1, len(vp.banks))
    )


def _apply(
    hv: Hypervisor, ctx: CallContext, space: int, flags: int, mask: int, pages: list[int] | None
) -> None:
    vtl = ctx.caller_vtl
    for vp in _targets(hv, flags, mask):
        bank = vp.banks[vtl]
        if bank is None:
            continue
        if not flags & Flags.ALL_VIRTUAL_ADDRESS_SPACES and bank.cr3 & ~0xFFF != space & ~0xFFF:
            continue
        if _locked(hv, vp, vtl):
            hv.states[vp.index][vtl].deferred_flush = True
            continue
        if pages is None:
            vp.tlbs[vtl].flush_all(keep_global=bool(flags & Flags.NON_GLOBAL_MAPPINGS_ONLY))
        else:
            for vpn in pages:
                vp.tlbs[vtl].flush_page(vpn)


def flush_virtual_address_space(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    space, flags, mask = defs.FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT.unpack(ctx.header)
    if flags & ~_KNOWN:
        return HvStatus.INVALID_PARAMETER, 0
    _apply(hv, ctx, space, flags, mask, None)
    return HvStatus.SUCCESS, 0


def flush_virtual_address_list(hv: Hypervisor, ctx: CallContext) -> tuple[HvStatus, int]:
    space, flags, mask = defs.FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT.unpack(ctx.header)
    if flags & ~_KNOWN:
        return HvStatus.INVALID_PARAMETER, ctx.call.rep_start
    pages: list[int] = []
    for element in ctx.elements:
        value = int.from_bytes(element, "little")
        first = value >> 12  # GVA page number; bits 11:0 count additional pages (TLFS)
        pages.extend(first + i for i in range((value & 0xFFF) + 1))
    _apply(hv, ctx, space, flags, mask, pages)
    return HvStatus.SUCCESS, ctx.call.rep_start + len(ctx.elements)


SPECS = (
    CallSpec(HvCallCode.FLUSH_VIRTUAL_ADDRESS_SPACE, flush_virtual_address_space, 24),
    CallSpec(HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST, flush_virtual_address_list, 24, rep_in=8),
)
