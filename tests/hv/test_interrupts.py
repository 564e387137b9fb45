"""VTL interrupt management (vsm-spec §5.6): a higher VTL preempts at once, a lower one waits."""

from __future__ import annotations

import pytest
from tests.conftest import Bare, as_vtl

from vbsim.guest.bare import MON_NULL, SINT0_VECTOR, monitor_call
from vbsim.hw.faults import ThreadTerminated

VTL0_VECTOR = 0x40


def test_an_interrupt_for_vtl0_waits_while_vtl1_runs(bare: Bare) -> None:
    hv = bare.machine.hv
    assert hv is not None
    vp = bare.vp
    with as_vtl(vp, 1):
        hv.assert_interrupt(vp, 0, VTL0_VECTOR)
        assert bare.kernel.exceptions == []  # not delivered: VTL1 cannot be preempted by VTL0
        assert list(hv.states[vp.index][0].pending_interrupts) == [VTL0_VECTOR]
    # The next VTL return into VTL0 delivers it (the bare kernel's handler records it).
    with pytest.raises(ThreadTerminated):
        monitor_call(vp, MON_NULL)
    assert bare.kernel.exceptions[-1].vector == VTL0_VECTOR
    assert bare.kernel.exceptions[-1].vtl == 0
    pending = bare.trace.find(kind="interrupt", mechanism="vtl-priority")
    assert pending and pending[-1].detail["target_vtl"] == 0


def test_an_interrupt_for_vtl1_preempts_vtl0_at_once(bare: Bare) -> None:
    hv = bare.machine.hv
    assert hv is not None
    vp = bare.vp
    start = len(bare.trace.events)
    with pytest.raises(ThreadTerminated):  # the monitor's SINT0 handler answers with #GP
        hv.assert_interrupt(vp, 1, SINT0_VECTOR)
    events = bare.trace.events[start:]
    entry = next(i for i, e in enumerate(events) if e.kind == "vtl" and e.mechanism == "vtl-entry")
    assert events[entry].detail["reason"] == "interrupt" and events[entry].detail["to_vtl"] == 1
    delivered = next(
        i
        for i, e in enumerate(events)
        if e.kind == "interrupt" and e.detail["vector"] == SINT0_VECTOR
    )
    assert delivered > entry and events[delivered].vtl == 1  # handled in VTL1, before VTL0 resumed
    assert vp.vtl == 0
