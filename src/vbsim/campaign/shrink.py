"""Shrinking a failing program on fresh machines, and printing it as a regression entry.

The program that failed in a campaign ran on a machine earlier programs had used; shrinking
replays candidates on a freshly booted machine each (what ``tests/invariants/regressions.py``
does), so the result stands alone.  Delta debugging over actions: the actions after the deciding
step go first (they never ran), then chunks of halving size, then single actions, as long as the
candidate still fails the same way (the same invariant, or the same exception type).  A program
that does not fail alone is kept whole and says so (it needs its predecessors' machine state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vbsim.invariants.attacker import Program, run_program
from vbsim.invariants.monitor import InvariantViolation, Violation
from vbsim.policy import Policy

#: replays one shrink may spend (each boots a machine, ~40 ms)
BUDGET = 80


def _fails_with_violation(policy: Policy, invariant: int) -> Callable[[Program], int | None]:
    def test(program: Program) -> int | None:
        try:
            run_program(program, policy)
        except InvariantViolation as error:
            if error.violation.invariant == invariant:
                from vbsim.campaign.jobs import step_index

                return step_index(error.violation.label)
        except Exception:  # a different failure is not this one
            return None
        return None

    return test


def _fails_with_exception(
    policy: Policy, kind: type[BaseException]
) -> Callable[[Program], int | None]:
    def test(program: Program) -> int | None:
        try:
            run_program(program, policy)
        except InvariantViolation:
            return None
        except Exception as error:
            return len(program.actions) - 1 if type(error) is kind else None
        return None

    return test


def ddmin(program: Program, test: Callable[[Program], int | None], budget: int = BUDGET) -> Program:
    """The smallest program (by actions) found for which ``test`` still holds."""
    actions = list(program.actions)
    spent = 0
    chunk = max(1, len(actions) // 2)
    while chunk >= 1 and spent < budget:
        removed = False
        at = 0
        while at < len(actions) and spent < budget:
            candidate = actions[:at] + actions[at + chunk :]
            if not candidate:
                at += chunk
                continue
            spent += 1
            step = test(Program(program.capability, tuple(candidate)))
            if step is not None:
                actions = candidate[: step + 1]
                removed = True
            else:
                at += chunk
        if not removed:
            chunk //= 2
    return Program(program.capability, tuple(actions))


def shrink_violation(program: Program, policy: Policy, violation: Violation) -> dict[str, Any]:
    test = _fails_with_violation(policy, violation.invariant)
    return _shrink(program, policy, test, violation.invariant, violation.message)


def shrink_exception(program: Program, policy: Policy, error: BaseException) -> dict[str, Any]:
    test = _fails_with_exception(policy, type(error))
    return _shrink(program, policy, test, "ok", f"{type(error).__name__}: {error}")


def _shrink(
    program: Program,
    policy: Policy,
    test: Callable[[Program], int | None],
    expect: int | str,
    message: str,
) -> dict[str, Any]:
    step = test(program)
    if step is None:
        return {"alone": False, "shrunk": None, "deciding": None}
    small = ddmin(Program(program.capability, program.actions[: step + 1]), test)
    deciding = small.actions[-1] if small.actions else None
    return {
        "alone": True,
        "shrunk": regression_source(small, policy, expect, message),
        "shrunk_actions": len(small.actions),
        "deciding": _describe(deciding) if deciding is not None else None,
    }


def _describe(action: Any) -> str:
    if action.op == "securecall" and len(action.args) > 1:
        return f"securecall {action.args[1]}"
    return str(action.op)


def regression_source(program: Program, policy: Policy, expect: int | str, message: str) -> str:
    """``program`` as a :class:`Regression` entry for ``tests/invariants/regressions.py``
    (an escaped exception is pasted with ``expect="ok"``: the fix makes it pass)."""
    import hashlib

    tag = hashlib.sha1(repr(program).encode()).hexdigest()[:8]
    body = repr(program).replace("\n", "\n    ")
    note = message.replace('"', "'")[:100]
    expect_text = f"expect={expect!r},\n    " if expect != "ok" else ""
    return (
        f'Regression(\n    "campaign-{tag}",\n    {policy.name!r},\n    {body},\n'
        f'    {expect_text}note="found by a campaign: {note}",\n),'
    )
