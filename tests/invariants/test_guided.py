"""The guided generator's mutations keep the shape of what they mutate.

A ``Ref`` is a NamedTuple, so a mutation that treated it as a plain tuple of arguments rebuilt
it as ``("pfn", "vtl1", 3, 0)``: the executor then passed the tuple on instead of resolving a
page, and every re-aimed reference became a dead argument.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.invariants.attacker import PFN_POOLS, Action, Ref
from vbsim.invariants.guided import Guide, _newest_handles

from .kit import refs_in

SPACES = ("pfn", "gpa", "dm", "handle", "cookie", "window", "user", "kva", "tva", "pid")
refs = st.builds(
    Ref,
    st.sampled_from(SPACES),
    st.sampled_from(PFN_POOLS),
    st.integers(0, 63),
    st.integers(0, 1 << 20),
)


def _plain_ref_shapes(value: Any) -> bool:
    """A plain tuple that looks like a Ref's fields: the bug's signature."""
    if isinstance(value, Ref):
        return False
    if isinstance(value, tuple):
        if len(value) == 4 and value and value[0] in SPACES and isinstance(value[2], int):
            return True
        return any(_plain_ref_shapes(v) for v in value)
    return False


@settings(max_examples=200, deadline=None)
@given(ref=refs, seed=st.integers(0, 2**32 - 1), resolved=st.booleans())
def test_aiming_a_ref_gives_a_ref(ref: Ref, seed: int, resolved: bool) -> None:
    guide = Guide(random.Random(seed))
    aimed = guide._aim_value(ref, resolved)
    assert isinstance(aimed, Ref)
    assert aimed.space == ref.space


@settings(max_examples=200, deadline=None)
@given(ref=refs, number=st.integers(0, 1 << 40), seed=st.integers(0, 2**32 - 1))
def test_aiming_inside_a_tuple_keeps_its_refs(ref: Ref, number: int, seed: int) -> None:
    guide = Guide(random.Random(seed))
    action = Action("securecall", ("K0", 0x11, ref, (ref, number), number))
    for _ in range(8):
        action = guide._aim(action)
        assert not _plain_ref_shapes(action.args), action
        assert all(isinstance(r, Ref) for r in refs_in(action.args))


def test_newest_handles_renews_handles_and_keeps_other_refs() -> None:
    page = Ref("pfn", PFN_POOLS[0], 5, 0x10)
    handle = Ref("handle", "", 3)
    renewed = _newest_handles((page, (handle, 7), handle))
    assert renewed == (page, (Ref("handle", "", 0), 7), Ref("handle", "", 0))
    assert isinstance(renewed[0], Ref)
    assert isinstance(renewed[1][0], Ref)
