"""The guided generator's resources, queues and exploration (issue 13: the default attacker
finds the legacy-2019 Secure Kernel bugs unaided).

Each test pins one piece of feedback the generator takes from the model's trace; the end-to-end
target itself is ``test_soak.test_the_default_attacker_finds_the_legacy_2019_bugs_unaided``.
"""

from __future__ import annotations

import copy
import random

import pytest

from vbsim.invariants.attacker import Action, Program, Ref, Session
from vbsim.invariants.guided import (
    _INTRODUCTIONS,
    _QUEUE,
    _VTL1_POOLS,
    Guide,
    _handle_fields_typed,
    _has_staged_mdl,
    _kind,
    _status_feature,
)
from vbsim.policy import preset
from vbsim.sk.callargs import OP_FLUSH_TB, OP_INVOKE_SERVICE

from .kit import refs_in

CREATE = Action("securecall", (OP_INVOKE_SERVICE, "CREATE_SECURE_ALLOCATION", 0, (4096,), ()))


def _fill(handle: object, mdl: tuple[object, object] = (0, 0)) -> Action:
    fields = (handle, 0, *mdl)
    return Action("securecall", (OP_INVOKE_SERVICE, "FILL_SECURE_ALLOCATION", 0, fields, ()))


def test_a_secure_call_that_invokes_no_service_is_a_kind_of_its_own() -> None:
    """SECURE_CALL_ARGS' flush and resume operations ignore the service code: a FILL code on
    a flush is not a FILL attempt (the guide once counted such calls as its FILLs)."""
    flush = Action("securecall", (OP_FLUSH_TB, "FILL_SECURE_ALLOCATION", 0, (), ()))
    assert _kind(flush) == ("securecall", f"op {OP_FLUSH_TB}")
    assert _kind(_fill(Ref("handle", "", 0))) == ("securecall", "FILL_SECURE_ALLOCATION")


def test_a_handle_field_holding_another_kind_of_value_is_typed_again() -> None:
    cookie = Ref("cookie", "", 0)
    typed = _handle_fields_typed(_fill(cookie, (Ref("dm", "stage", 1, 0), 7)))
    assert typed.args[3] == (Ref("handle", "", 0), 0, Ref("dm", "stage", 1, 0), 7)
    raw_service = Action("securecall", (OP_INVOKE_SERVICE, 0x1234, 0, (cookie,), ()))
    assert _handle_fields_typed(raw_service) == raw_service  # no shape known: left alone


def test_unknown_statuses_are_one_feature() -> None:
    assert _status_feature("securecall 0x5A4C1AF0CD9F7E61 x") == "securecall 0x?"
    assert _status_feature("securecall STATUS_SUCCESS") == "securecall STATUS_SUCCESS"


@pytest.fixture(scope="module")
def learned() -> Guide:
    """A guide that watched CREATE_SECURE_ALLOCATION succeed and a FILL refused for its
    object on a real legacy-2019 machine (the SK's trace names both types)."""
    session = Session(preset("legacy-2019"))
    guide = Guide(random.Random(7))
    session.system.trace.listen(guide.listen)
    monitor = session.monitor
    assert monitor is not None
    null = Action("securecall", (OP_INVOKE_SERVICE, "NULL", 0, (), ()))
    for program in (
        Program("K0", (CREATE,)),
        Program("K0", (null, _fill(Ref("handle", "", 3, 1)))),
    ):
        guide.begin(lambda: monitor.step_number)
        guide.observe(program, session.run(program))
    session.close()
    return guide


def test_the_sk_trace_types_producers_and_consumers(learned: Guide) -> None:
    fill = ("securecall", "FILL_SECURE_ALLOCATION")
    assert learned.wants[fill] == "secure_allocation"
    assert learned.makes["securecall", "CREATE_SECURE_ALLOCATION"] == "secure_allocation"
    assert [_kind(p) for p in learned._fitting(fill)] == [_kind(CREATE)]


def test_a_call_refused_for_its_object_is_repaired_with_a_producer_of_its_type(
    learned: Guide,
) -> None:
    refused = Program("K0", (_fill(Ref("cookie", "", 2)),))
    queued_before = len(learned._repairs)
    learned._repair(refused, 0)
    assert len(learned._repairs) == queued_before + 1
    _key, repaired = learned._repairs[-1]
    producers = [a for a in repaired.actions[:-1] if _kind(a)[1] == "CREATE_SECURE_ALLOCATION"]
    # a fitting producer most of the time (the seed fixes which draw this is)
    assert producers or _kind(repaired.actions[-2]) != _kind(CREATE)
    assert repaired.actions[-1].args[3][0] == Ref("handle", "", 0)


def test_a_never_accepted_call_is_introduced_to_its_producer_once(learned: Guide) -> None:
    """Once the guide knows CREATE makes what FILL wants, it queues a few programs that run
    CREATE, then FILL drawn afresh: invoked plainly, on the newest handle."""
    guide = copy.deepcopy(learned)
    fill = ("securecall", "FILL_SECURE_ALLOCATION")
    assert fill in guide._introduced  # observe() introduced them as soon as it knew
    introduced = [
        p for k, p in guide._repairs if k == fill and _kind(p.actions[0]) == _kind(CREATE)
    ]
    assert len(introduced) >= _INTRODUCTIONS - 1  # (the repair test may have taken one)
    for program in introduced:
        call = program.actions[-1]
        assert _kind(call) == fill and call.args[0] == OP_INVOKE_SERVICE and call.args[4] == ()
        assert call.args[3][0] == Ref("handle", "", 0)
    before = len(guide._repairs)
    guide._introduce("K0")
    assert len(guide._repairs) == before  # once per call kind


