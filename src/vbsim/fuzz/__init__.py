"""Fuzzing every input surface of the model: targets (:mod:`.targets`), engines (:mod:`.engine`:
atheris when installed, a random mutation driver otherwise) and the CI smoke run (:mod:`.ci`)."""

from __future__ import annotations

from vbsim.fuzz.engine import Crash, FuzzResult, atheris_available, replay, run_random
from vbsim.fuzz.targets import Target, get, targets

__all__ = [
    "Crash",
    "FuzzResult",
    "Target",
    "atheris_available",
    "get",
    "replay",
    "run_random",
    "targets",
]
