"""The HLAT hardware model on its own (vbsim.hw.hlat; Intel SDM "HLAT paging")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.hw.hlat import RESTART, Hlat
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.paging import PagingLayer, SimplePagingState
from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import R, Slat
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Access, Pte

KVA = 0xFFFF_F880_1234_5000
UVA = 0x0000_0000_0040_0000
RW = int(Pte.RW | Pte.NX)


class Rig:
    def __init__(self) -> None:
        self.ram = GuestRam(16 << 20)
        self.slat = Slat(self.ram.pages)
        self.slat.enable_vtl(1)
        phys = PhysAccess.direct(self.ram, "t")
        self.guest = PageTables(phys)
        self.hlat = PageTables(phys)
        self.frames = {name: self.ram.frames.alloc("t") for name in ("a", "b", "c")}
        self.state = SimplePagingState(self.guest.root)
        self.layer = PagingLayer(self.ram, self.slat, 0, self.state)

    def gpa(self, name: str) -> int:
        return self.frames[name] << PAGE_SHIFT

    def restart_everywhere(self) -> None:
        """Mark every non-present HLAT entry on the tables' frames "present + restart"."""
        for pfn in self.hlat.frames or []:
            for i in range(512):
                gpa = (pfn << PAGE_SHIFT) + 8 * i
                if not self.ram.read_u64(gpa) & Pte.P:
                    self.ram.write_u64(gpa, int(Pte.P) | RESTART)

    def enable(self, prefix: int = 1) -> None:
        self.layer.hlat = Hlat(self.hlat.root, prefix)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.ram.close()


def test_protected_address_uses_the_hlat_tables(rig: Rig) -> None:
    rig.guest.map(KVA, rig.gpa("a"), RW)
    rig.hlat.map(KVA, rig.gpa("b"), RW)
    assert rig.layer.walk(KVA, Access.READ)[0].address == rig.gpa("a")
    rig.enable()
    verdict, leaf = rig.layer.walk(KVA, Access.WRITE)
    assert verdict.ok and verdict.address == rig.gpa("b") and verdict.mechanism == "hvpt"
    assert leaf is not None and leaf.dirty


def test_restart_falls_back_to_cr3_with_cr3_rights(rig: Rig) -> None:
    rig.guest.map(KVA, rig.gpa("a"), int(Pte.NX))  # read-only in NT's tables
    rig.hlat.map(KVA + PAGE_SIZE, rig.gpa("b"), RW)  # a neighbour is protected
    rig.restart_everywhere()
    rig.enable()
    verdict, _ = rig.layer.walk(KVA, Access.READ)
    assert verdict.ok and verdict.address == rig.gpa("a") and verdict.mechanism == "paging"
    verdict, _ = rig.layer.walk(KVA, Access.WRITE)
    assert not verdict.ok and verdict.mechanism == "paging.wp"


def test_non_present_hlat_entry_faults_without_restart(rig: Rig) -> None:
    rig.guest.map(KVA, rig.gpa("a"), RW)
    rig.hlat.map(KVA + PAGE_SIZE, rig.gpa("b"), RW)  # KVA's own PTE stays non-present
    rig.enable()
    verdict, _ = rig.layer.walk(KVA, Access.READ)
    assert not verdict.ok and verdict.mechanism == "paging.p"


def test_prefix_size_selects_the_range(rig: Rig) -> None:
    rig.guest.map(UVA, rig.gpa("a"), RW | int(Pte.US))
    rig.hlat.map(UVA, rig.gpa("c"), RW | int(Pte.US))
    rig.enable(prefix=1)
    assert rig.layer.walk(UVA, Access.READ)[0].address == rig.gpa("a")  # bit 63 clear
    rig.enable(prefix=0)
    assert rig.layer.walk(UVA, Access.READ)[0].address == rig.gpa("c")  # every address


def test_hlat_walk_reads_through_slat(rig: Rig) -> None:
    rig.guest.map(KVA, rig.gpa("a"), RW)
    rig.hlat.map(KVA, rig.gpa("b"), RW)
    rig.enable()
    assert rig.layer.walk(KVA, Access.READ)[0].ok
    rig.slat.set(1, rig.hlat.root >> PAGE_SHIFT, 0)
    verdict, _ = rig.layer.walk(KVA, Access.READ)
    assert not verdict.ok and verdict.mechanism == "slat.walk"
    rig.slat.set(1, rig.hlat.root >> PAGE_SHIFT, R)
    assert rig.layer.walk(KVA, Access.READ, update_ad=False)[0].ok


@settings(max_examples=60, deadline=None)
@given(
    va=st.integers(0, (1 << 64) - 1),
    protect=st.booleans(),
    access=st.sampled_from([Access.READ, Access.WRITE, Access.EXECUTE]),
    guest_edit=st.integers(0, (1 << 64) - 1),
)
def test_guest_pte_edits_never_change_a_protected_translation(
    va: int, protect: bool, access: Access, guest_edit: int
) -> None:
    """Whatever VTL0 writes into its own PTE, a protected address translates as HLAT says."""
    r = Rig()
    try:
        page = KVA
        r.guest.map(page, r.gpa("a"), RW)
        if protect:
            r.hlat.map(page, r.gpa("b"), RW)
        r.restart_everywhere()
        r.enable()
        target = page + (va & (PAGE_SIZE - 1))
        before = r.layer.walk(target, access, update_ad=False)[0]
        pte = r.guest.pte_gpa(page)
        assert pte is not None
        r.ram.write_u64(pte, guest_edit)
        after = r.layer.walk(target, access, update_ad=False)[0]
        if protect:
            assert (before.ok, before.address, before.mechanism) == (
                after.ok,
                after.address,
                after.mechanism,
            )
    finally:
        r.ram.close()
