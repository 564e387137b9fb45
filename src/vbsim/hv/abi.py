"""The hypercall ABI: input-value decoding, parameter blocks and result values (vsm-spec §1.1).

This module decodes and encodes; it decides nothing about VSM semantics (OpenVMM's split between
``hv1_hypercall`` and the backends, vsm-spec §7.1 point 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from vbsim.hv import defs
from vbsim.hv.defs import HvStatus


@dataclass(slots=True, frozen=True)
class HypercallInput:
    """A decoded hypercall input value (RCX)."""

    raw: int
    code: int
    fast: bool
    varhead_qwords: int
    nested: bool
    rep_count: int
    rep_start: int


def decode_input(value: int) -> HypercallInput:
    return HypercallInput(
        raw=value,
        code=defs.INPUT_CALL_CODE.extract(value),
        fast=bool(defs.INPUT_FAST.extract(value)),
        varhead_qwords=defs.INPUT_VARHEAD_SIZE.extract(value),
        nested=bool(defs.INPUT_IS_NESTED.extract(value)),
        rep_count=defs.INPUT_REP_COUNT.extract(value),
        rep_start=defs.INPUT_REP_START.extract(value),
    )


def check_input(call: HypercallInput, is_rep: bool) -> HvStatus:
    """vsm-spec §1.1: reserved bits, rep misuse → INVALID_HYPERCALL_INPUT."""
    if call.raw & defs.INPUT_RSVD_MASK or call.raw >> 64:
        return HvStatus.INVALID_HYPERCALL_INPUT
    if call.nested:
        # No nested hypervisor in the model: "handle in L0" has no meaning here.
        return HvStatus.INVALID_HYPERCALL_INPUT
    if is_rep:
        if call.rep_count == 0 or call.rep_start >= call.rep_count:
            return HvStatus.INVALID_HYPERCALL_INPUT
    elif call.rep_count or call.rep_start:
        return HvStatus.INVALID_HYPERCALL_INPUT
    return HvStatus.SUCCESS


def result_value(status: int, reps_complete: int = 0) -> int:
    """RAX: status in 15:0, reps completed in 43:32 (an absolute count)."""
    return defs.RESULT_REPS_COMPLETE.insert(int(status) & 0xFFFF, reps_complete & 0xFFF)


def decode_input_vtl(value: int, caller_vtl: int) -> int | None:
    """HV_INPUT_VTL → the VTL it names (``caller_vtl`` when UseTargetVtl is 0); None if
    reserved bits are set (OpenVMM: INVALID_PARAMETER)."""
    if value & defs.INPUT_VTL_RSVD_MASK:
        return None
    if defs.INPUT_VTL_USE_TARGET.extract(value):
        return defs.INPUT_VTL_TARGET.extract(value)
    return caller_vtl


def input_vtl(target_vtl: int | None) -> int:
    """Encode an HV_INPUT_VTL (None: the caller's own VTL)."""
    if target_vtl is None:
        return 0
    return defs.INPUT_VTL_USE_TARGET.mask | (target_vtl & 0xF)
