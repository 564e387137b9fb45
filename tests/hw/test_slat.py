"""Per-VTL SLAT rights (TLFS R=1, W=2, KX=4, UX=8), their intersection, and MBEC."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.paging import PagingLayer, SimplePagingState
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import LONG_MODE_CR4
from vbsim.hw.slat import ALL, KX, UX, R, Slat, SlatLayer, W, describe, exec_right
from vbsim.hw.x86 import PAGE_SHIFT, Access, Cr4, Pte

PAGES = 64
SIZE = PAGES << PAGE_SHIFT


def test_flag_values_are_the_tlfs_ones() -> None:
    assert (R, W, KX, UX, ALL) == (1, 2, 4, 8, 15)


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (0, "none"),
        (R, "R"),
        (R | W, "RW"),
        (R | KX, "R+KX"),
        (R | UX, "R+UX"),
        (R | W | KX | UX, "RW+KX+UX"),
        (KX, "-+KX"),
        (W, "W"),
        (0x10, "none"),
    ],
)
def test_describe(mask: int, text: str) -> None:
    assert describe(mask) == text


@pytest.mark.parametrize(("user", "mbec", "smep"), list(itertools.product([False, True], repeat=3)))
def test_exec_right_table(user: bool, mbec: bool, smep: bool) -> None:
    # UX only for a user address with MBEC on and SMEP on; KX in every other case.
    expected = UX if (user and mbec and smep) else KX
    assert exec_right(user, mbec, smep) == expected


def test_no_protecting_vtl_means_unrestricted() -> None:
    slat = Slat(PAGES)
    assert slat.effective == [None, None]
    assert all(slat.rights(v, g) == ALL for v in (0, 1) for g in (0, PAGES - 1, PAGES, 10**9))
    assert not slat.protected_by(1)
    with pytest.raises(ValueError):
        slat.set(1, 0, R)


def test_enable_vtl_default_mask_applies_to_all_pages_of_lower_vtls() -> None:
    slat = Slat(PAGES)
    g0 = slat.generation
    slat.enable_vtl(1, default_mask=R | W)
    assert slat.protected_by(1)
    assert slat.generation > g0
    assert [slat.rights(0, g) for g in range(PAGES)] == [R | W] * PAGES
    assert slat.rights(1, 5) == ALL  # the protecting VTL is not restricted by itself
    assert slat.protection(1, 5) == R | W
    assert slat.rights(0, PAGES) == 0  # outside the table: nothing
    assert slat.rights(0, -1) == 0


def test_default_mask_is_rwx_and_truncated_to_four_bits() -> None:
    slat = Slat(PAGES)
    slat.enable_vtl(1)
    assert slat.rights(0, 0) == ALL
    slat = Slat(PAGES)
    slat.enable_vtl(1, default_mask=0xF3)
    assert slat.rights(0, 0) == 0x3


def test_set_changes_one_page_and_bumps_generation() -> None:
    slat = Slat(PAGES)
    slat.enable_vtl(1)
    g = slat.generation
    slat.set(1, 7, R | 0x30)
    assert slat.generation == g + 1
    assert slat.rights(0, 7) == R
    assert slat.rights(0, 6) == ALL and slat.rights(0, 8) == ALL
    assert slat.protection(1, 7) == R


def test_three_vtls_intersect_protections() -> None:
    slat = Slat(PAGES, vtls=3)
    slat.enable_vtl(1)
    slat.enable_vtl(2)
    slat.set(1, 3, R | W | KX | UX)
    slat.set(2, 3, R | KX | UX)
    slat.set(1, 4, R)
    slat.set(2, 4, R | W)
    # VTL0 is restricted by VTL1 and VTL2; VTL1 only by VTL2; VTL2 by nobody.
    assert (slat.rights(0, 3), slat.rights(1, 3), slat.rights(2, 3)) == (
        R | KX | UX,
        R | KX | UX,
        ALL,
    )
    assert (slat.rights(0, 4), slat.rights(1, 4), slat.rights(2, 4)) == (R, R | W, ALL)
    slat.set(2, 4, ALL)
    assert (slat.rights(0, 4), slat.rights(1, 4)) == (R, ALL)
    slat.set(1, 4, R | W)
    assert slat.rights(0, 4) == R | W


def test_enabling_a_higher_vtl_later_keeps_earlier_protections() -> None:
    slat = Slat(PAGES, vtls=3)
    slat.enable_vtl(1)
    slat.set(1, 9, R)
    slat.enable_vtl(2, default_mask=R | W)
    assert slat.rights(0, 9) == R
    assert slat.rights(0, 10) == R | W
    assert slat.rights(1, 9) == R | W


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(0, 7), st.integers(0, 15))))
def test_effective_is_the_intersection_property(ops: list[tuple[int, int, int]]) -> None:
    slat = Slat(8, vtls=3)
    slat.enable_vtl(1)
    slat.enable_vtl(2)
    model = {1: [ALL] * 8, 2: [ALL] * 8}
    for vtl, gpn, mask in ops:
        slat.set(vtl, gpn, mask)
        model[vtl][gpn] = mask
    for gpn in range(8):
        assert slat.rights(0, gpn) == model[1][gpn] & model[2][gpn]
        assert slat.rights(1, gpn) == model[2][gpn]
        assert slat.rights(2, gpn) == ALL


# -- SlatLayer ----------------------------------------------------------------------------------
@pytest.fixture
def slat() -> Slat:
    s = Slat(PAGES)
    s.enable_vtl(1)
    return s


@pytest.mark.parametrize("mask", range(16))
@pytest.mark.parametrize("access", list(Access), ids=lambda a: a.name)
def test_slat_layer_supervisor_rights(slat: Slat, mask: int, access: Access) -> None:
    slat.set(1, 5, mask)
    layer = SlatLayer(slat, 0, SIZE)
    gpa = (5 << PAGE_SHIFT) | 0x123
    verdict = layer.translate(gpa, access)
    need = {Access.READ: R, Access.WRITE: W, Access.EXECUTE: KX}[access]
    assert (verdict.ok, verdict.address, verdict.mechanism, verdict.access) == (
        bool(mask & need),
        gpa,
        "slat",
        access,
    )
    # VTL1 sees everything regardless.
    assert SlatLayer(slat, 1, SIZE).translate(gpa, access).ok


@pytest.mark.parametrize(
    ("mask", "user", "mbec", "smep", "ok"),
    [
        (R | UX, True, True, True, True),  # MBEC: UX governs user fetches
        (R | KX, True, True, True, False),
        (R | UX, False, True, True, False),  # MBEC: KX governs supervisor fetches
        (R | KX, False, True, True, True),
        (R | UX, True, False, True, False),  # no MBEC: KX governs both
        (R | KX, True, False, True, True),
        (R | UX, True, True, False, False),  # SMEP off: KX governs all execution
        (R | KX, True, True, False, True),
    ],
)
def test_slat_layer_mbec(
    slat: Slat, mask: int, user: bool, mbec: bool, smep: bool, ok: bool
) -> None:
    slat.set(1, 2, mask)
    verdict = SlatLayer(slat, 0, SIZE).translate(
        2 << PAGE_SHIFT, Access.EXECUTE, user_address=user, mbec=mbec, smep=smep
    )
    assert verdict.ok is ok


@pytest.mark.parametrize("gpa", [SIZE, SIZE + 1, 1 << 50, -1])
def test_slat_layer_outside_ram_is_unbacked(slat: Slat, gpa: int) -> None:
    verdict = SlatLayer(slat, 1, SIZE).translate(gpa, Access.READ)
    assert (verdict.ok, verdict.mechanism, verdict.address) == (False, "ram.unbacked", gpa)


# -- MBEC through the page walker -------------------------------------------------------------
def _walker(mask: int, user_page: bool, mbec: bool, cr4: int, cpl: int) -> tuple[PagingLayer, int]:
    ram = GuestRam(SIZE)
    pt = PageTables(PhysAccess.direct(ram, "mbec"))
    gpa = ram.frames.alloc("data") << PAGE_SHIFT
    pt.map(0x40_0000, gpa, int(Pte.US) if user_page else 0)
    slat = Slat(PAGES)
    slat.enable_vtl(1)
    slat.set(1, gpa >> PAGE_SHIFT, mask)
    state = SimplePagingState(cr3=pt.root, cr4=cr4, cpl=cpl)
    return PagingLayer(ram, slat, 0, state, mbec=mbec), gpa


SMEP = int(Cr4.SMEP)


@pytest.mark.parametrize(
    ("mask", "user_page", "mbec", "cr4", "cpl", "expect"),
    [
        # user page, CPL3
        (R | UX, True, True, LONG_MODE_CR4 | SMEP, 3, "paging"),
        (R | KX | UX, True, True, LONG_MODE_CR4 | SMEP, 3, "paging"),
        (R | KX, True, True, LONG_MODE_CR4 | SMEP, 3, "slat"),
        (R | UX, True, False, LONG_MODE_CR4 | SMEP, 3, "slat"),
        (R | KX, True, False, LONG_MODE_CR4 | SMEP, 3, "paging"),
        # SMEP available but disabled: all execution is governed by KX
        (R | UX, True, True, LONG_MODE_CR4, 3, "slat"),
        (R | KX, True, True, LONG_MODE_CR4, 3, "paging"),
        # supervisor page, CPL0
        (R | UX, False, True, LONG_MODE_CR4 | SMEP, 0, "slat"),
        (R | KX | UX, False, True, LONG_MODE_CR4 | SMEP, 0, "paging"),
        (R | KX, False, False, LONG_MODE_CR4 | SMEP, 0, "paging"),
        # user page, CPL0 with SMEP: paging refuses before SLAT is asked
        (R | KX | UX, True, True, LONG_MODE_CR4 | SMEP, 0, "smep"),
        # user page, CPL0 without SMEP: KX governs
        (R | KX, True, True, LONG_MODE_CR4, 0, "paging"),
        (R | UX, True, True, LONG_MODE_CR4, 0, "slat"),
    ],
)
def test_walk_execute_rights_with_mbec(
    mask: int, user_page: bool, mbec: bool, cr4: int, cpl: int, expect: str
) -> None:
    layer, gpa = _walker(mask, user_page, mbec, cr4, cpl)
    verdict, _ = layer.walk(0x40_0010, Access.EXECUTE)
    assert verdict.mechanism == expect
    assert verdict.ok is (expect == "paging")
    if expect == "slat":
        assert verdict.access is Access.EXECUTE and verdict.gpa == gpa + 0x10


def test_slat_check_uses_the_layer_mbec_and_cr4() -> None:
    layer, gpa = _walker(R | UX, True, True, LONG_MODE_CR4 | SMEP, 3)
    assert layer.slat_check(gpa, Access.EXECUTE, True) is None
    refused = layer.slat_check(gpa, Access.EXECUTE, False)
    assert refused is not None and refused.mechanism == "slat" and refused.gpa == gpa
    assert layer.slat_check(gpa, Access.WRITE, True) is not None
    assert layer.slat_check(SIZE + 4096, Access.WRITE, True) is None  # not RAM: no SLAT
