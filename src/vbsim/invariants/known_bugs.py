"""Model bugs the attacker found and the model has not fixed yet.

Each entry recognises the actions that reach one bug.  Such actions are taken out of (or
defused in) generated programs in the property tests and the soak (counted and reported, never
silently), and each bug is pinned by a strict ``xfail`` test (in
``tests/invariants/test_known_bugs.py`` and ``regressions.py``): when the model is fixed, that
test passes, strict xfail turns it red, and the entry here is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vbsim.invariants.attacker import Action, Program


@dataclass(frozen=True)
class KnownBug:
    key: str
    summary: str
    matches: Callable[[str, Action], bool]
    #: what a program reaching the bug raises today
    raises: type[BaseException]
    #: how a matching action is kept out: rewritten into one that cannot reach the bug, or None
    #: (the action is dropped)
    defuse: Callable[[Action], Action | None] = lambda action: None


#: None open.  Fixed so far (regressions in ``tests/invariants/test_known_bugs.py``): the
#: hypercall-page overlay onto SK pages, SK routines asserting their GS context, NT trap handlers
#: bugchecking from CPL3, KDP page theft through the SK's page requests, closed machines never
#: freed.
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def strip_known_bugs(program: Program) -> tuple[Program, list[str]]:
    """``program`` without the actions that reach a known bug (dropped, or rewritten into ones
    that cannot reach it), and the bugs they would have reached."""
    kept: list[Action] = []
    removed: list[str] = []
    for action in program.actions:
        current: Action | None = action
        for bug in KNOWN_BUGS:
            if current is not None and bug.matches(program.capability, current):
                removed.append(bug.key)
                current = bug.defuse(current)
        if current is not None:
            kept.append(current)
    return Program(program.capability, tuple(kept)), removed


def known_bug(program: Program) -> KnownBug | None:
    """The first known bug an action of ``program`` reaches, or None."""
    for action in program.actions:
        for bug in KNOWN_BUGS:
            if bug.matches(program.capability, action):
                return bug
    return None
