"""What of DESIGN.md's one rule is not yet true, written down: a ratchet that only shrinks.

Issue 10 moves the kernels onto the architectural CPU piece by piece.  What remains is listed in
``known_debt.json`` beside this file: guest-code violations (file, function, rule, detail, with
a count), each with its reason under ``reasons`` (same file and key: why it is there and how it
would be paid), and platform references still held by a kernel image or a registered routine (a
name past the ``Cpu`` surface is an AttributeError now, so there is no third list).  The tests in
``test_one_rule.py`` fail on anything **not** in that list (a new reach past the surface:
planting ``cpu.ram.read(...)`` in a step fails at once) and on any entry that **no longer**
occurs (a fixed item must leave the list, so it can never come back unnoticed).

Regenerate after fixing something: ``PYTHONPATH=src python tests/architecture/checker.py
--write-debt`` (the static part; the runtime parts are written by the tests' own failure message
telling which entries to drop).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

DEBT_FILE = Path(__file__).with_name("known_debt.json")


def load() -> dict[str, Any]:
    if not DEBT_FILE.exists():
        return {"violations": {}, "image_references": [], "reasons": {}}
    data: dict[str, Any] = json.loads(DEBT_FILE.read_text())
    data.setdefault("reasons", {})
    return data


def compare(found: Counter[str], allowed: Counter[str]) -> tuple[list[str], list[str]]:
    """(new: found beyond what the debt allows, fixed: debt entries that no longer occur)."""
    new = sorted((found - allowed).elements())
    fixed = sorted((allowed - found).elements())
    return new, fixed
