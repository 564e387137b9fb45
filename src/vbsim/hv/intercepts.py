"""Raising a secure intercept to the higher VTL and reading how it was resolved (vsm-spec §6).

"A secure intercept is queued to the higher VTL, and that VTL is made runnable on the VP."  The
faulting instruction is not retired.  The higher VTL resolves it by injecting an exception into the
lower VTL (PendingEvent0), by emulating the access and moving the lower VTL's RIP past it, or by
doing neither — then the instruction runs again.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from vbsim.hv import defs, synic
from vbsim.hv.defs import HvVtlEntryReason

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor


class InterceptOutcome(Enum):
    COMPLETED = "completed"  # the higher VTL moved RIP past the instruction (emulated/skipped)
    EXCEPTION = "exception"  # an exception was injected and delivered in the lower VTL
    RETRY = "retry"  # nothing changed: the instruction runs again
    UNDELIVERABLE = "undeliverable"  # no higher VTL could take the message


def raise_intercept(
    hv: Hypervisor, vp: VirtualProcessor, intercept: synic.Intercept
) -> InterceptOutcome:
    origin = vp.vtl
    bank = vp.p
    rip_before = bank.rip
    target = intercept.vtl
    if target <= origin or not synic.post(
        hv,
        vp,
        target,
        defs.HV_SYNIC_INTERCEPTION_SINT_INDEX,
        intercept.message_type,
        intercept.payload,
    ):
        if hv.trace.on:
            vp.emit("intercept", "synic", "undeliverable", what=intercept.what, gpa=intercept.gpa)
        return InterceptOutcome.UNDELIVERABLE
    if hv.trace.on:
        vp.emit(
            "intercept",
            "secure-intercept",
            "posted",
            what=intercept.what,
            to_vtl=target,
            message_type=intercept.message_type,
            gpa=intercept.gpa,
        )
    pending_before = hv.states[vp.index][origin].pending_event[0]
    vector = synic.sint_vector(hv, vp, target, defs.HV_SYNIC_INTERCEPTION_SINT_INDEX)
    hv.states[vp.index][target].pending_interrupts.append(vector)
    hv.enter_vtl(vp, target, HvVtlEntryReason.INTERRUPT)  # delivers pending events on return
    if vp.vtl != origin:  # pragma: no cover - enter_vtl guarantees the return
        return InterceptOutcome.RETRY
    if (
        defs.PEV_EVENT_PENDING.extract(pending_before)
        or hv.states[vp.index][origin].pending_event[0]
    ):
        return InterceptOutcome.EXCEPTION
    if hv.last_injected.get(vp.index):
        hv.last_injected[vp.index] = False
        return InterceptOutcome.EXCEPTION
    if bank.rip != rip_before:
        return InterceptOutcome.COMPLETED
    return InterceptOutcome.RETRY
