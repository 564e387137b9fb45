"""Dynamic KDP: the secure pool (vbs-internals §5.2, §6 A28)."""

from __future__ import annotations

from typing import Any

import pytest

from vbsim.hw.faults import Bugcheck
from vbsim.hw.slat import R
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import kdp
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.services import kdp as skkdp
from vbsim.sk.services.kdp import COPY_ALLOCATE
from vbsim.sk.sscn import Service

from .kit import booted, events, kernel_page, parts, sk_gpa, sk_of, space_of

TAG = int.from_bytes(b"KdpT", "little")
COOKIE = 0x0C00_C1E5_EC12_E7A5
SECRET = b"config: callbacks=3 policy=strict"


def _pool(name: str = "vbs-hvci") -> tuple[Any, ...]:
    system = booted(name)
    machine, nt, vp = parts(system)
    status, pool = kdp.ex_create_secure_pool(nt, vp.cpu, 2)
    assert status == NtStatus.SUCCESS and pool is not None
    status, block = kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, TAG, SECRET, COOKIE)
    assert status == NtStatus.SUCCESS
    return system, machine, nt, vp, pool, block


def _gpa(pool: kdp.SecurePool, va: int) -> int:
    return (pool.base_pfn << PAGE_SHIFT) + (va - pool.va)


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_pool_is_readable_but_only_the_sk_writes_it(name: str) -> None:
    system, machine, _nt, vp, pool, block = _pool(name)
    assert machine.slat is not None
    assert all(machine.slat.rights(0, pool.base_pfn + i) == R for i in range(pool.pages))
    assert vp.read(block, len(SECRET)) == SECRET
    with pytest.raises(Bugcheck):
        vp.write(block, b"forged")
    assert machine.ram.read(_gpa(pool, block), len(SECRET)) == SECRET
    assert events(system, "kdp", "securepool.init")[-1].outcome == "created"


def test_update_with_tag_and_cookie_succeeds() -> None:
    system, _machine, nt, vp, pool, block = _pool()
    status = kdp.ex_secure_pool_update(nt, vp.cpu, pool, TAG, block, COOKIE, 8, b"CALLBACKS")
    assert status == NtStatus.SUCCESS
    assert vp.read(block, len(SECRET)) == SECRET[:8] + b"CALLBACKS" + SECRET[17:]
    assert events(system, "kdp", "securepool.cookie")[-1].outcome == "accepted"


@pytest.mark.parametrize(
    ("tag", "cookie", "offset", "data", "shift", "status", "mechanism"),
    [
        (TAG, COOKIE ^ 1, 0, b"x", 0, NtStatus.ACCESS_DENIED, "securepool.cookie"),
        (TAG, 0, 0, b"x", 0, NtStatus.ACCESS_DENIED, "securepool.cookie"),
        (TAG ^ 0x20, COOKIE, 0, b"x", 0, NtStatus.ACCESS_DENIED, "securepool.tag"),
        (TAG, COOKIE, len(SECRET), b"x", 0, NtStatus.INVALID_PARAMETER, "securepool.bounds"),
        (TAG, COOKIE, 30, b"xxxx", 0, NtStatus.INVALID_PARAMETER, "securepool.bounds"),
        (TAG, COOKIE, 1 << 63, b"x", 0, NtStatus.INVALID_PARAMETER, "securepool.bounds"),
        (TAG, COOKIE, 0, b"x", 16, NtStatus.INVALID_PARAMETER, "securepool.block"),
        (TAG, COOKIE, 0, b"x", 1, NtStatus.INVALID_PARAMETER, "securepool.block"),
        (TAG, COOKIE, 0, b"x", -PAGE_SIZE, NtStatus.INVALID_PARAMETER, "securepool.block"),
    ],
)
def test_a28_forged_updates_are_refused(
    tag: int, cookie: int, offset: int, data: bytes, shift: int, status: int, mechanism: str
) -> None:
    system, machine, nt, vp, pool, block = _pool()
    got = kdp.secure_pool_update_raw(nt, vp.cpu, pool, tag, block + shift, cookie, offset, data)
    assert got == status
    assert events(system, "kdp", mechanism)[-1].outcome == "refused"
    assert machine.ram.read(_gpa(pool, block), len(SECRET)) == SECRET


def test_nt_bugchecks_bad_pool_caller_when_the_sk_refuses() -> None:
    _system, _machine, nt, vp, pool, block = _pool()
    with pytest.raises(Bugcheck) as stop:
        kdp.ex_secure_pool_update(nt, vp.cpu, pool, TAG, block, COOKIE + 1, 0, b"x")
    assert stop.value.code == BugCheck.BAD_POOL_CALLER


def test_cookie_never_reaches_vtl0_readable_memory() -> None:
    system, machine, _nt, _vp, pool, _block = _pool()
    cookie = COOKIE.to_bytes(8, "little")
    pool_bytes = machine.ram.read(pool.base_pfn << PAGE_SHIFT, pool.pages * PAGE_SIZE)
    assert cookie not in pool_bytes
    sk = sk_of(system)
    table = machine.ram.read(sk_gpa(sk, skkdp.state(sk).table_va), PAGE_SIZE)
    assert cookie in table  # the SK's copy, in VTL1 RAM
    assert machine.slat is not None
    assert machine.slat.rights(0, sk_gpa(sk, skkdp.state(sk).table_va) >> PAGE_SHIFT) == 0


