"""What a scenario is: an attacker with a capability, steps through that capability's interface,
and a goal checked from outside the attacker (issue "attack catalogue"; vbs-internals §6)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vbsim.attacks.context import AttackContext
    from vbsim.policy import Policy

PRESET_ORDER = ("vbs-off", "vbs", "vbs-hvci", "hardened", "legacy-2019")


class Outcome(StrEnum):
    BLOCKED = "blocked"
    SUCCEEDED = "succeeded"
    NOT_APPLICABLE = "n/a"


class Capability(StrEnum):
    """The attacker's starting point (vbs-internals §6 "Has")."""

    U0 = "U0"  # unprivileged VTL0 user
    A0 = "A0"  # VTL0 administrator (ring 3)
    K0 = "K0"  # VTL0 ring-0 code or read/write primitive (e.g. a vulnerable signed driver)
    PHYS = "PHYS"  # a malicious DMA-capable device
    K1 = "K1"  # VTL1 ring-0 code (a compromised Secure Kernel)


Steps = Callable[["AttackContext"], None]
Goal = Callable[["AttackContext"], bool]


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    source: str
    capability: Capability
    goal: str
    #: The outcome the public record gives per preset, and where that comes from.
    expected: Mapping[str, Outcome]
    expected_why: str
    steps: Steps
    goal_met: Goal
    #: Change the machine before it boots (a downgrade on disk, ...); returns nothing.
    before_boot: Callable[[AttackContext], None] | None = None
    #: A scenario can be meaningless under a policy (no trustlets without VBS ...).
    applicable: Callable[[Policy], bool] = field(default=lambda policy: True)
    #: Mechanisms that decide this goal when they refuse, before the first refusal in the trace.
    decisive: tuple[str, ...] = ()


@dataclass
class RunResult:
    id: str
    title: str
    capability: str
    preset: str
    outcome: Outcome
    expected: Outcome
    mechanism: str
    source: str
    detail: str = ""
    events: int = 0

    @property
    def matches(self) -> bool:
        return self.outcome == self.expected

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "capability": self.capability,
            "preset": self.preset,
            "outcome": str(self.outcome),
            "expected": str(self.expected),
            "mechanism": self.mechanism,
            "source": self.source,
            "detail": self.detail,
        }
