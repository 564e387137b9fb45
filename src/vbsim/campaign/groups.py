"""Grouping identical failures: one group per (kind, invariant or exception type, deciding step).

The deciding step is the last action of the shrunk program (the one at which the failure shows);
for a program that does not fail alone it is the step the monitor named.  A run with hundreds of
hits on one bug thus shows one group with a count, its first program and its shrunk form.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def group_key(record: dict[str, Any]) -> str:
    deciding = record.get("deciding") or _from_label(str(record.get("label", "")))
    if record.get("outcome") == "violation":
        return f"invariant {record.get('invariant')} at {deciding}"
    kind = str(record.get("message", "")).split(":", 1)[0]
    return f"exception {kind} at {deciding}"


def _from_label(label: str) -> str:
    # "K0 #3 Action('securecall', (2, 'FILL_SECURE_ALLOCATION', ...))"
    if "Action(" not in label:
        return label or "?"
    inside = label.split("Action(", 1)[1]
    op = inside.split(",", 1)[0].strip("'\" ")
    if op == "securecall":
        parts = inside.split(",")
        if len(parts) > 2:
            service = parts[2].strip(" ()'\"")
            return f"securecall {service}"
    return op


@dataclass
class Group:
    key: str
    count: int = 0
    first: dict[str, Any] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)


def group(records: Iterable[dict[str, Any]]) -> list[Group]:
    groups: dict[str, Group] = {}
    for record in records:
        key = record.get("group")
        if not key:
            continue
        entry = groups.setdefault(key, Group(key))
        entry.count += 1
        entry.indices.append(int(record["index"]))
        if not entry.first or (not entry.first.get("shrunk") and record.get("shrunk")):
            entry.first = record
    return sorted(groups.values(), key=lambda g: (-g.count, g.key))
