"""Random SECURE_CALL_ARGS blocks from VTL0 ring 0 (vbs-internals §2.3, §6 A8, A10).

Whatever a compromised NT sends, the only outcomes are a reply or a guest event (an unknown
number or operation bugchecks the Secure Kernel by design, A10), and not one byte of the SK's
memory changes — except the pages a secure call legitimately writes (see ``kit.scratch_pages``)
and the page-table A/D bits.  With a legacy switch on, a crafted call does change it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.hw.faults import GuestTermination
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import kdp
from vbsim.ntstatus import NtStatus
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.kernel import FIRST_HANDLE
from vbsim.sk.services import allocation
from vbsim.sk.services.allocation import MDL_HEADER
from vbsim.sk.sscn import Service

from .kit import allocation_fields, booted, fingerprint, kernel_page, legacy, parts, sk_gpa, sk_of
from .kit import handles as table_of

#: Services that legitimately change state (they create or destroy objects, start processors,
#: change SLAT or load code): left out of the fuzz.  Names, so that services other modules add
#: later are fuzzed unless they are listed here.
STATEFUL = {
    "PHASE3_INIT",
    "PHASE4_INIT",
    "START_PROCESSOR",
    "CREATE_PROCESS",
    "INITIALIZE_PROCESS",
    "CREATE_THREAD",
    "RESUME_THREAD",
    "TERMINATE_THREAD",
    "RUNDOWN_PROCESS",
    "CREATE_SECURE_ALLOCATION",
    "CREATE_SECURE_IMAGE",
    "FINALIZE_SECURE_IMAGE_HASH",
    "FINISH_SECURE_IMAGE_VALIDATION",
    "CLOSE_SECURE_HANDLE",
    "LIVEDUMP_START",  # a new context (pool block, handle): state by design
    "LIVEDUMP_ABORT",
    "LOAD_DRIVER",
    "UNLOAD_DRIVER",
    "CREATE_SECURE_SECTION",
    "INITIALIZE_SECURE_POOL",
    "PROTECT_KERNEL_DATA_PAGE",
    "REGISTER_PROTECTED_PAGE",
    "MAKE_PROTECTED_PAGE_WRITABLE",
    "MAKE_PROTECTED_PAGE_EXECUTABLE",
    "SHUTDOWN",
    "PREPARE_FOR_HIBERNATION",
    "PREPARE_FOR_CRASHDUMP",
    "BUGCHECK",
}

CONFIGS = [
    ("vbs", {}),
    ("vbs", {"build": "A"}),
    ("vbs-hvci", {}),
    ("hardened", {}),
]

EDGES = [0, 1, 0x30, 4095, 4096, 4097, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63, (1 << 64) - 1]


def _world(system: Any) -> dict[str, Any]:
    """A booted machine with an allocation, a secure pool (build B) and a staged MDL page."""
    machine, nt, vp = parts(system)
    sk = sk_of(system)
    status, handle = kdp.create_secure_allocation(nt, vp.cpu, 2 * PAGE_SIZE)
    assert status == NtStatus.SUCCESS
    handles = [handle]
    if Service.INITIALIZE_SECURE_POOL in sk.table and system.policy.kdp:
        status, pool = kdp.ex_create_secure_pool(nt, vp.cpu, 1)
        assert pool is not None
        handles.append(pool.handle)
        kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, 1, b"cfg", 2)
    data_pfns = kdp.stage_buffer(nt, vp.cpu, b"\x5a" * (2 * PAGE_SIZE))
    mdl_va, mdl_pfn = kernel_page(nt, vp)
    vtl1 = sorted(sk.host_own_pages(machine.ram))
    policy_pfn = sk.hvci.hashes_gpa >> PAGE_SHIFT
    buffer_pfn = sk_gpa(sk, allocation_fields(sk, handle)[0]) >> PAGE_SHIFT
    pfns = [*data_pfns, mdl_pfn, policy_pfn, buffer_pfn, vtl1[0], vtl1[-1], machine.ram.pages]
    vas = [
        mdl_va,
        CODE_BASE,
        DIRECT_MAP + (policy_pfn << PAGE_SHIFT),
        allocation.state(sk).behind_va,
        nt.data_va,
    ]
    handles += [*table_of(sk), FIRST_HANDLE, FIRST_HANDLE + 4 * 64]
    numbers = sorted(n for svc, n in sk.table.number.items() if svc.value not in STATEFUL)
    stateful = {n for svc, n in sk.table.number.items() if svc.value in STATEFUL}
    return {
        "machine": machine,
        "nt": nt,
        "vp": vp,
        "sk": sk,
        "mdl": (mdl_va, mdl_pfn),
        "values": sorted(set(pfns + vas + handles + EDGES)),
        "pfns": pfns,
        "data_pfns": data_pfns,
        "vas": [*vas, mdl_va + 8, mdl_va + PAGE_SIZE - 8],
        "handles": handles,
        "numbers": numbers,
        "stateful": stateful,
        "parameter_heavy": [
            sk.table.number[svc]
            for svc in (Service.FILL_SECURE_ALLOCATION, Service.COPY_PROTECTED_PAGE)
            if svc in sk.table
        ],
    }


def _mdl(data: st.DataObject, world: dict[str, Any]) -> bytes:
    """An MDL for the staged page: well formed over VTL0 pages half the time (so the copy path
    runs), otherwise anything — SK PFNs, a lying Size, huge counts."""
    if data.draw(st.booleans(), label="well formed?"):
        pfns = world["data_pfns"]
        count = data.draw(st.integers(1, PAGE_SIZE + 16), label="ByteCount")
        offset = data.draw(st.integers(0, PAGE_SIZE - 16), label="ByteOffset")
        return allocation.mdl_bytes(pfns, count, offset)
    pfns = data.draw(st.lists(st.sampled_from(world["pfns"]), max_size=6), label="mdl pfns")
    size = data.draw(
        st.one_of(st.just(MDL_HEADER.size + 8 * len(pfns)), st.integers(0, 0xFFFF)), label="Size"
    )
    count = data.draw(st.one_of(st.sampled_from(EDGES), st.integers(0, 3 * PAGE_SIZE)))
    offset = data.draw(st.one_of(st.sampled_from(EDGES), st.integers(0, PAGE_SIZE)))
    return allocation.mdl_bytes(pfns, count & 0xFFFF_FFFF, offset & 0xFFFF_FFFF, size=size)


def _block(data: st.DataObject, world: dict[str, Any]) -> SecureCallArgs:
    numbers = world["numbers"]
    op = 2 if data.draw(st.integers(0, 9), label="op=2?") else data.draw(st.integers(0, 255))
    choice = data.draw(st.integers(0, 9), label="which number")
    if choice < 4:  # the services whose arguments are MDLs, PFNs, offsets and handles
        number = data.draw(st.sampled_from(world["parameter_heavy"]), label="number")
    elif choice < 9:
        number = data.draw(st.sampled_from(numbers), label="number")
    else:
        number = data.draw(
            st.integers(0, 0xFFFF).filter(lambda n: n not in world["stateful"]), label="number"
        )
    value = st.one_of(
        st.sampled_from(world["values"]),
        st.sampled_from(world["values"]),
        st.integers(0, (1 << 64) - 1),
        st.integers(0, 2 * PAGE_SIZE),
    )
    # Argument-shaped blocks (handle, offset or tag, pointer, PFN or cookie ...) reach past the
    # first checks far more often than uniform ones.
    mdl_va, mdl_pfn = world["mdl"]
    shaped = st.tuples(
        st.sampled_from(world["handles"]),
        st.one_of(st.integers(0, 64), st.sampled_from(EDGES), st.integers(0, 2 * PAGE_SIZE)),
        st.one_of(st.just(mdl_va), st.sampled_from(world["vas"]), value),
        st.one_of(st.just(mdl_pfn), st.sampled_from(world["pfns"]), value),
        *[value] * 8,
    ).map(list)
    uniform = st.lists(value, min_size=12, max_size=12)
    shape = data.draw(st.integers(0, 3), label="shaped?")
    fields = data.draw(shaped if shape else uniform, label="fields")
    cookie = data.draw(st.integers(0, (1 << 32) - 1), label="cookie")
    return SecureCallArgs(op, number, cookie, fields)


@pytest.mark.parametrize(("name", "changes"), CONFIGS, ids=[f"{n}{c}" for n, c in CONFIGS])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_blocks_never_change_sk_memory(
    name: str, changes: dict[str, Any], data: st.DataObject
) -> None:
    system = booted(name, **changes)
    world = _world(system)
    vp, sk, nt = world["vp"], world["sk"], world["nt"]
    vp.write(world["mdl"][0], _mdl(data, world))
    baseline = fingerprint(sk)
    blocks = data.draw(st.integers(1, 4), label="blocks")
    assert nt.vsl is not None
    for _ in range(blocks):
        block = _block(data, world)
        try:
            nt.vsl.call_raw(vp.cpu, block)
        except GuestTermination:
            break  # a bugcheck (unknown number or operation): the machine is gone
    assert fingerprint(sk) == baseline


def test_known_numbers_never_include_stateful_services() -> None:
    system = booted("hardened")
    numbers = _world(system)["numbers"]
    sk = sk_of(system)
    assert sk.table.number[Service.FILL_SECURE_ALLOCATION] in numbers
    assert sk.table.number[Service.CREATE_SECURE_ALLOCATION] not in numbers


# -- the legacy switches really reproduce the bug --------------------------------------------------
def _crafted_overflow(world: dict[str, Any]) -> int:
    """FILL at the allocation's last 8 bytes with ByteCount 24: 16 bytes past its end."""
    nt, vp, sk = world["nt"], world["vp"], world["sk"]
    handle = next(h for h, (k, _) in table_of(sk).items() if k == allocation.KIND)
    size = allocation_fields(sk, handle)[1]
    pfns = kdp.stage_buffer(nt, vp.cpu, b"\x41" * 64)
    mdl_va, mdl_pfn = kernel_page(nt, vp, allocation.mdl_bytes(pfns, 24))
    args = [handle, size - 8, mdl_va, mdl_pfn]
    assert nt.vsl is not None
    number = nt.vsl.table.number[Service.FILL_SECURE_ALLOCATION]
    return int(nt.vsl.call_raw(vp.cpu, SecureCallArgs(2, number, 0, args)).fields[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: booted("legacy-2019"),
        lambda: legacy("vbs", unchecked_securecall_params=True),
        lambda: legacy("hardened", unchecked_securecall_params=True),
    ],
)
def test_with_the_legacy_switch_a_crafted_call_changes_sk_memory(make: Any) -> None:
    system = make()
    sk = sk_of(system)
    world = _world(system)
    baseline = fingerprint(sk)
    assert _crafted_overflow(world) == NtStatus.SUCCESS
    after = fingerprint(sk)
    changed = [pfn for pfn in baseline if baseline[pfn] != after.get(pfn)]
    assert changed == [sk.hvci.hashes_gpa >> PAGE_SHIFT]


@pytest.mark.parametrize("name", ["vbs", "hardened"])
def test_without_the_switch_the_crafted_call_is_refused(name: str) -> None:
    system = booted(name)
    sk = sk_of(system)
    world = _world(system)
    baseline = fingerprint(sk)
    assert _crafted_overflow(world) == NtStatus.INVALID_PARAMETER
    assert fingerprint(sk) == baseline