def test_handles_sources_and_allocations_are_checked() -> None:
    system, machine, nt, vp, pool, block = _pool()
    sk = sk_of(system)
    assert nt.vsl is not None
    status, handle = kdp.create_secure_allocation(nt, vp.cpu, 64)
    assert status == NtStatus.SUCCESS
    _, src = kernel_page(nt, vp, b"payload")
    base = [TAG, block, COOKIE, 0, 7, src, 0, 0]
    # A handle of another kind, and no handle at all.
    assert nt.vsl.call(vp.cpu, Service.COPY_PROTECTED_PAGE, handle, *base)[0] == (
        NtStatus.OBJECT_TYPE_MISMATCH
    )
    assert nt.vsl.call(vp.cpu, Service.COPY_PROTECTED_PAGE, 0x1234, *base)[0] == (
        NtStatus.INVALID_HANDLE
    )
    # A source in SK memory (the SK would copy its own bytes into the pool).
    sk_source = sorted(space_of(sk).frames)[0]
    fields = [pool.handle, TAG, block, COOKIE, 0, 7, sk_source, 0, 0]
    assert (
        nt.vsl.call(vp.cpu, Service.COPY_PROTECTED_PAGE, *fields)[0] == NtStatus.INVALID_PARAMETER
    )
    # A source running off its page, a zero or oversized size, unknown flags.
    for size, offset, flags in ((8, PAGE_SIZE - 4, 0), (0, 0, 0), (PAGE_SIZE + 1, 0, 0), (7, 0, 8)):
        fields = [pool.handle, TAG, block, COOKIE, 0, size, src, offset, flags]
        assert nt.vsl.call(vp.cpu, Service.COPY_PROTECTED_PAGE, *fields)[0] == (
            NtStatus.INVALID_PARAMETER
        )
    # Allocation requests cannot choose where the block goes.
    fields = [pool.handle, TAG, block, COOKIE, 4, 7, src, 0, COPY_ALLOCATE]
    assert (
        nt.vsl.call(vp.cpu, Service.COPY_PROTECTED_PAGE, *fields)[0] == NtStatus.INVALID_PARAMETER
    )
    assert machine.ram.read(_gpa(pool, block), len(SECRET)) == SECRET


def test_new_allocations_never_overlap_and_the_pool_fills_up() -> None:
    _system, machine, nt, vp, pool, block = _pool()
    seen = {block}
    while True:
        status, va = kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, TAG, b"z" * 1000, 7)
        if status != NtStatus.SUCCESS:
            assert status == NtStatus.NO_MEMORY
            break
        assert va not in seen and va >= block + len(SECRET)
        seen.add(va)
    assert machine.ram.read(_gpa(pool, block), len(SECRET)) == SECRET


def test_pool_pages_are_validated() -> None:
    system = booted("vbs-hvci")
    machine, nt, vp = parts(system)
    sk = sk_of(system)
    assert nt.vsl is not None
    va, pfn = kernel_page(nt, vp)
    # The VA must map the PFNs it names.
    assert nt.vsl.call(vp.cpu, Service.INITIALIZE_SECURE_POOL, pfn + 1, 1, va)[0] == (
        NtStatus.INVALID_PARAMETER
    )
    sk_pfn = sorted(space_of(sk).frames)[0]
    sk_va = 0xFFFF_8000_0000_0000 + (sk_pfn << PAGE_SHIFT)
    assert nt.vsl.call(vp.cpu, Service.INITIALIZE_SECURE_POOL, sk_pfn, 1, sk_va)[0] == (
        NtStatus.INVALID_PARAMETER
    )
    assert nt.vsl.call(vp.cpu, Service.INITIALIZE_SECURE_POOL, pfn, 0, va)[0] == (
        NtStatus.INVALID_PARAMETER
    )
    assert nt.vsl.call(vp.cpu, Service.INITIALIZE_SECURE_POOL, pfn, 1, va + 8)[0] == (
        NtStatus.INVALID_PARAMETER
    )
    assert machine.slat is not None and machine.slat.rights(0, pfn) != R


def test_secure_pool_needs_kdp_and_build_b() -> None:
    for name, changes, status in (
        ("vbs", {}, NtStatus.SUCCESS),  # KDP needs VBS only (MS Learn, MS-KDP 2020)
        ("vbs", {"kdp": False}, NtStatus.NOT_SUPPORTED),  # a Secure Kernel without KDP
        ("legacy-2019", {"kdp": True}, NtStatus.NOT_SUPPORTED),  # build A: no such number
        ("vbs-off", {}, NtStatus.INVALID_DEVICE_STATE),  # no VBS at all
    ):
        _, nt, vp = parts(booted(name, **changes))
        assert kdp.ex_create_secure_pool(nt, vp.cpu, 1)[0] == status, name


def test_a_call_refused_for_want_of_a_capture_slot_leaves_no_block_behind() -> None:
    """COPY_PROTECTED_PAGE takes its capture slot before it allocates: when every slot is held
    it is refused with STATUS_NO_MEMORY and neither a record nor the pool cursor changes, so
    the next allocation gets the block right after the last real one."""
    from vbsim.sk.layouts import Capture
    from vbsim.sk.services.allocation import CAPTURE_SLOTS, state

    system, machine, nt, vp, pool, block = _pool()
    sk = sk_of(system)
    busy_gpa = sk_gpa(sk, state(sk).control_va) + Capture.BUSY.offset
    machine.ram.write(busy_gpa, ((1 << CAPTURE_SLOTS) - 1).to_bytes(4, "little"))
    status, _ = kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, TAG, b"held", 7)
    assert status == NtStatus.NO_MEMORY
    refusal = events(system, "kdp", "securepool.block")[-1]
    assert refusal.outcome == "refused" and refusal.detail["reason"] == "no-capture-slot"
    machine.ram.write(busy_gpa, bytes(4))
    status, va = kdp.ex_allocate_pool3_secure(nt, vp.cpu, pool, TAG, b"next", 7)
    assert status == NtStatus.SUCCESS
    assert va == block + -(-len(SECRET) // skkdp.POOL_ALIGN) * skkdp.POOL_ALIGN
