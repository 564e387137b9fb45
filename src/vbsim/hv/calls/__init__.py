"""Hypercall handlers, one module per family, registered into the dispatch table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hv.calls import flush, intercept, protection, registers, start_vp, translate, vtl_enable

if TYPE_CHECKING:
    from vbsim.hv.dispatch import Dispatcher


def register_all(dispatcher: Dispatcher) -> None:
    for module in (vtl_enable, protection, registers, translate, start_vp, flush, intercept):
        for spec in module.SPECS:
            dispatcher.register(spec)