def test_a_lane_absorbs_what_another_learned_once(learned: Guide) -> None:
    other = Guide(random.Random(11))
    other.absorb(learned)
    fill = ("securecall", "FILL_SECURE_ALLOCATION")
    assert other.wants[fill] == "secure_allocation"
    assert [_kind(p) for p in other._fitting(fill)] == [_kind(CREATE)]
    assert other._accepted_by >= {"CREATE_SECURE_ALLOCATION"}
    assert {e.program for e in other.corpus} == {e.program for e in learned.corpus}
    assert set(other.seen) == set(learned.seen)
    other.absorb(learned)  # nothing new the second time
    assert len(other.corpus) == len(learned.corpus)
    assert not other._repairs and not other._explores  # queues stay each lane's own


def test_a_staged_mdl_is_recognised_only_where_the_call_points() -> None:
    stage = Action("stage_mdl", (1, 16, (), 0x100, 0, -1))
    aimed = _fill(Ref("handle", "", 0), (Ref("dm", "stage", 1, 16), Ref("pfn", "stage", 1, 0)))
    elsewhere = _fill(Ref("handle", "", 0), (Ref("dm", "stage", 2, 16), Ref("pfn", "stage", 2, 0)))
    assert _has_staged_mdl((CREATE, stage, aimed), 2)
    assert not _has_staged_mdl((CREATE, stage, elsewhere), 2)
    assert not _has_staged_mdl((aimed, stage), 0)  # staged after the call


def test_the_queue_keeps_room_for_every_kind() -> None:
    guide = Guide(random.Random(1))
    crowd, other = ("securecall", "START_PROCESSOR"), ("securecall", "FILL_SECURE_ALLOCATION")
    for _ in range(_QUEUE + 5):
        guide._queue(crowd, Program("K0", (CREATE,)))
    assert len(guide._repairs) == _QUEUE
    guide._queue(other, Program("K0", (CREATE, _fill(Ref("handle", "", 0)))))
    assert len(guide._repairs) == _QUEUE and any(k == other for k, _ in guide._repairs)
    guide._served[crowd] = 5
    assert guide._next_repair().actions[-1].args[1] == "FILL_SECURE_ALLOCATION"


def test_an_accepted_call_is_explored_argument_by_argument() -> None:
    guide = Guide(random.Random(3))
    stage = Action("stage_mdl", (1, 0, (Ref("pfn", "loot", 0, 0),), 0x100, 0, -1))
    call = _fill(Ref("handle", "", 0), (Ref("dm", "stage", 1, 0), Ref("pfn", "stage", 1, 0)))
    program = Program("K0", (CREATE, stage, call))
    guide._explore(program, 2)
    variants = guide._explores
    assert len(variants) >= 8
    assert all(_kind(v.actions[-1]) == _kind(call) for v in variants)
    # a page argument of the call or of its MDL moved across the trust boundary
    moved = [
        ref
        for v in variants
        for a in v.actions
        for ref in refs_in(a.args)
        if ref.space in ("pfn", "dm") and ref.pool in _VTL1_POOLS
    ]
    # each of the three page arguments (the MDL's VA and PFN, the PFN inside it) once
    assert len(moved) >= 3
    # every variant differs from the program it explores
    assert all(v != program for v in variants)


def test_exploring_aims_each_number_just_past_the_sizes_the_run_reported() -> None:
    """Redqueen's input-to-state step: a size the kernel reported while the explored program
    ran (the 0x1800-byte allocation it made) gives each numeric argument a variant just past
    the pages it covers: the MDL's ByteCount 0x2000, an overflow of that allocation."""
    guide = Guide(random.Random(3))
    guide.begin(None)
    guide._run_sizes = [(0, 0x1800), (3, 0x5000)]  # the second after the explored call
    stage = Action("stage_mdl", (1, 0, (Ref("pfn", "loot", 0, 0),), 0x100, 0, -1))
    call = _fill(Ref("handle", "", 0), (Ref("dm", "stage", 1, 0), Ref("pfn", "stage", 1, 0)))
    guide._explore(Program("K0", (CREATE, stage, call)), 2)
    counts = {v.actions[1].args[3] for v in guide._explores if v.actions[1] != stage}
    assert 0x2000 in counts
    offsets = {v.actions[-1].args[3][1] for v in guide._explores if v.actions[-1] != call}
    assert 0x2000 in offsets
    # a size reported after the explored call (step 2) is not what it works on
    assert 0x6000 not in counts | offsets  # (0x5000 | 0xFFF) + 1
    # without a reported size, no such variant
    plain = Guide(random.Random(3))
    plain.begin(None)
    plain._explore(Program("K0", (CREATE, stage, call)), 2)
    assert 0x2000 not in {v.actions[1].args[3] for v in plain._explores}
