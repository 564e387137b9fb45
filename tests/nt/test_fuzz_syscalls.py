"""Random system calls from a VTL0 user process: NTSTATUS results (or a terminated thread), never a
Python exception escaping the model, never a bugcheck (DESIGN.md: a Python exception escaping the
model is a bug in vbsim; a user can never crash the kernel)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vbsim.boot.chain import System, boot
from vbsim.boot.disk import VBS_REGISTRY_KEY
from vbsim.nt import lsass
from vbsim.nt.syscalls import MAX_ALLOCATION, NUMBERS
from vbsim.policy import preset

from .userland import ADMIN, ADMIN_DEBUG, SCRATCH_SIZE, USER, User, spawn

#: A symbolic pointer into the caller's scratch region, resolved once the process exists.
Scratch = tuple[str, int]
Arg = int | Scratch

KEY = VBS_REGISTRY_KEY.encode("utf-8")
KEY_AT = 0  # the scratch region starts with the registry key's bytes
u64 = st.integers(0, (1 << 64) - 1)
small = st.sampled_from([0, 1, 2, 3, 4, 8, 0x3F, 0x1000, 0xFFFF_FFFF, (1 << 64) - 1])
anything = st.one_of(u64, small)
tokens = st.sampled_from([USER, ADMIN, ADMIN_DEBUG])


def scratch(low: int, high: int) -> st.SearchStrategy[Scratch]:
    return st.integers(low, high).map(lambda offset: ("scratch", offset))


pids = st.one_of(st.sampled_from(["self", "lsass", "system", "other"]), anything)
target_addresses = st.one_of(st.sampled_from(["lsass-record", "self-scratch"]), anything)
out_ptr = scratch(0, SCRATCH_SIZE - 8)


@st.composite
def transfer_args(draw: st.DrawFn) -> list[Any]:
    offset = draw(st.integers(0, SCRATCH_SIZE - 1))
    size = draw(
        st.one_of(
            st.integers(1, SCRATCH_SIZE - offset),
            st.sampled_from([0, (1 << 20) + 1, (1 << 64) - 1]),  # rejected before any copy
        )
    )
    return [draw(pids), draw(target_addresses), ("scratch", offset), size]


@st.composite
def key_args(draw: st.DrawFn, with_out: bool) -> list[Any]:
    if draw(st.booleans()):
        ptr: Arg = ("scratch", KEY_AT)
        length = len(KEY)
    else:
        ptr = draw(scratch(0, SCRATCH_SIZE - 256))
        length = draw(st.one_of(st.integers(0, 256), st.sampled_from([257, 1 << 40])))
    third = draw(out_ptr) if with_out else draw(anything)
    return [ptr, length, third]


_SERVED = set(NUMBERS.values())

allocate_args = st.tuples(
    out_ptr,
    st.one_of(
        st.integers(0, 1 << 17),
        st.sampled_from([0, 1, 4096, 4097, MAX_ALLOCATION + 1, (1 << 64) - 1]),
    ),
    st.one_of(st.sampled_from([0x02, 0x04, 0x20, 0x40]), anything),
).map(list)

well_formed_call = st.one_of(
    st.tuples(st.just(NUMBERS["NtTestAlert"]), st.lists(anything, max_size=4)),
    st.tuples(st.just(NUMBERS["NtAllocateVirtualMemory"]), allocate_args),
    st.tuples(st.just(NUMBERS["NtReadVirtualMemory"]), transfer_args()),
    st.tuples(st.just(NUMBERS["NtWriteVirtualMemory"]), transfer_args()),
    st.tuples(st.just(NUMBERS["NtTerminateProcess"]), st.tuples(pids, anything).map(list)),
    st.tuples(st.just(NUMBERS["NtSetValueKey"]), key_args(with_out=False)),
    st.tuples(st.just(NUMBERS["NtQueryValueKey"]), key_args(with_out=True)),
    st.tuples(
        st.just(NUMBERS["NtQueryInformationProcess"]),
        st.tuples(pids, st.one_of(st.just(0x3F), anything), out_ptr).map(list),
    ),
    # Numbers the kernel does not serve: any arguments at all.
    st.tuples(
        st.one_of(u64, st.integers(0, 0x200)).filter(lambda n: n not in _SERVED),
        st.lists(anything, max_size=4),
    ),
)


def resolve(arg: Any, user: User, other: User) -> int:
    system = user.system
    assert system.nt is not None
    pid, va, _ = lsass.credential_region(system.nt)
    if isinstance(arg, tuple):
        return user.scratch.base + arg[1]
    named = {
        "self": user.process.pid,
        "lsass": pid,
        "system": 4,
        "other": other.process.pid,
        "lsass-record": va,
        "self-scratch": user.scratch.base,
    }
    if isinstance(arg, str):
        return named[arg]
    assert isinstance(arg, int)
    return arg


def run_calls(system: System, token: Any, calls: list[tuple[int, list[Any]]]) -> None:
    other = spawn(system, "other.exe", USER)
    user = spawn(system, "fuzz.exe", token)
    user.returned("tests.nt.write", user.scratch.base + KEY_AT, KEY)
    concrete = [(number, [resolve(a, user, other) for a in args]) for number, args in calls]
    outcome = user.run("tests.nt.syscalls", concrete)
    assert not system.trace.find("bugcheck")
    if outcome.terminated is None:
        statuses = outcome.returned
        assert len(statuses) == len(calls)
        assert all(isinstance(s, int) and 0 <= s <= 0xFFFF_FFFF for s in statuses), statuses
    machine = system.machine
    assert machine is not None
    assert (machine.bsp.vtl, machine.bsp.cpl) == (0, 0)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(["vbs", "vbs-off"]),
    tokens,
    st.lists(well_formed_call, min_size=1, max_size=6),
)
@example(
    "vbs",
    ADMIN_DEBUG,
    [(NUMBERS["NtReadVirtualMemory"], ["lsass", "lsass-record", ("scratch", 0), 256])],
)
@example("vbs", USER, [(NUMBERS["NtTerminateProcess"], ["self", 0]), (NUMBERS["NtTestAlert"], [])])
@example("vbs-off", ADMIN, [(NUMBERS["NtSetValueKey"], [("scratch", KEY_AT), len(KEY), 0])])
def test_random_well_formed_syscalls(
    name: str, token: Any, calls: list[tuple[int, list[Any]]]
) -> None:
    """Any numbers and arguments, with every pointer the kernel dereferences in the caller's
    space pointing into the caller's own writable memory."""
    system = boot(preset(name))
    try:
        run_calls(system, token, calls)
    finally:
        if system.machine is not None:
            system.machine.close()


any_call = st.tuples(
    st.one_of(st.sampled_from(sorted(_SERVED)), u64),
    st.lists(
        st.one_of(anything, out_ptr, st.sampled_from(["self", "lsass", "lsass-record"])), max_size=4
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vbs", "vbs-off"]), tokens, st.lists(any_call, min_size=1, max_size=6))
@example("vbs", USER, [(NUMBERS["NtAllocateVirtualMemory"], [0, 4096, 0x04])])
def test_random_syscalls_with_any_arguments(
    name: str, token: Any, calls: list[tuple[int, list[Any]]]
) -> None:
    system = boot(preset(name))
    try:
        run_calls(system, token, calls)
    finally:
        if system.machine is not None:
            system.machine.close()
