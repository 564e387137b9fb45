"""4-level paging through :meth:`PagingLayer.walk` (SDM Vol. 3A §4.5-§4.8)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.hw.paging import LEVELS, PagingLayer, SimplePagingState, canonical, check_rights
from vbsim.hw.slat import ALL, KX, UX, R, Slat, W
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Access, Pte

from .paging_cases import CASES, RSVD, Case, P
from .rig import TEST_VA, Rig

A, D, G = int(Pte.A), int(Pte.D), int(Pte.G)
RW, US, NX, PS = int(Pte.RW), int(Pte.US), int(Pte.NX), int(Pte.PS)
MIB2, GIB = 1 << 21, 1 << 30


@pytest.fixture
def rig() -> Rig:
    return Rig()


def _setup(case: Case) -> Rig:
    rig = Rig()
    rig.page(TEST_VA + 0x5000, case.leaf)
    for tweak in case.tweaks:
        tweak(rig, case.va)
    return rig


# -- the #PF table --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=str)
def test_walk_error_codes(case: Case) -> None:
    rig = _setup(case)
    gpa = rig.pt.lookup(TEST_VA + 0x5000)
    layer = rig.layer(cr0=case.cr0, cr4=case.cr4, efer=case.efer, cpl=case.cpl, rflags=case.rflags)
    verdict, leaf = layer.walk(case.va, case.access, implicit=case.implicit)
    assert verdict.access is case.access
    if not case.expect:
        assert gpa is not None
        assert verdict.ok, verdict
        assert verdict.mechanism == "paging"
        assert verdict.address == (gpa & 0x000F_FFFF_FFFF_F000) | (case.va & 0xFFF)
        assert leaf is not None and leaf.size_shift == 12 and leaf.level == "PTE"
        assert verdict.fault == 0
    else:
        assert not verdict.ok
        assert (verdict.mechanism, verdict.fault) == (case.expect, case.code), verdict
        assert verdict.address == case.va
        assert verdict.gpa is None
        assert leaf is None


def test_error_code_rsvd_always_comes_with_p() -> None:
    for case in CASES:
        if case.code & RSVD:
            assert case.code & P, case.name


# -- canonical addresses ---------------------------------------------------------------------
NON_CANONICAL = [
    0x0000_8000_0000_0000,
    0x0000_FFFF_FFFF_FFFF,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    0xFFFF_7FFF_FFFF_FFFF,
    1 << 64,
    (1 << 64) + 0x1000,
]


@pytest.mark.parametrize("va", NON_CANONICAL, ids=hex)
@pytest.mark.parametrize("access", list(Access), ids=lambda a: a.name)
def test_non_canonical_is_refused_before_any_table_is_read(
    rig: Rig, va: int, access: Access
) -> None:
    assert not canonical(va)
    # Make the tables unreadable: a canonical check must not need them.
    layer = rig.layer(cr3=(rig.ram.size + PAGE_SIZE))
    verdict, leaf = layer.walk(va, access)
    assert (verdict.ok, verdict.address, verdict.mechanism, verdict.access) == (
        False,
        va,
        "canonical",
        access,
    )
    assert verdict.fault == 0 and verdict.gpa is None and leaf is None


@pytest.mark.parametrize(
    "va", [0, 0x0000_7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF], ids=hex
)
def test_canonical_boundaries(rig: Rig, va: int) -> None:
    assert canonical(va)
    verdict, _ = rig.layer().walk(va, Access.READ)
    assert verdict.mechanism != "canonical"


# -- large pages ------------------------------------------------------------------------------
L2_VA = 0x0000_0000_8000_0000  # PDE-mapped 2 MiB page
L1_VA = 0x0000_0080_0000_0000  # PDPTE-mapped 1 GiB page
L2_GPA = 0x0060_0000
L1_GPA = 3 * GIB  # beyond RAM: the walk still translates (the bus decides later)


@pytest.mark.parametrize("offset", [0, 1, 0xFFF, 0x1000, 0x12345, 0x1F_F000, 0x1F_FFFF])
def test_2mib_page_translates_every_offset(rig: Rig, offset: int) -> None:
    rig.pt.map(L2_VA, L2_GPA, RW | US, 21)
    verdict, leaf = rig.layer(cpl=3).walk(L2_VA + offset, Access.READ)
    assert verdict.ok and verdict.address == L2_GPA + offset
    assert leaf is not None
    assert (leaf.size_shift, leaf.level) == (21, "PDE")
    assert leaf.gpa_page == (L2_GPA + offset) & ~0xFFF


@pytest.mark.parametrize("offset", [0, 0xFFF, 0x20_0000, 0x1234_5678, 0x3FFF_F000, GIB - 1])
def test_1gib_page_translates_every_offset(rig: Rig, offset: int) -> None:
    rig.pt.map(L1_VA, L1_GPA, RW, 30)
    verdict, leaf = rig.layer().walk(L1_VA + offset, Access.WRITE)
    assert verdict.ok and verdict.address == L1_GPA + offset
    assert leaf is not None
    assert (leaf.size_shift, leaf.level) == (30, "PDPTE")
    assert leaf.gpa_page == (L1_GPA + offset) & ~0xFFF


@settings(max_examples=100, deadline=None)
@given(
    offset2=st.integers(0, MIB2 - 1),
    offset1=st.integers(0, GIB - 1),
    frame2=st.integers(0, (1 << 25) - 1),
    frame1=st.integers(0, (1 << 16) - 1),
)
def test_large_pages_property(offset2: int, offset1: int, frame2: int, frame1: int) -> None:
    rig = _LARGE_RIG
    gpa2, gpa1 = frame2 << 21, frame1 << 30
    rig.ram.write_u64(rig.entry_gpa(L2_VA, 2), gpa2 | P | RW | PS)
    rig.ram.write_u64(rig.entry_gpa(L1_VA, 1), gpa1 | P | RW | PS)
    layer = rig.layer()
    v2, leaf2 = layer.walk(L2_VA + offset2, Access.READ)
    v1, leaf1 = layer.walk(L1_VA + offset1, Access.READ)
    assert v2.ok and v2.address == gpa2 + offset2 and leaf2 is not None
    assert v1.ok and v1.address == gpa1 + offset1 and leaf1 is not None


def _large_rig() -> Rig:
    rig = Rig()
    rig.pt.map(L2_VA, L2_GPA, RW, 21)
    rig.pt.map(L1_VA, L1_GPA, RW, 30)
    return rig


_LARGE_RIG = _large_rig()


@pytest.mark.parametrize("bit", [13, 14, 17, 20])
def test_misaligned_2mib_frame_is_reserved(rig: Rig, bit: int) -> None:
    rig.pt.map(L2_VA, L2_GPA, RW, 21)
    pde = rig.entry_gpa(L2_VA, 2)
    rig.ram.write_u64(pde, rig.ram.read_u64(pde) | (1 << bit))
    verdict, leaf = rig.layer().walk(L2_VA + 0x10, Access.READ)
    assert (verdict.ok, verdict.mechanism, verdict.fault) == (False, "paging.rsvd", P | RSVD)
    assert leaf is None


@pytest.mark.parametrize("bit", [13, 20, 21, 25, 29])
def test_misaligned_1gib_frame_is_reserved(rig: Rig, bit: int) -> None:
    rig.pt.map(L1_VA, L1_GPA, RW | US, 30)
    pdpte = rig.entry_gpa(L1_VA, 1)
    rig.ram.write_u64(pdpte, rig.ram.read_u64(pdpte) | (1 << bit))
    verdict, leaf = rig.layer(cpl=3).walk(L1_VA, Access.WRITE)
    assert (verdict.ok, verdict.mechanism, verdict.fault) == (
        False,
        "paging.rsvd",
        P | RSVD | 2 | 4,
    )
    assert leaf is None


@pytest.mark.parametrize(("va", "depth"), [(L2_VA, 2), (L1_VA, 1)])
def test_pat_bit_12_of_a_large_page_is_not_an_address_bit(rig: Rig, va: int, depth: int) -> None:
    rig.pt.map(L2_VA, L2_GPA, RW, 21)
    rig.pt.map(L1_VA, L1_GPA, RW, 30)
    gpa = rig.entry_gpa(va, depth)
    rig.ram.write_u64(gpa, rig.ram.read_u64(gpa) | (1 << 12))
    verdict, _ = rig.layer().walk(va + 0x1234, Access.READ)
    assert verdict.ok
    assert verdict.address == (L2_GPA if depth == 2 else L1_GPA) + 0x1234


def test_4kib_pte_under_a_2mib_region_and_neighbour_large_page(rig: Rig) -> None:
    rig.pt.map(L2_VA, L2_GPA, RW, 21)
    rig.pt.map(L2_VA + MIB2 + 0x3000, 0x7000, RW)
    v_large, leaf_large = rig.layer().walk(L2_VA + 0x3000, Access.READ)
    v_small, leaf_small = rig.layer().walk(L2_VA + MIB2 + 0x3008, Access.READ)
    assert v_large.address == L2_GPA + 0x3000 and leaf_large and leaf_large.size_shift == 21
    assert v_small.address == 0x7008 and leaf_small and leaf_small.size_shift == 12


# -- accessed and dirty flags ---------------------------------------------------------------
def _entries(rig: Rig, va: int, depth: int = 3) -> list[int]:
    return [rig.entry_gpa(va, d) for d in range(depth + 1)]


def test_read_sets_a_on_every_level_and_no_d(rig: Rig) -> None:
    rig.page(TEST_VA, RW)
    gpas = _entries(rig, TEST_VA)
    assert all(not rig.ram.read_u64(g) & (A | D) for g in gpas)
    verdict, leaf = rig.layer().walk(TEST_VA + 8, Access.READ)
    assert verdict.ok and leaf is not None and not leaf.dirty
    assert [rig.ram.read_u64(g) & (A | D) for g in gpas] == [A, A, A, A]


def test_write_sets_d_on_the_leaf_only(rig: Rig) -> None:
    rig.page(TEST_VA, RW)
    gpas = _entries(rig, TEST_VA)
    before = [rig.ram.read_u64(g) for g in gpas]
    verdict, leaf = rig.layer().walk(TEST_VA, Access.WRITE)
    assert verdict.ok and leaf is not None and leaf.dirty
    after = [rig.ram.read_u64(g) for g in gpas]
    assert [a ^ b for a, b in zip(after, before, strict=True)] == [A, A, A, A | D]


def test_fetch_sets_a_not_d(rig: Rig) -> None:
    rig.page(TEST_VA, 0)
    gpas = _entries(rig, TEST_VA)
    assert rig.layer().walk(TEST_VA, Access.EXECUTE)[0].ok
    assert [rig.ram.read_u64(g) & (A | D) for g in gpas] == [A, A, A, A]


def test_write_to_2mib_page_sets_d_in_the_pde(rig: Rig) -> None:
    rig.pt.map(L2_VA, L2_GPA, RW, 21)
    gpas = _entries(rig, L2_VA, 2)
    assert rig.layer().walk(L2_VA + 0x1_0000, Access.WRITE)[0].ok
    assert [rig.ram.read_u64(g) & (A | D) for g in gpas] == [A, A, A | D]


def test_write_to_1gib_page_sets_d_in_the_pdpte(rig: Rig) -> None:
    rig.pt.map(L1_VA, L1_GPA, RW, 30)
    gpas = _entries(rig, L1_VA, 1)
    assert rig.layer().walk(L1_VA, Access.WRITE)[0].ok
    assert [rig.ram.read_u64(g) & (A | D) for g in gpas] == [A, A | D]


def test_update_ad_false_leaves_entries_untouched(rig: Rig) -> None:
    rig.page(TEST_VA, RW)
    gpas = _entries(rig, TEST_VA)
    before = [rig.ram.read_u64(g) for g in gpas]
    verdict, leaf = rig.layer().walk(TEST_VA, Access.WRITE, update_ad=False)
    assert verdict.ok and leaf is not None and not leaf.dirty
    assert [rig.ram.read_u64(g) for g in gpas] == before


def test_existing_a_and_d_are_kept_and_other_bits_unchanged(rig: Rig) -> None:
    rig.page(TEST_VA, RW | US | G | 0xE00)
    gpas = _entries(rig, TEST_VA)
    rig.ram.write_u64(gpas[3], rig.ram.read_u64(gpas[3]) | D)
    before = [rig.ram.read_u64(g) for g in gpas]
    assert rig.layer(cpl=3).walk(TEST_VA, Access.READ)[0].ok
    assert [rig.ram.read_u64(g) for g in gpas] == [b | A for b in before]


def test_leaf_summarises_the_walk(rig: Rig) -> None:
    rig.page(TEST_VA, US | G | NX)
    _, leaf = rig.layer(cpl=3).walk(TEST_VA, Access.READ)
    assert leaf is not None
    assert (leaf.writable, leaf.user, leaf.nx, leaf.glob, leaf.dirty) == (
        False,
        True,
        True,
        True,
        False,
    )
    rig.page(TEST_VA + PAGE_SIZE, RW)
    rig.set_entry(TEST_VA + PAGE_SIZE, 0, rig.entry(TEST_VA, 0) | NX)
    _, leaf = rig.layer().walk(TEST_VA + PAGE_SIZE, Access.READ)
    assert leaf is not None
    # NX in the PML4E alone makes the leaf NX; U/S is clear in the leaf; R/W is set everywhere.
    assert (leaf.writable, leaf.user, leaf.nx, leaf.glob) == (True, False, True, False)


def test_check_rights_on_a_cached_leaf_matches_the_walk(rig: Rig) -> None:
    rig.page(TEST_VA, US)
    _, leaf = rig.layer(cpl=3).walk(TEST_VA, Access.READ)
    assert leaf is not None
    state = SimplePagingState(cr3=rig.pt.root, cpl=3)
    assert check_rights(leaf, Access.WRITE, state) == "paging.rw"
    assert check_rights(leaf, Access.READ, state) == ""
    state.cpl = 0
    state.cr4 |= 1 << 21  # SMAP
    assert check_rights(leaf, Access.READ, state) == "smap"
    assert check_rights(leaf, Access.READ, state, implicit=True) == "smap"
    state.rflags |= 1 << 18  # AC
    assert check_rights(leaf, Access.READ, state) == ""
    assert check_rights(leaf, Access.READ, state, implicit=True) == "smap"


def test_unbacked_table_reads_float_high_and_are_reserved(rig: Rig) -> None:
    """A table outside RAM reads as all ones: present with reserved bits set."""
    layer = rig.layer(cr3=rig.ram.size + 0x1000)
    verdict, leaf = layer.walk(TEST_VA, Access.READ)
    assert (verdict.ok, verdict.mechanism, verdict.fault) == (False, "paging.rsvd", P | RSVD)
    assert leaf is None


def test_cr3_low_bits_are_not_part_of_the_table_address(rig: Rig) -> None:
    gpa = rig.page(TEST_VA, RW)
    layer = rig.layer(cr3=rig.pt.root | 0x18 | (1 << 63))  # PWT|PCD and bit 63
    assert layer.walk(TEST_VA + 4, Access.READ)[0].address == gpa + 4


def test_levels_table_matches_the_sdm() -> None:
    assert [(lv.name, lv.shift, lv.large_ok, lv.leaf) for lv in LEVELS] == [
        ("PML4E", 39, False, False),
        ("PDPTE", 30, True, False),
        ("PDE", 21, True, False),
        ("PTE", 12, False, True),
    ]


def test_translate_is_walk_verdict(rig: Rig) -> None:
    gpa = rig.page(TEST_VA, RW)
    layer = rig.layer()
    v = layer.translate(TEST_VA + 0x10)
    assert (v.ok, v.address, v.access) == (True, gpa + 0x10, Access.READ)
    v = layer.translate(TEST_VA + PAGE_SIZE, Access.WRITE)
    assert (v.ok, v.mechanism, v.fault) == (False, "paging.p", 2)


# -- walks read through SLAT -----------------------------------------------------------------
def _slat_rig() -> tuple[Rig, Slat, int]:
    rig = Rig()
    slat = Slat(rig.ram.pages)
    slat.enable_vtl(1)
    data = rig.page(TEST_VA, RW | US)
    return rig, slat, data


def _slat_layer(rig: Rig, slat: Slat, vtl: int = 0, **state: int) -> PagingLayer:
    values = {"cr3": rig.pt.root, "cpl": 0}
    values.update(state)
    return PagingLayer(rig.ram, slat, vtl, SimplePagingState(**values))


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("access", list(Access), ids=lambda a: a.name)
def test_unreadable_table_page_is_a_slat_walk_refusal(depth: int, access: Access) -> None:
    rig, slat, _ = _slat_rig()
    entry = rig.entry_gpa(TEST_VA, depth)
    slat.set(1, entry >> PAGE_SHIFT, W | KX | UX)  # everything but R
    verdict, leaf = _slat_layer(rig, slat, cpl=3).walk(TEST_VA + 0x10, access)
    assert (verdict.ok, verdict.mechanism, verdict.access, verdict.gpa) == (
        False,
        "slat.walk",
        Access.READ,
        entry,
    )
    assert verdict.address == TEST_VA + 0x10
    assert verdict.fault == 0 and leaf is None
    # VTL1 is not restricted by its own protections.
    assert _slat_layer(rig, slat, vtl=1, cpl=3).walk(TEST_VA + 0x10, access)[0].ok


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_setting_a_on_a_read_only_table_page_is_a_slat_walk_write(depth: int) -> None:
    rig, slat, _ = _slat_rig()
    gpas = _entries(rig, TEST_VA)
    slat.set(1, gpas[depth] >> PAGE_SHIFT, R)
    before = [rig.ram.read_u64(g) for g in gpas]
    verdict, leaf = _slat_layer(rig, slat).walk(TEST_VA, Access.READ)
    assert (verdict.ok, verdict.mechanism, verdict.access, verdict.gpa) == (
        False,
        "slat.walk",
        Access.WRITE,
        gpas[depth],
    )
    assert leaf is None
    # The refused entry was not modified.
    assert rig.ram.read_u64(gpas[depth]) == before[depth]
    # Once A is set everywhere, a read needs no write to the tables.
    for g in gpas:
        rig.ram.write_u64(g, rig.ram.read_u64(g) | A)
    assert _slat_layer(rig, slat).walk(TEST_VA, Access.READ)[0].ok


def test_setting_d_on_a_read_only_pte_page_is_a_slat_walk_write() -> None:
    rig, slat, _ = _slat_rig()
    gpas = _entries(rig, TEST_VA)
    for g in gpas:
        rig.ram.write_u64(g, rig.ram.read_u64(g) | A)
    slat.set(1, gpas[3] >> PAGE_SHIFT, R)
    layer = _slat_layer(rig, slat)
    assert layer.walk(TEST_VA, Access.READ)[0].ok
    verdict, _ = layer.walk(TEST_VA, Access.WRITE)
    assert (verdict.ok, verdict.mechanism, verdict.access, verdict.gpa) == (
        False,
        "slat.walk",
        Access.WRITE,
        gpas[3],
    )
    assert not rig.ram.read_u64(gpas[3]) & D
    # With D already set the write needs nothing from the table page.
    rig.ram.write_u64(gpas[3], rig.ram.read_u64(gpas[3]) | D)
    assert layer.walk(TEST_VA, Access.WRITE)[0].ok


@pytest.mark.parametrize(
    ("rights", "access", "ok"),
    [
        (0, Access.READ, False),
        (R, Access.READ, True),
        (R, Access.WRITE, False),
        (R | W, Access.WRITE, True),
        (R | W, Access.EXECUTE, False),
        (R | KX, Access.EXECUTE, True),
        (R | UX, Access.EXECUTE, False),  # MBEC off: KX governs, UX is ignored
        (ALL, Access.EXECUTE, True),
    ],
)
def test_data_page_slat_rights(rights: int, access: Access, ok: bool) -> None:
    rig, slat, data = _slat_rig()
    rig.set_entry(TEST_VA, 3, rig.entry(TEST_VA, 3) & ~US)  # supervisor page, CPL0
    slat.set(1, data >> PAGE_SHIFT, rights)
    verdict, leaf = _slat_layer(rig, slat).walk(TEST_VA + 0x20, access)
    assert verdict.ok is ok
    if ok:
        assert verdict.address == data + 0x20 and verdict.mechanism == "paging"
    else:
        assert (verdict.mechanism, verdict.address, verdict.gpa, verdict.access) == (
            "slat",
            data + 0x20,
            data + 0x20,
            access,
        )
        assert verdict.fault == 0 and leaf is None


def test_paging_refusal_comes_before_slat() -> None:
    rig, slat, data = _slat_rig()
    slat.set(1, data >> PAGE_SHIFT, 0)
    verdict, _ = _slat_layer(rig, slat, cpl=3).walk(TEST_VA, Access.WRITE)
    assert verdict.ok is False and verdict.mechanism == "slat"
    rig.set_entry(TEST_VA, 3, rig.entry(TEST_VA, 3) & ~RW)
    verdict, _ = _slat_layer(rig, slat, cpl=3).walk(TEST_VA, Access.WRITE)
    assert (verdict.mechanism, verdict.fault) == ("paging.rw", 7)


def test_refused_data_access_sets_no_accessed_flags() -> None:
    rig, slat, data = _slat_rig()
    gpas = _entries(rig, TEST_VA)
    slat.set(1, data >> PAGE_SHIFT, 0)
    assert not _slat_layer(rig, slat).walk(TEST_VA, Access.READ)[0].ok
    assert all(not rig.ram.read_u64(g) & A for g in gpas)


def test_gpa_outside_ram_is_not_slat_checked(rig: Rig) -> None:
    rig.pt.map(TEST_VA, rig.ram.size + 0x5000, RW)
    slat = Slat(rig.ram.pages)
    slat.enable_vtl(1, default_mask=0)  # nothing accessible...
    for frame in rig.pt.frames or []:
        slat.set(1, frame, R | W)  # ...but the tables
    verdict, _ = PagingLayer(rig.ram, slat, 0, SimplePagingState(cr3=rig.pt.root)).walk(
        TEST_VA + 8, Access.WRITE
    )
    assert verdict.ok and verdict.address == rig.ram.size + 0x5008
