"""Trace events become arrows between the right lifelines; the deciding check is marked; long
traces are cut with a note of what was elided."""

from __future__ import annotations

from typing import Any

from vbsim.report.sequence import CORE_LANES, diagram, place
from vbsim.trace import Event


def ev(
    seq: int,
    kind: str,
    mechanism: str,
    outcome: str,
    vtl: int | None = 0,
    cpl: int | None = 0,
    **detail: Any,
) -> Event:
    return Event(seq, kind, mechanism, outcome, 0, vtl, cpl, "test", detail)


def test_lifelines_by_kind() -> None:
    cases = [
        (ev(1, "syscall", "lstar", "entered", number=63), ("U0", "K0", False)),
        (ev(2, "syscall", "sysret", "returned", cpl=3, status=0), ("K0", "U0", False)),
        (ev(3, "syscall", "lstar", "entered", vtl=1, number=5), ("IUM", "SK", False)),
        (
            ev(
                4,
                "ium-syscall",
                "secure-service-table",
                "STATUS_SUCCESS",
                vtl=1,
                service="IumCrypto",
            ),
            ("IUM", "SK", False),
        ),
        (
            ev(5, "hypercall", "hypercall", "access_denied", call="MODIFY_VTL_PROTECTION_MASK"),
            ("K0", "HV", False),
        ),
        (ev(6, "vtl", "vtl-call", "switched", vtl=1, from_vtl=0, to_vtl=1), ("K0", "SK", True)),
        (ev(7, "vtl", "vtl-return", "switched", vtl=0, from_vtl=1, to_vtl=0), ("SK", "K0", True)),
        (ev(8, "intercept", "secure-intercept", "posted", what="write of cr4"), ("K0", "SK", True)),
        (
            ev(9, "securecall", "dispatch", "entered", vtl=1, service="DEBUG_PROCESS"),
            ("K0", "SK", False),
        ),
        (ev(10, "normalcall", "request", "sent", vtl=1, number=1), ("SK", "K0", False)),
        (ev(11, "access", "slat", "denied", gpa=0x20000, access="read"), ("K0", "memory", False)),
        (
            ev(
                12,
                "dma",
                "slat",
                "blocked",
                vtl=None,
                cpl=None,
                device="nic0",
                gpa=0x20000,
                direction="to-memory",
            ),
            ("device", "memory", False),
        ),
        (
            ev(13, "boot", "secureboot", "verified", vtl=None, cpl=None, component="hvix64.exe"),
            ("firmware", "firmware", False),
        ),
        (ev(14, "ium", "skci.signature", "refused", vtl=1), ("SK", "SK", False)),
    ]
    for event, (src, dst, via) in cases:
        step = place(event)
        assert (step.src, step.dst, step.via_hv) == (src, dst, via), (event, step)


def test_allowed_accesses_are_left_out_and_denied_kept() -> None:
    events = [
        ev(1, "access", "tlb", "allowed", va=0x1000, gpa=0x1000, access="read"),
        ev(2, "access", "paging", "allowed", va=0x2000, gpa=0x2000, access="read"),
        ev(3, "access", "slat", "denied", va=0x3000, gpa=0x20000, access="read"),
    ]
    d = diagram(events, "slat")
    assert (d.events, d.filtered) == (3, 2)
    assert [s.seqs for s in d.steps] == [[3]]
    assert d.steps[0].decisive and d.steps[0].refusal == "slat"
    assert d.decisive_seq == 3
    assert d.lanes == ["memory", *CORE_LANES]


def test_a_vtl_call_and_the_secure_call_it_carries_are_one_arrow() -> None:
    events = [
        ev(1, "vtl", "vtl-call", "switched", vtl=1, from_vtl=0, to_vtl=1),
        ev(2, "securecall", "dispatch", "entered", vtl=1, service="DEBUG_PROCESS"),
        ev(3, "ium", "policy.debug", "refused", vtl=1),
        ev(4, "securecall", "dispatch", "STATUS_ACCESS_DENIED", vtl=1),
        ev(5, "vtl", "vtl-return", "switched", vtl=0, from_vtl=1, to_vtl=0),
    ]
    d = diagram(events, "policy.debug")
    call, check, reply = d.steps
    assert (call.src, call.dst, call.via_hv, call.seqs) == ("K0", "SK", True, [1, 2])
    assert "DEBUG_PROCESS" in call.label
    assert check.decisive and check.refusal == "policy.debug"
    assert (reply.src, reply.dst, reply.via_hv, reply.reply) == ("SK", "K0", True, True)
    assert reply.seqs == [4, 5] and "STATUS_ACCESS_DENIED" in reply.label


def test_repeats_are_drawn_once() -> None:
    events = [ev(i, "cr", "mov-cr3", "written", value=4096) for i in range(1, 6)]
    (step,) = diagram(events, "-").steps
    assert step.count == 5 and step.seqs == [1, 2, 3, 4, 5]
    pairs = []
    for i in range(0, 40, 2):
        pairs.append(ev(i + 1, "hypercall", "hypercall", "success", call="GET_VP_REGISTERS"))
        pairs.append(ev(i + 2, "msr", "wrmsr", "written", msr=1))
    d = diagram(pairs, "-")
    assert len(d.steps) == 2 and d.steps[0].repeat == (2, 20)
    assert sum(len(s.seqs) for s in d.steps) == 40


def test_long_traces_are_capped_around_the_deciding_event() -> None:
    events = [ev(i, "nt", f"step-{i}", "done") for i in range(1, 401)]
    events[299] = ev(300, "hyperguard", "hyperguard", "violation", vtl=1)
    d = diagram(events, "hyperguard", cap=60)
    drawn = [s for s in d.steps if not s.elided]
    gaps = [s for s in d.steps if s.elided]
    assert len(d.steps) <= 60 + len(gaps)
    assert any(s.decisive and s.seqs == [300] for s in drawn)
    assert d.elided == sum(g.elided for g in gaps) == 400 - sum(len(s.seqs) for s in drawn)
    assert drawn[0].seqs == [1] and drawn[-1].seqs == [400]


def test_no_deciding_event_when_the_attack_succeeded() -> None:
    d = diagram([ev(1, "nt", "dump", "written")], "-")
    assert d.decisive_seq is None and not any(s.decisive for s in d.steps)


def test_the_attackers_own_accesses_are_drawn_as_one_arrow() -> None:
    def access(seq: int, actor: str, what: str, va: int) -> Event:
        return Event(seq, "access", "paging", "allowed", 0, 0, 0, actor, {"va": va, "access": what})

    events = [
        access(1, "nt", "read", 0x10000),
        access(2, "attacker (K0)", "read", 0x11000),
        access(3, "attacker (K0)", "read", 0x12000),
        access(4, "attacker (K0)", "write", 0x13000),
    ]
    d = diagram(events, "-")
    assert d.filtered == 1
    reads, write = d.steps
    assert reads.seqs == [2, 3] and reads.label == "read 0x11000, 0x12000 (2 accesses)"
    assert write.seqs == [4] and write.label == "write 0x13000"
    assert (write.src, write.dst) == ("K0", "memory")


def test_a_crash_report_is_an_arrow_to_the_hypervisor_with_the_code_in_hex() -> None:
    step = place(ev(1, "crash", "hypervisor", "notified", vtl=1, code=0x18B, params=[0x10]))
    assert (step.src, step.dst) == ("SK", "HV") and step.label == "crash notify 0x18B"
