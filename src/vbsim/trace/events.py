"""The trace: structured events, cheap when nobody listens.

Producers test ``trace.on`` before building an event, so a machine running with tracing off pays
one attribute load per decision.  An event names *who* acted (VP, VTL, CPL and an actor label),
*what* happened (``kind``), the *mechanism* that decided it (``slat``, ``paging.us``, ``smep``,
``hypercall``, ``iommu`` ...), the *outcome* and free-form details.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Listener = Callable[["Event"], None]


@dataclass(slots=True, frozen=True)
class Event:
    seq: int
    kind: str
    mechanism: str
    outcome: str
    vp: int | None = None
    vtl: int | None = None
    cpl: int | None = None
    actor: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "mechanism": self.mechanism,
            "outcome": self.outcome,
            "vp": self.vp,
            "vtl": self.vtl,
            "cpl": self.cpl,
            "actor": self.actor,
            "detail": {k: _jsonable(v) for k, v in self.detail.items()},
        }


@dataclass(slots=True, frozen=True)
class Execution:
    """One execution of a routine that carries a breakpoint (``vbsim.hw.code``), recorded by
    the processor that fetched its code: where it ran (VP, VTL, CPL) and at which address.
    Only the platform appends these (guest code holds no trace, and ``emit`` makes events, not
    executions), so a verdict that reads them cannot be told by the code under test that it
    ran.  ``seq`` is on the trace's event clock, to place an execution among events."""

    seq: int
    routine: str
    va: int
    vp: int
    vtl: int
    cpl: int
    #: the guest-physical address the thunk was fetched from (-1: not known)
    gpa: int = -1


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | str | float) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class Trace:
    """An append-only event log with listeners.  ``on`` is False until someone listens."""

    __slots__ = ("_listeners", "_record", "_seq", "events", "executions", "on")

    def __init__(self, record: bool = False) -> None:
        self.events: list[Event] = []
        #: Executions of breakpoint routines, whether or not events are recorded (platform only).
        self.executions: list[Execution] = []
        self._listeners: list[Listener] = []
        self._record = record
        self._seq = 0
        self.on = record

    def record(self, enabled: bool = True) -> None:
        """Keep events in ``events`` (in addition to telling listeners)."""
        self._record = enabled
        self.on = enabled or bool(self._listeners)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)
        self.on = True

    def unlisten(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        self.on = self._record or bool(self._listeners)

    def emit(
        self,
        kind: str,
        mechanism: str,
        outcome: str,
        *,
        vp: int | None = None,
        vtl: int | None = None,
        cpl: int | None = None,
        actor: str = "",
        **detail: Any,
    ) -> Event:
        self._seq += 1
        event = Event(self._seq, kind, mechanism, outcome, vp, vtl, cpl, actor, detail)
        if self._record:
            self.events.append(event)
        for listener in self._listeners:
            listener(event)
        return event

    def executed(
        self, routine: str, va: int, vp: int, vtl: int, cpl: int, gpa: int = -1
    ) -> Execution:
        """The platform's record that a processor fetched and ran a breakpoint routine (from
        guest-physical ``gpa``)."""
        self._seq += 1
        execution = Execution(self._seq, routine, va, vp, vtl, cpl, gpa)
        self.executions.append(execution)
        return execution

    @property
    def now(self) -> int:
        """The sequence number of the last event or execution recorded (a mark for ``since``)."""
        return self._seq

    def ran(self, routine: str, since: int = 0) -> list[tuple[int, int]]:
        """(VTL, CPL) of each execution of ``routine`` after event ``since``."""
        return [(e.vtl, e.cpl) for e in self.executions if e.routine == routine and e.seq > since]

    def clear(self) -> None:
        self.events.clear()

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def find(self, kind: str | None = None, mechanism: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if (kind is None or e.kind == kind) and (mechanism is None or e.mechanism == mechanism)
        ]

    def to_json(self) -> str:
        return json.dumps([e.to_json() for e in self.events])
