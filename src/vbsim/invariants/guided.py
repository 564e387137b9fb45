"""The guided attacker: the random program generator steered by what the model's trace shows.

The plain generator (:func:`~vbsim.invariants.attacker.random_program`) draws every program from
scratch, so a bug that needs two related secure calls (a secure allocation, then a fill of it
with an MDL aimed past its end or at a VTL1 page) is a one-in-thousands draw: unfocused it finds
neither legacy-2019 Secure Kernel bug within 1,000 programs.  This module adds the feedback a
coverage-guided fuzzer has, without being told where to look:

- **Trace novelty.**  While a program runs, every trace event's ``(kind, mechanism, outcome)``
  and every action's ``(op, secure service, outcome)`` is a *feature*, credited to the step that
  produced it.  A program reaching a feature never seen before joins a corpus (cut after its
  last live step); most later programs are mutants of corpus programs, the parent chosen by a
  tournament favouring the rarest features, and mutated mostly *at the steps that reached
  something new*: arguments re-aimed, the step redrawn with the same (op, service), actions
  inserted, replaced, deleted, spliced.  Inserted actions favour the least-run kinds of the
  vocabulary (every secure service gets its turn).
- **Resources** (as syzkaller has them).  Steps after which the attacker holds a new handle or
  cookie are *producers*; a call the kernel refuses for its object (``STATUS_INVALID_HANDLE``,
  ``STATUS_OBJECT_TYPE_MISMATCH``) is queued again with a producer — a known one, or a secure
  call whose shape takes no handle — right before it and its handles aimed at the newest.
- **Boundary-aiming arguments.**  The Secure Kernel's decisions are trace events carrying the
  numbers it checked (``size``, ``offset``, ``byte_count``, ``pfn``, ``va``...).  Those are
  collected, and a re-aimed argument is drawn next to them: ``v-1``, ``v``, ``v+1``, ``v±8``,
  just past the page boundary above ``v``, one page either side of a PFN, or a page of another
  pool where a number was.

Everything is drawn from one :class:`random.Random`, so a guided run is as reproducible as a
plain one: the same seed and the same outcomes give the same programs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.invariants.attacker import (
    CAPABILITIES,
    K0_OPS,
    PFN_POOLS,
    SERVICE_SHAPES,
    Action,
    Focus,
    Program,
    RandomDraw,
    Ref,
    RunResult,
    draw_action,
    random_program,
)
from vbsim.sk.sscn import Service
from vbsim.trace.events import Event

MASK64 = (1 << 64) - 1
#: Argument positions a mutation may re-aim, per op: numbers and references the attacker chooses
#: freely (lengths, offsets, fields, PFNs, addresses).  Positions the executor uses structurally
#: (slots, image patch bytes, descriptor limits) keep the generator's own ranges.
MUTABLE: dict[str, tuple[int, ...]] = {
    "securecall": (2, 3, 4),
    "stage_mdl": (2, 3, 4, 5),
    "stage_list": (1,),
    "read": (0, 1),
    "write": (0,),
    "dma": (1, 2),
    "hypercall": (0, 1, 2),
    "fuzzlet": (1, 2),
    "syscall": (0, 1),
    "uread": (0, 1),
    "uwrite": (0,),
    "readvm": (1, 2),
    "writevm": (1, 2),
    "dma_read": (0, 1),
    "dma_write": (0,),
}
#: Of those, the positions the executor resolves (``Session.resolve``): a number there may become
#: a page reference (elsewhere the executor does arithmetic on the raw value).
RESOLVED: dict[str, tuple[int, ...]] = {
    "securecall": (2, 3, 4),
    "stage_mdl": (2,),
    "stage_list": (1,),
    "read": (0, 1),
    "write": (0,),
    "dma": (1, 2),
    "hypercall": (0, 1, 2),
    "fuzzlet": (1, 2),
}
#: Event detail keys whose numbers are the boundaries the kernel checked.
BOUNDARY_KEYS = frozenset(
    ("size", "offset", "byte_count", "byte_offset", "pfn", "va", "needed", "pages", "length")
)
_DELTAS = (-8, -1, 0, 0, 1, 8, 16)
_PAGE_EDGES = (PAGE_SIZE - 8, PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE - 8, 2 * PAGE_SIZE)


@dataclass
class Entry:
    program: Program
    features: frozenset[tuple[str, ...]]
    #: the steps that reached something new (and the last one): where mutation pays
    novel: tuple[int, ...] = ()


@dataclass
class GuideStats:
    fresh: int = 0
    mutants: int = 0
    kept: int = 0
    features: int = 0
    repairs: int = 0


@dataclass
class Guide:
    """Draws the next program and learns from how the last one ran (see the module doc)."""

    rng: random.Random
    capabilities: Sequence[str] = CAPABILITIES
    max_actions: int = 50
    #: the share of programs drawn from scratch (the rest are mutants of the corpus)
    fresh: float = 0.3
    corpus_cap: int = 128
    #: the length of a fresh program (at most)
    fresh_actions: int = 8
    corpus: list[Entry] = field(default_factory=list)
    seen: Counter[tuple[str, ...]] = field(default_factory=Counter)
    boundaries: list[int] = field(default_factory=list)
    stats: GuideStats = field(default_factory=GuideStats)
    #: how often each (op, service) ran to its end
    ran: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: secure calls the kernel accepted (one per service): the producers of kernel objects
    accepted: list[Action] = field(default_factory=list)
    _accepted_by: set[str] = field(default_factory=set)
    #: actions after which the attacker held a new handle or cookie (resource producers)
    producers: list[Action] = field(default_factory=list)
    _repairs: list[Program] = field(default_factory=list)
    _repaired: Counter[tuple[str, str]] = field(default_factory=Counter)
    _tried: Counter[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=Counter)
    _current: set[tuple[str, ...]] = field(default_factory=set)
    _steps: Callable[[], int] | None = None
    _base: int = 0
    _credited: set[int] = field(default_factory=set)

    # -- drawing -----------------------------------------------------------------------------
    def next(self) -> Program:
        rng = self.rng
        if self._repairs and rng.random() < 0.35:
            self.stats.repairs += 1
            return self._repairs.pop(0)
        if not self.corpus or rng.random() < self.fresh:
            self.stats.fresh += 1
            # short: a long random program mostly ends its machine early; mutants grow it
            length = min(self.max_actions, self.fresh_actions)
            return random_program(rng, rng.choice(list(self.capabilities)), length)
        self.stats.mutants += 1
        parent = self._choose()
        program = parent.program
        for _ in range(8):  # a mutant that equals its parent would only repeat it
            for _ in range(rng.choice((1, 1, 2, 3))):
                program = self._mutate(program, parent.novel if program is parent.program else ())
            if program != parent.program:
                break
        return program

    def _choose(self) -> Entry:
        """A tournament of three: the entry whose rarest feature was seen least often."""
        picks = [self.rng.choice(self.corpus) for _ in range(3)]
        return min(picks, key=lambda e: min((self.seen[f] for f in e.features), default=0))

    def _pick(self, count: int, novel: tuple[int, ...]) -> int:
        """A step to mutate: one that reached something new, mostly; else the last or any."""
        rng = self.rng
        usable = [i for i in novel if i < count]
        if usable and rng.random() < 0.7:
            return rng.choice(usable)
        return count - 1 if rng.random() < 0.5 else rng.randrange(count)

    def _mutate(self, program: Program, novel: tuple[int, ...] = ()) -> Program:
        rng, actions = self.rng, list(program.actions)
        d = RandomDraw(rng)
        kind = rng.choice(_MUTATIONS)
        if kind == "insert" or not actions:
            # after the last step more often than not: that is where the prefix's state is
            at = len(actions) if rng.random() < 0.5 else rng.randint(0, len(actions))
            actions[at:at] = self._with_producer(self._rare_action(d, program.capability))
        elif kind == "replace":
            at = rng.randrange(len(actions))
            actions[at : at + 1] = self._with_producer(self._rare_action(d, program.capability))
        elif kind == "redraw" and program.capability == "K0":
            # the same (op, service) with every argument drawn afresh (handles kept on the
            # newest object): the frontier step, half of the time
            at = self._pick(len(actions), novel)
            op, service = _kind(actions[at])
            if op == "securecall" and service in SERVICE_SHAPES:
                focus = Focus((Service(service),), ("securecall",))
            else:
                focus = Focus(tuple(SERVICE_SHAPES), (op,))
            fresh = draw_action(d, "K0", focus)
            actions[at] = Action(fresh.op, _newest_handles(fresh.args))
        elif kind == "delete" and len(actions) > 1:
            del actions[rng.randrange(len(actions))]
        elif kind == "splice":
            others = [e for e in self.corpus if e.program.capability == program.capability]
            other = rng.choice(others).program.actions if others else ()
            # this program, then the last steps of another: what made a corpus program
            # interesting is usually the step appended last, and it now runs on this state
            actions = actions + list(other[-rng.randint(1, 3) :])
        else:
            aimable = [i for i, a in enumerate(actions) if a.op in MUTABLE]
            if aimable:
                # the last step half of the time: the frontier, where the program got new
                at = self._pick(len(actions), novel)
                i = (
                    at
                    if at in aimable
                    else (aimable[-1] if rng.random() < 0.5 else rng.choice(aimable))
                )
                actions[i] = self._aim(actions[i])
            else:
                actions.insert(
                    rng.randint(0, len(actions)), self._rare_action(d, program.capability)
                )
        return Program(program.capability, tuple(actions[: self.max_actions]) or program.actions)

    def _rare_action(self, d: RandomDraw, capability: str) -> Action:
        """A tournament of freshly drawn actions: the one whose (op, service) ran least often
        (steering the draw towards what the corpus has not exercised yet)."""
        if capability == "K0" and self.rng.random() < 0.5:
            # the least-run kind of the whole K0 vocabulary (ops, and secure services by
            # number), drawn through the generator's own focus: every service gets its turn
            kinds = [(op, "") for op in sorted(set(K0_OPS)) if op != "securecall"]
            kinds += [("securecall", str(service)) for service in SERVICE_SHAPES]
            least = min(self.ran[k] for k in kinds)
            op, service = self.rng.choice([k for k in kinds if self.ran[k] == least])
            if op == "securecall":
                return draw_action(d, "K0", Focus((Service(service),), ("securecall",)))
            return draw_action(d, "K0", Focus(tuple(SERVICE_SHAPES), (op,)))
        candidates = [draw_action(d, capability) for _ in range(8)]
        return min(candidates, key=lambda a: self.ran[_kind(a)])

    def _with_producer(self, action: Action) -> list[Action]:
        """``action``, and when it names a kernel object (a handle) now and then a secure call
        the kernel accepted before it: objects are what accepted calls create (resources, in
        syzkaller's terms), and a call on a handle means little without one."""
        before: list[Action] = []
        if self.accepted and _uses_handle(action) and self.rng.random() < 0.5:
            before.append(self.rng.choice(self.accepted))
        staged = _staged_mdl(action)
        if staged is not None and self.rng.random() < 0.5:
            # An MDL argument means little unless an MDL is there: a ``stage_mdl`` into the same
            # page and offset first (what the call reads is the attacker's to choose).
            slot, at = staged
            stage = draw_action(
                RandomDraw(self.rng), "K0", Focus(tuple(SERVICE_SHAPES), ("stage_mdl",))
            )
            before.append(Action(stage.op, (slot, at, *stage.args[2:])))
        return [*before, action]

    def _aim(self, action: Action) -> Action:
        """One argument of ``action`` re-aimed at a boundary (see :data:`MUTABLE`)."""
        positions = [i for i in MUTABLE[action.op] if i < len(action.args)]
        if not positions:
            return action
        args = list(action.args)
        at = self.rng.choice(positions)
        args[at] = self._aim_value(args[at], at in RESOLVED.get(action.op, ()))
        return Action(action.op, tuple(args))

    def _aim_value(self, value: Any, resolved: bool = False) -> Any:
        rng = self.rng
        if isinstance(value, Ref):  # a NamedTuple: before the tuple case, or it becomes a plain one
            return self._ref(value)
        if isinstance(value, tuple):
            leaves = [i for i, v in enumerate(value) if not isinstance(v, str)]
            if not leaves:
                return value
            i = rng.choice(leaves)
            return (*value[:i], self._aim_value(value[i], resolved), *value[i + 1 :])
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value < 0:
                return value
            if resolved and rng.random() < 0.25:  # a page where a number was
                space = rng.choice(("pfn", "pfn", "gpa", "dm"))
                return Ref(space, rng.choice(PFN_POOLS), rng.randint(0, 63))
            return self._number(value) & MASK64
        if isinstance(value, bytes) and value:
            # a little-endian boundary number in place of the first bytes (a ByteCount grown
            # in a time-of-check/time-of-use write, a length field in a message)
            number = self._number(int.from_bytes(value[:4], "little")) & 0xFFFF_FFFF
            return number.to_bytes(4, "little")[: len(value)] + value[4:]
        return value

    def _number(self, current: int) -> int:
        rng = self.rng
        base = rng.choice(self.boundaries) if self.boundaries and rng.random() < 0.7 else current
        how = rng.randrange(4)
        if how == 0:
            return base + rng.choice(_DELTAS)
        if how == 1:  # just past (or at) the next page boundary
            return (base | (PAGE_SIZE - 1)) + rng.choice((0, 1, 9))
        if how == 2:
            return base + rng.choice(_PAGE_EDGES)
        return max(0, PAGE_SIZE * rng.randint(1, 3) - base)

    def _ref(self, ref: Ref) -> Ref:
        rng = self.rng
        how = rng.randrange(4)
        if how == 0:
            return ref._replace(nth=max(0, ref.nth + rng.choice((-1, 1, 1))))
        if how == 1 and ref.space in ("pfn", "gpa", "dm"):
            return ref._replace(pool=rng.choice(PFN_POOLS))
        if how == 2 and ref.space == "pfn":  # the PFN next to one the kernel accepted
            return ref._replace(offset=ref.offset + rng.choice((-1, 1)) * PAGE_SIZE)
        return ref._replace(offset=self._number(ref.offset) % (1 << 32))

    # -- learning ----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # the step counter belongs to the machine now running, not to the state handed on
        state = dict(self.__dict__)
        state["_steps"] = None
        return state

    def begin(self, steps: Callable[[], int] | None) -> None:
        """A program starts; ``steps`` counts the monitor's steps (so a new trace feature is
        credited to the action that produced it), or None."""
        self._steps = steps
        self._base = steps() if steps is not None else 0
        self._credited = set()

    def listen(self, event: Event) -> None:
        """A trace listener: the features and boundaries of the program now running."""
        feature = (event.kind, event.mechanism, event.outcome)
        if self._steps is not None and feature not in self.seen and feature not in self._current:
            self._credited.add(self._steps() - self._base - 1)
        self._current.add(feature)
        if event.kind == "securecall" or event.kind.startswith("ium"):
            for key, value in event.detail.items():
                if key in BOUNDARY_KEYS and isinstance(value, int) and 0 <= value <= MASK64:
                    self._learn(value)

    def _learn(self, value: int) -> None:
        if value in self.boundaries:
            return
        self.boundaries.append(value)
        if len(self.boundaries) > 64:
            del self.boundaries[0]

    def _producer(self, action: Action) -> None:
        if _kind(action) not in {_kind(a) for a in self.producers}:
            self.producers.append(action)  # one per (op, service): the first that worked

    def _repair(self, program: Program, step: int) -> None:
        """A call the kernel refused for its object (a bad or wrong-type handle): queue it again
        with a producer right before it and its handles aimed at the newest one — the object
        the producer just made."""
        action = program.actions[step]
        key = _kind(action)
        if len(self._repairs) >= 32 or self._repaired[key] >= 8:
            return
        self._repaired[key] += 1
        untried = [p for p in self.producers if self._tried[key, _kind(p)] < 3]
        if untried and self.rng.random() < 0.7:
            producer = self.rng.choice(untried)
            self._tried[key, _kind(producer)] += 1
        else:
            # no producer known (or time to look for another): a secure call that takes no
            # handle, from the service table's shapes — the calls that can create an object
            creators = [svc for svc, shape in SERVICE_SHAPES.items() if shape and "h" not in shape]
            service = self.rng.choice(creators)
            producer = draw_action(RandomDraw(self.rng), "K0", Focus((service,), ("securecall",)))
        fixed = Action(action.op, _newest_handles(action.args))
        actions = (*program.actions[:step], producer, fixed)
        self._repairs.append(Program(program.capability, actions[-self.max_actions :]))

    def observe(self, program: Program, result: RunResult | None) -> bool:
        """Record how ``program`` ran (None: it ended in a violation or an exception); True when
        it reached something new (it then joins the corpus)."""
        features = self._current
        self._current = set()
        novel_steps: list[int] = [i for i in self._credited if i >= 0]
        self._credited = set()
        if result is not None:
            for number, (action, outcome) in enumerate(
                zip(program.actions, result.outcomes, strict=False)
            ):
                op, service = _kind(action)
                self.ran[op, service] += 1
                status = " ".join(outcome.split()[:2])
                step_feature = ("step", op, service, status)
                if step_feature not in self.seen and step_feature not in features:
                    novel_steps.append(number)
                features.add(step_feature)
                if status == "securecall STATUS_SUCCESS" and service not in self._accepted_by:
                    self._accepted_by.add(service)
                    self.accepted.append(action)
            for step in result.produced:
                self._producer(program.actions[step])
            for step, outcome in enumerate(result.outcomes):
                if outcome.split()[1:2] in _OBJECT_REFUSED:
                    self._repair(program, step)
            if result.terminated is not None:
                features.add(("terminated", result.terminated.split(":")[0]))
            # Keep what ran, without the step that ended the machine: mutants build on a prefix
            # that leaves a live machine (actions after a termination never run).
            kept = program.actions[: len(result.outcomes)]
            program = Program(program.capability, kept or program.actions[:1])
        new = [f for f in features if f not in self.seen]
        self.seen.update(features)
        self.stats.features = len(self.seen)
        if not new or result is None:
            return False
        self.stats.kept += 1
        last = len(program.actions) - 1
        novel = tuple(sorted({*(i for i in novel_steps if i <= last), last}))
        self.corpus.append(Entry(program, frozenset(features), novel))
        if len(self.corpus) > self.corpus_cap:
            # forget the entry whose rarest feature is most common (it adds least)
            worst = max(
                range(len(self.corpus)),
                key=lambda i: min((self.seen[f] for f in self.corpus[i].features), default=0),
            )
            del self.corpus[worst]
        return True


def _staged_mdl(action: Action) -> tuple[int, int] | None:
    """The staging slot and offset a secure call's MDL argument points at (see
    ``attacker.SERVICE_SHAPES``' ``M``), or None."""
    if action.op != "securecall" or len(action.args) < 4:
        return None
    fields = action.args[3]
    for va, pfn in pairwise(fields):
        if (
            isinstance(va, Ref)
            and isinstance(pfn, Ref)
            and (va.space, va.pool, pfn.space, pfn.pool) == ("dm", "stage", "pfn", "stage")
            and va.nth == pfn.nth
        ):
            return va.nth, va.offset
    return None


def _kind(action: Action) -> tuple[str, str]:
    return action.op, str(action.args[1]) if action.op == "securecall" and action.args else ""


def _uses_handle(action: Action) -> bool:
    def walk(value: Any) -> bool:
        if isinstance(value, Ref):
            return value.space == "handle"
        return isinstance(value, tuple) and any(walk(v) for v in value)

    return action.op == "securecall" and walk(action.args[3:4])


#: mutation kinds, weighted by repetition
_MUTATIONS = (
    *("insert", "insert", "aim", "aim", "redraw", "redraw"),
    *("replace", "delete", "splice", "splice"),
)
_OBJECT_REFUSED = (["STATUS_INVALID_HANDLE"], ["STATUS_OBJECT_TYPE_MISMATCH"])


def _newest_handles(value: Any) -> Any:
    if isinstance(value, Ref):  # a NamedTuple: never rebuilt as a plain tuple
        return value._replace(nth=0) if value.space in ("handle", "cookie") else value
    if isinstance(value, tuple):
        return tuple(_newest_handles(v) for v in value)
    return value
