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
  inserted, replaced, deleted, spliced, or a call's MDL argument *staged* (a ``stage_mdl``
  writing an MDL of fresh byte count, offset and PFNs where the call's MDL fields now point).
  Inserted actions favour the least-run kinds of the vocabulary (every secure service gets its
  turn).
- **Resources** (as syzkaller has them, typed).  Steps after which the attacker holds a new
  handle or cookie are *producers*.  The Secure Kernel's own trace says what each handle is:
  ``securecall.handle created type=...`` when it makes one, ``want=``/``found=`` when it refuses
  one, so the guide learns which object type each call wants and each producer makes.  A call
  the kernel refuses for its object (``STATUS_INVALID_HANDLE``, ``STATUS_OBJECT_TYPE_MISMATCH``)
  is queued again with a producer — one known to make the type it wants, else a known one of
  unknown type, else a secure call whose shape takes no handle — right before it, its
  handle-typed fields naming the newest handle.  The moment a producer of the type a
  never-accepted call wants is known, a few short programs *introduce* them: the producer, then
  the call drawn afresh and invoked plainly (its normal calls served honestly), its MDL staged.
  A call accepted on a handle teaches its
  producer (``matched``).  A mutation may also append a *consumer*: a service never accepted
  whose object a known producer makes (with that producer), or the least-run one.  A secure
  call is a service's only when its operation invokes one (SECURE_CALL_ARGS' other operations
  ignore the service code).
