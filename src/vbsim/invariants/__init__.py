"""Isolation invariants checked on every step (:mod:`.monitor`), the property-based attacker that
tries to break them (:mod:`.attacker`) and the soak runner (:mod:`.soak`)."""

from __future__ import annotations

from vbsim.invariants.monitor import (
    DESCRIPTIONS,
    INVARIANTS,
    InvariantViolation,
    Monitor,
    Stats,
    Violation,
)

__all__ = [
    "DESCRIPTIONS",
    "INVARIANTS",
    "InvariantViolation",
    "Monitor",
    "Stats",
    "Violation",
]