- **Queues, fairly.**  Repairs, and retries of a service refused for an argument
  (``STATUS_INVALID_PARAMETER``) that the kernel has never accepted, share one bounded queue;
  the kind served least goes first and no kind crowds out the others.  An accepted call that
  reached something new is *explored* first (AFL's deterministic stage, per argument): the
  program up to it, each argument of the call and of the MDL staged for it re-aimed in turn,
  each page argument moved across the trust boundary once (a VTL1 pool for a VTL0 one), the
  MDL staged afresh.  The first call a service accepts on an MDL staged in its program is
  explored too, with a budget of its own: what the MDL says is input the call's checks read.
- **Boundary-aiming arguments.**  The Secure Kernel's decisions are trace events carrying the
  numbers it checked (``size``, ``offset``, ``byte_count``, ``pfn``, ``va``...).  Those are
  collected, and a re-aimed argument is drawn next to them: ``v-1``, ``v``, ``v+1``, ``v±8``,
  just past the page boundary above ``v``, one page either side of a PFN, or a page of another
  pool where a number was.  A status no NTSTATUS names (NT's made-up answer in a hostile
  reply) counts as one feature however it differs, as AFL buckets hit counts.

Everything is drawn from one :class:`random.Random`, so a guided run is as reproducible as a
plain one: the same seed and the same outcomes give the same programs (and the outcomes repeat
too, since a soak job seeds the machine's random-number source, :mod:`vbsim.hw.entropy`).
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
    MDL_AT,
    PFN_POOLS,
    SERVICE_SHAPES,
    STAGE_PAGES,
    Action,
    Focus,
    Program,
    RandomDraw,
    Ref,
    RunResult,
    draw_action,
    random_program,
)
from vbsim.sk.callargs import OP_INVOKE_SERVICE
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
#: Those of them that are sizes in bytes (an extent: an argument just past one is an overflow).
SIZE_KEYS = frozenset(("size", "byte_count", "needed", "length"))
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
    #: per (op, service) of a call on a handle: the producer whose object it was accepted on
    matched: dict[tuple[str, str], Action] = field(default_factory=dict)
    #: programs queued by repairs and retries, with the (op, service) each is for
    #: per call kind, the object type its handle must name (the SK's refusal says ``want``)
    wants: dict[tuple[str, str], str] = field(default_factory=dict)
    #: per producer kind, the object type it makes (a refusal's ``found``, an acceptance)
    makes: dict[tuple[str, str], str] = field(default_factory=dict)
    _refused: dict[int, tuple[str, str]] = field(default_factory=dict)
    _made: dict[int, str] = field(default_factory=dict)
    _repairs: list[tuple[tuple[str, str], Program]] = field(default_factory=list)
    _served: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: variants of each service's first accepted call (see _explore), run before repairs
    _explores: list[Program] = field(default_factory=list)
    _explored: Counter[tuple[str, bool]] = field(default_factory=Counter)
    _repaired: Counter[tuple[tuple[str, str], bool]] = field(default_factory=Counter)
    _retried: Counter[str] = field(default_factory=Counter)
    _tried: Counter[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=Counter)
    #: the never-accepted calls introduced to a fitting producer (see _introduce)
    _introduced: set[tuple[str, str]] = field(default_factory=set)
    _current: set[tuple[str, ...]] = field(default_factory=set)
    #: the sizes the kernel reported while the program now running (or just run) ran
    _run_sizes: list[tuple[int, int]] = field(default_factory=list)
    _steps: Callable[[], int] | None = None
    _base: int = 0
    _credited: set[int] = field(default_factory=set)

    # -- drawing -----------------------------------------------------------------------------
    def next(self) -> Program:
        rng = self.rng
        if self._explores and rng.random() < 0.5:
            self.stats.repairs += 1
            return self._explores.pop(0)
        if self._repairs and rng.random() < 0.35:
            self.stats.repairs += 1
            return self._next_repair()
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
            redrawn = Action(fresh.op, _newest_handles(fresh.args))
            actions[at : at + 1] = self._with_producer(redrawn)
        elif kind == "stage" and program.capability == "K0":
            # a call with an MDL argument, its MDL staged right before it (see _staged)
            calls = [i for i, a in enumerate(actions) if _mdl_position(a) is not None]
            if calls:
                frontier = [i for i in novel if i in calls]
                at = rng.choice(frontier if frontier and rng.random() < 0.7 else calls)
                actions[at : at + 1] = self._staged(actions[at])
        elif kind == "consume" and program.capability == "K0":
            # a call on a kernel object, after the last step (where the prefix's objects are):
            # a service never accepted whose object type a known producer makes (then with
            # that producer right before it), else the least-run one, with a producer mostly
            ready = [
                (c, p)
                for c in _CONSUMERS
                if c.value not in self._accepted_by
                for p in self._fitting(("securecall", c.value))
            ]
            if ready and rng.random() < 0.5:
                service, producer = rng.choice(ready)
                fresh = draw_action(d, "K0", Focus((service,), ("securecall",)))
                actions += [producer, Action(fresh.op, _newest_handles(fresh.args))]
            else:
                ran = self.ran
                least = min(ran["securecall", str(service)] for service in _CONSUMERS)
                service = rng.choice([c for c in _CONSUMERS if ran["securecall", str(c)] == least])
                fresh = draw_action(d, "K0", Focus((service,), ("securecall",)))
                actions += self._with_producer(Action(fresh.op, _newest_handles(fresh.args)))
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
        if _uses_handle(action) and self.rng.random() < 0.5:
            matched = self.matched.get(_kind(action))
            fitting = self._fitting(_kind(action))
            if matched is not None and self.rng.random() < 0.7:
                before.append(matched)
            elif fitting and self.rng.random() < 0.7:
                before.append(self.rng.choice(fitting))
            elif self.accepted:
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

    def _fitting(self, key: tuple[str, str]) -> list[Action]:
        """The producers known to make the object type a call of kind ``key`` wants."""
        want = self.wants.get(key)
        return [p for p in self.producers if want and self.makes.get(_kind(p)) == want]

    def _staged(self, action: Action) -> list[Action]:
        """``action`` with its MDL argument aimed at a staging page, and a ``stage_mdl`` writing
        an MDL there first: whether a call on an MDL is refused or accepted depends on what the
        MDL says (its byte count, offset, PFNs), and only a staged MDL says what the attacker
        chose."""
        position = _mdl_position(action)
        assert position is not None
        rng = self.rng
        slot, at = rng.randrange(STAGE_PAGES), rng.choice(MDL_AT)
        fields = list(action.args[3])
        fields[position : position + 2] = [
            Ref("dm", "stage", slot, at),
            Ref("pfn", "stage", slot, 0),
        ]
        args = (*action.args[:3], tuple(fields), *action.args[4:])
        stage = draw_action(RandomDraw(rng), "K0", Focus(tuple(SERVICE_SHAPES), ("stage_mdl",)))
        return [Action(stage.op, (slot, at, *stage.args[2:])), Action(action.op, args)]

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
            return ref._replace(pool=self._across(ref.pool))
        if how == 2 and ref.space == "pfn":  # the PFN next to one the kernel accepted
            return ref._replace(offset=ref.offset + rng.choice((-1, 1)) * PAGE_SIZE)
        return ref._replace(offset=self._number(ref.offset) % (1 << 32))

    def _across(self, pool: str, always: bool = False) -> str:
        """Another page pool, across the trust boundary from ``pool`` (half of the time unless
        ``always``): a page of the other side where the kernel took one of this side is the
        question an isolation fuzzer asks first."""
        rng = self.rng
        if always or rng.random() < 0.5:
            return rng.choice(_VTL0_POOLS if pool in _VTL1_POOLS else _VTL1_POOLS)
        return rng.choice(PFN_POOLS)

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
        self._refused = {}
        self._made = {}
        self._run_sizes = []

    def listen(self, event: Event) -> None:
        """A trace listener: the features and boundaries of the program now running."""
        feature = (event.kind, event.mechanism, event.outcome)
        if self._steps is not None and feature not in self.seen and feature not in self._current:
            self._credited.add(self._steps() - self._base - 1)
        self._current.add(feature)
        if event.mechanism == "securecall.handle" and self._steps is not None:
            step = self._steps() - self._base - 1
            want, found = event.detail.get("want"), event.detail.get("found", "")
            made = event.detail.get("type")
            if isinstance(want, str) and isinstance(found, str):
                self._refused[step] = (want, found)
            elif event.outcome == "created" and isinstance(made, str):
                self._made[step] = made
        if event.kind == "securecall" or event.kind.startswith("ium"):
            for key, value in event.detail.items():
                if key in BOUNDARY_KEYS and isinstance(value, int) and 0 <= value <= MASK64:
                    self._learn(value)
                    if key in SIZE_KEYS:
                        step = self._steps() - self._base - 1 if self._steps is not None else 0
                        self._run_sizes.append((step, value))

    def _learn(self, value: int) -> None:
        if value in self.boundaries:
            return
        self.boundaries.append(value)
        if len(self.boundaries) > 64:
            del self.boundaries[0]

    def _producer(self, action: Action) -> None:
        if _kind(action) not in {_kind(a) for a in self.producers}:
            self.producers.append(action)  # one per (op, service): the first that worked

    def _match(self, program: Program, result: RunResult) -> None:
        """Learn which producer each accepted call on a handle was accepted on: the newest
        producer step before it (a handle names the newest object by default)."""
        producers = sorted(result.produced)
        for step, outcome in enumerate(result.outcomes):
            action = program.actions[step]
            if not outcome.startswith("securecall STATUS_SUCCESS") or not _uses_handle(action):
                continue
            before = [p for p in producers if p < step]
            if before and _kind(action) not in self.matched:
                self.matched[_kind(action)] = program.actions[before[-1]]
            want = self.wants.get(_kind(action))
            if before and want is not None and _names_newest(action):
                self.makes.setdefault(_kind(program.actions[before[-1]]), want)
        for step, made in self._made.items():
            if 0 <= step < len(program.actions):
                self.makes[_kind(program.actions[step])] = made  # the SK said what it created
        for step, (want, found) in self._refused.items():
            if not 0 <= step < len(program.actions):
                continue
            action = program.actions[step]
            self.wants[_kind(action)] = want
            before = [p for p in producers if p < step]
            if found and before and _names_newest(action):
                # the newest object was of type ``found``: what its producer makes
                self.makes.setdefault(_kind(program.actions[before[-1]]), found)

    def _introduce(self, capability: str) -> None:
        """The moment the guide first knows a producer of the object type a never-accepted call
        wants, queue a few short programs that run that producer and then the call, drawn afresh
        with its handles on the new object (syzkaller generates calls on a resource right after
        a call that makes one).  Until then a call on a handle reached its object only by chance
        mutation, and its own checks, where the bugs are, stayed out of reach."""
        if capability != "K0":
            return
        for key in list(self.wants):
            service = key[1]
            if key in self._introduced or service in self._accepted_by:
                continue
            fitting = self._fitting(key)
            if not fitting or service not in _SERVICE_NAMES:
                continue
            self._introduced.add(key)
            for _ in range(_INTRODUCTIONS):
                producer = self.rng.choice(fitting)
                fresh = draw_action(
                    RandomDraw(self.rng), "K0", Focus((Service(service),), ("securecall",))
                )
                # invoked as NT invokes it, its normal calls served honestly: an abandoned or
                # hostile first call says nothing about the call's own checks
                _op, _code, cookie, fields, *_mode = fresh.args
                plain = Action(fresh.op, (OP_INVOKE_SERVICE, service, cookie, fields, ()))
                call = Action(fresh.op, _newest_handles(_handle_fields_typed(plain).args))
                steps = self._staged(call) if _mdl_position(call) is not None else [call]
                self._queue(key, Program(capability, (producer, *steps)))

    def _retry(self, program: Program, step: int) -> None:
        """A secure call refused for an argument (``STATUS_INVALID_PARAMETER``: not its object,
        not the kernel's state or a service it lacks, which no argument changes) of a service
        the kernel has never accepted: queue the program up to it with that call drawn afresh, a few
        times per service.  An accepted call is where a service's own checks start, so each
        service is worth reaching once (as a coverage-guided fuzzer chases an uncovered edge)."""
        action = program.actions[step]
        _op, service = _kind(action)
        if service in self._accepted_by or service not in _SERVICE_NAMES:
            return
        if self._retried[service] >= 12:
            return
        self._retried[service] += 1
        fresh = draw_action(RandomDraw(self.rng), "K0", Focus((Service(service),), ("securecall",)))
        redrawn = self._with_producer(Action(fresh.op, _newest_handles(fresh.args)))
        actions = (*program.actions[:step], *redrawn)
        self._queue(_kind(action), Program(program.capability, actions[-self.max_actions :]))

    def _repair(self, program: Program, step: int) -> None:
        """A call the kernel refused for its object (a bad or wrong-type handle): queue it again
        with a producer right before it and its handles aimed at the newest one — the object
        the producer just made."""
        action = program.actions[step]
        key = _kind(action)
        # A producer known to make the type the call wants, else one whose type is unknown:
        # the SK's refusal names both types (syzkaller's resources are typed the same way).
        want = self.wants.get(key)
        fitting = self._fitting(key)
        # repairs by guess and by a known fitting producer have budgets of their own: what
        # was spent guessing does not stop a repair once the types are known
        budget = (key, bool(fitting))
        if self._repaired[budget] >= 8:
            return
        self._repaired[budget] += 1
        untried = [
            p
            for p in self.producers
            if self._tried[key, _kind(p)] < 3 and self.makes.get(_kind(p), want) == want
        ]
        matched = self.matched.get(key)
        if matched is not None and self.rng.random() < 0.5:
            producer = matched
        elif fitting and self.rng.random() < 0.8:
            producer = self.rng.choice(fitting)
        elif untried and self.rng.random() < 0.7:
            producer = self.rng.choice(untried)
            self._tried[key, _kind(producer)] += 1
        else:
            # no producer known (or time to look for another): a secure call that takes no
            # handle, from the service table's shapes — the calls that can create an object
            creators = [svc for svc, shape in SERVICE_SHAPES.items() if shape and "h" not in shape]
            service = self.rng.choice(creators)
            producer = draw_action(RandomDraw(self.rng), "K0", Focus((service,), ("securecall",)))
        fixed = Action(action.op, _newest_handles(_handle_fields_typed(action).args))
        actions = (*program.actions[:step], producer, fixed)
        self._queue(key, Program(program.capability, actions[-self.max_actions :]))

    def _explore(self, program: Program, step: int) -> None:
        """A call of a service the kernel accepted that reached something new (its first
        acceptance, mostly): queue variants of the program up to
        it with each argument of that call, and of the MDL staged for it, re-aimed in turn (as
        AFL's deterministic stage walks every byte of a new queue entry).  Where a kernel
        starts accepting a call is where its remaining checks are, argument by argument."""
        actions = program.actions[: step + 1]
        call = actions[step]
        staged = _staged_mdl(call)
        stage_at = None
        if staged is not None:
            stage_at = next(
                (
                    i
                    for i in range(step - 1, -1, -1)
                    if actions[i].op == "stage_mdl" and tuple(actions[i].args[:2]) == staged
                ),
                None,
            )
        targets = [(step, 3)]
        if stage_at is not None:
            targets += [(stage_at, at) for at in MUTABLE["stage_mdl"]]
        variants: list[Program] = []
        # Just past the end of the pages each size the kernel reported in this run covers (the
        # allocation it just made, the length it just captured): Redqueen's input-to-state
        # correspondence aims an argument at the operands the same execution compared
        # (Aschermann et al., NDSS 2019); a kernel that compares nothing (a missing bound) is
        # asked the question all the same.
        # only the sizes reported up to the explored call (what the actions after it made is
        # not what it works on), in the order the kernel reported them
        sizes = dict.fromkeys(size for at, size in self._run_sizes if at <= step)
        past = [(size | (PAGE_SIZE - 1)) + 1 for size in list(sizes)[:_RUN_SIZES]]
        for at, position in targets:
            value = actions[at].args[position] if position < len(actions[at].args) else None
            for path in _leaf_paths(value):
                old = _leaf_at(value, path)
                numeric = isinstance(old, int) and not isinstance(old, bool) and old >= 0
                for end in past if numeric else ():
                    variants.append(self._variant(program, actions, at, position, path, end))
                for variant_number in range(_EXPLORE_VARIANTS):
                    resolved = position in RESOLVED.get(actions[at].op, ())
                    if variant_number == 0 and isinstance(old, Ref) and old.space in _PAGES:
                        # the other side of the trust boundary, always (the deterministic
                        # stage asks each page argument that question once)
                        aimed = old._replace(pool=self._across(old.pool, always=True))
                    else:
                        aimed = self._aim_value(old, resolved)
                    variants.append(self._variant(program, actions, at, position, path, aimed))
        if _mdl_position(call) is not None:
            # the MDL staged afresh (more often when the call read one it did not stage)
            for _ in range(_EXPLORE_VARIANTS * (1 if staged is not None else 3)):
                restaged = (*actions[:step], *self._staged(call))
                variants.append(Program(program.capability, restaged[-self.max_actions :]))
        # a re-aim may land where it started (v+0, the newest handle once more): run each
        # distinct variant once
        explored = Program(program.capability, actions)
        fresh = [v for v in dict.fromkeys(variants) if v != explored]
        self._explores += fresh[: _EXPLORE_CAP - len(self._explores)]

    @staticmethod
    def _variant(
        program: Program,
        actions: Sequence[Action],
        at: int,
        position: int,
        path: tuple[int, ...],
        new: Any,
    ) -> Program:
        """``actions`` with the leaf at ``path`` of argument ``position`` of step ``at``
        replaced by ``new``."""
        args = list(actions[at].args)
        args[position] = _leaf_replaced(args[position], path, new)
        variant = list(actions)
        variant[at] = Action(actions[at].op, tuple(args))
        return Program(program.capability, tuple(variant))

    def _queue(self, key: tuple[str, str], program: Program) -> None:
        """Queue a repaired or retried program, fairly: when the queue is full, the newcomer
        takes the place of the oldest entry of the kind queued most (if that is not its own),
        so one service refused often cannot crowd out the others."""
        if len(self._repairs) >= _QUEUE:
            queued = Counter(k for k, _ in self._repairs)
            crowded, count = queued.most_common(1)[0]
            if crowded == key or count <= queued[key] + 1:
                return
            del self._repairs[next(i for i, (k, _) in enumerate(self._repairs) if k == crowded)]
        self._repairs.append((key, program))

    def _next_repair(self) -> Program:
        """The oldest queued program of the kind served least so far."""
        least = min(self._served[k] for k, _ in self._repairs)
        at = next(i for i, (k, _) in enumerate(self._repairs) if self._served[k] == least)
        key, program = self._repairs.pop(at)
        self._served[key] += 1
        return program

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
                status = _status_feature(outcome)
                step_feature = ("step", op, service, status)
                if step_feature not in self.seen and step_feature not in features:
                    novel_steps.append(number)
                features.add(step_feature)
                if status == "securecall STATUS_SUCCESS" and service not in self._accepted_by:
                    self._accepted_by.add(service)
                    self.accepted.append(action)
                if (
                    status == "securecall STATUS_SUCCESS"
                    and _has_staged_mdl(program.actions, number)
                    and not self._explored[service, True]
                ):
                    novel_steps.append(number)  # the first accepted call on a staged MDL
            for number in sorted(set(novel_steps)):
                # an accepted call that reached something new: explore it (a few per service)
                if number >= len(result.outcomes):
                    continue
                service = _kind(program.actions[number])[1]
                accepted = _status_feature(result.outcomes[number]) == "securecall STATUS_SUCCESS"
                # a call with its MDL staged in the program is a frontier of its own: what the
                # MDL says (byte count, PFNs) is input the call's checks read too
                budget = (service, _has_staged_mdl(program.actions, number))
                if accepted and self._explored[budget] < _EXPLORES_PER_SERVICE:
                    self._explored[budget] += 1
                    self._explore(program, number)
            for step in result.produced:
                self._producer(program.actions[step])
            self._match(program, result)
            self._introduce(program.capability)
            for step, outcome in enumerate(result.outcomes):
                if outcome.split()[1:2] in _OBJECT_REFUSED:
                    self._repair(program, step)
                elif outcome.split()[:2] in _ARGUMENT_REFUSED:
                    self._retry(program, step)
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
        self._trim()
        return True

    def _trim(self) -> None:
        while len(self.corpus) > self.corpus_cap:
            # forget the entry whose rarest feature is most common (it adds least)
            worst = max(
                range(len(self.corpus)),
                key=lambda i: min((self.seen[f] for f in self.corpus[i].features), default=0),
            )
            del self.corpus[worst]

    # -- sharing between lanes ---------------------------------------------------------------
    def absorb(self, other: Guide) -> None:
        """Take what another lane's guide learned (AFL's corpus sync between instances,
        syzkaller's hub): its typed resources (what each call wants and each producer makes, the
        producers and the calls the kernel accepted, the boundaries it saw) and the corpus entries
        that reach a feature this lane has not seen.  What this lane queued or explored stays its
        own.  Deterministic: the same states absorbed in the same order give the same guide."""
        for key, want in other.wants.items():
            self.wants.setdefault(key, want)
        for key, made in other.makes.items():
            self.makes.setdefault(key, made)
        for key, action in other.matched.items():
            self.matched.setdefault(key, action)
        for action in other.producers:
            self._producer(action)
        for action in other.accepted:
            service = _kind(action)[1]
            if service not in self._accepted_by:
                self._accepted_by.add(service)
                self.accepted.append(action)
        for value in other.boundaries:
            self._learn(value)
        held = {entry.program for entry in self.corpus}
        fresh = [
            entry
            for entry in other.corpus
            if entry.program not in held and any(f not in self.seen for f in entry.features)
        ]
        for feature, count in other.seen.items():
            self.seen[feature] = max(self.seen[feature], count)
        self.corpus += fresh
        self.stats.features = len(self.seen)
        self._trim()


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


def _has_staged_mdl(actions: Sequence[Action], step: int) -> bool:
    """Whether the MDL argument of ``actions[step]`` is one a ``stage_mdl`` before it wrote."""
    staged = _staged_mdl(actions[step])
    return staged is not None and any(
        a.op == "stage_mdl" and tuple(a.args[:2]) == staged for a in actions[:step]
    )


def _mdl_position(action: Action) -> int | None:
    """Where a secure call's MDL fields start (``M`` in ``attacker.SERVICE_SHAPES``), or None
    for a call without one."""
    if action.op != "securecall" or len(action.args) < 5 or not isinstance(action.args[3], tuple):
        return None
    code = action.args[1]  # a service's name, or a raw number (then no shape is known)
    at = SERVICE_SHAPES.get(Service(code), "").find("M") if code in _SERVICE_NAMES else -1
    return at if at >= 0 and at + 1 < len(action.args[3]) else None


def _kind(action: Action) -> tuple[str, str]:
    """(op, service) of an action: a secure call's service only when its operation invokes one
    (SECURE_CALL_ARGS' other operations, vbs-internals §2.2, ignore the service code: they
    are kinds of their own, named by their operation)."""
    if action.op != "securecall" or len(action.args) < 2:
        return action.op, ""
    if action.args[0] != OP_INVOKE_SERVICE:
        return action.op, f"op {action.args[0]}"
    return action.op, str(action.args[1])


def _uses_handle(action: Action) -> bool:
    def walk(value: Any) -> bool:
        if isinstance(value, Ref):
            return value.space == "handle"
        return isinstance(value, tuple) and any(walk(v) for v in value)

    return action.op == "securecall" and walk(action.args[3:4])


#: mutation kinds, weighted by repetition
_MUTATIONS = (
    *("insert", "insert", "aim", "aim", "redraw", "redraw"),
    *("replace", "delete", "splice", "splice", "stage", "consume"),
)
_SERVICE_NAMES = frozenset(service.value for service in SERVICE_SHAPES)
#: the services that take a kernel object (an ``h`` field): the consumers of resources
_CONSUMERS = tuple(service for service, shape in SERVICE_SHAPES.items() if "h" in shape)
_QUEUE = 32  # queued repairs and retries at most
_INTRODUCTIONS = 4  # programs queued when a never-accepted call's producer becomes known
_PAGES = ("pfn", "gpa", "dm")  # the Ref spaces that name a page of a pool
#: the pools of pages VTL1 owns (SK, its data, trustlets); the rest are VTL0's
_VTL1_POOLS = ("sk", "vtl1", "trustlet")
_VTL0_POOLS = tuple(pool for pool in PFN_POOLS if pool not in _VTL1_POOLS)
_EXPLORE_VARIANTS = 2  # variants per argument of a service's first accepted call
_EXPLORE_CAP = 96  # queued variants at most
_RUN_SIZES = 3  # the run's sizes each numeric argument is aimed just past (see _explore)
_EXPLORES_PER_SERVICE = 3  # accepted calls of one service explored at most
_ARGUMENT_REFUSED = (["securecall", "STATUS_INVALID_PARAMETER"],)
_OBJECT_REFUSED = (["STATUS_INVALID_HANDLE"], ["STATUS_OBJECT_TYPE_MISMATCH"])


def _handle_fields_typed(action: Action) -> Action:
    """``action`` with every field its service's shape types as a handle (``h``) naming a
    handle again, where the draw had put another kind of value there: a call refused for its
    object is repaired through the field that names the object (syzkaller's typed resources)."""
    if action.op != "securecall" or len(action.args) < 4 or not isinstance(action.args[3], tuple):
        return action
    code = action.args[1]
    if code not in _SERVICE_NAMES:
        return action  # a raw service number: no shape is known
    fields = list(action.args[3])
    at = 0
    for kind in SERVICE_SHAPES[Service(code)]:
        if at >= len(fields):
            break
        held = fields[at]
        if kind == "h" and not (isinstance(held, Ref) and held.space == "handle"):
            fields[at] = Ref("handle", "", 0)
        at += 2 if kind == "M" else 1  # an MDL argument is two fields (its VA and PFN)
    return Action(action.op, (*action.args[:3], tuple(fields), *action.args[4:]))


def _status_feature(outcome: str) -> str:
    """An outcome's first two words, with a number that is no known status bucketed (a status
    NT made up in a hostile reply is not a new behaviour of the kernel each time it differs, as
    AFL buckets hit counts rather than keep each count as new coverage) and data read left out."""
    words = outcome.split()[:2]
    if len(words) == 2 and words[0] == "securecall" and words[1].startswith("0x"):
        words[1] = "0x?"
    elif len(words) == 2 and words[1][:2] in ("b'", 'b"'):
        # the bytes a read returned are data, not behaviour; and some differ from boot to
        # boot by design (keys, instance GUIDs and nonces from the platform's generator), so a
        # feature made of them would tie the corpus to one boot's random values
        words[1] = "bytes"
    return " ".join(words)


def _names_newest(action: Action) -> bool:
    """Whether every handle ``action`` names is the newest one (so the newest producer's
    object is the one the kernel looked at)."""

    def walk(value: Any) -> bool:
        if isinstance(value, Ref):
            return value.space != "handle" or (value.nth == 0 and value.offset == 0)
        return not isinstance(value, tuple) or all(walk(v) for v in value)

    return walk(action.args[3:4])


def _leaf_paths(value: Any) -> list[tuple[int, ...]]:
    """Where the numbers and references in an argument are (paths of indices into tuples)."""
    if isinstance(value, Ref) or (isinstance(value, int) and not isinstance(value, bool)):
        return [()]
    if isinstance(value, tuple):
        return [(i, *p) for i, v in enumerate(value) for p in _leaf_paths(v)]
    return []


def _leaf_at(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        value = value[i]
    return value


def _leaf_replaced(value: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    return (*value[:head], _leaf_replaced(value[head], rest, new), *value[head + 1 :])


def _newest_handles(value: Any) -> Any:
    if isinstance(value, Ref):  # a NamedTuple: never rebuilt as a plain tuple
        return value._replace(nth=0) if value.space in ("handle", "cookie") else value
    if isinstance(value, tuple):
        return tuple(_newest_handles(v) for v in value)
    return value
