"""Paging as guest code sees it: through a VirtualProcessor, with #PF/#GP delivered through the
IDT (vector, error code, CR2), the per-VP TLB and its stale translations."""

from __future__ import annotations

import pytest

from vbsim.guest.address_space import interrupt_gate
from vbsim.hw import code
from vbsim.hw.faults import GuestHang, ThreadTerminated, TripleFault
from vbsim.hw.paging import Leaf
from vbsim.hw.slat import ALL, KX, UX, R, Slat
from vbsim.hw.tlb import Tlb
from vbsim.hw.translation import Verdict
from vbsim.hw.vp import MAX_RETRIES, VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Access, Cr4, Pte, Vector

from .paging_cases import CASES, Case
from .rig import KERNEL_TEST_VA, TEST_VA, FaultRecord, Rig, SlatExits

NOP = "test.hw.nop"
RW, US, NX, G, PS = int(Pte.RW), int(Pte.US), int(Pte.NX), int(Pte.G), int(Pte.PS)
PGE = int(Cr4.PGE)


@code.guest_code(NOP)
def _nop(vp: VirtualProcessor) -> str:
    return "nop ran"


def _run(rig: Rig, access: Access, va: int, cpl: int) -> object:
    vp = rig.vp
    if cpl:
        vp.set_cpl(cpl)
    if access is Access.READ:
        return vp.read(va, code.THUNK_SIZE)
    if access is Access.WRITE:
        vp.write(va, b"written!")
        return None
    return vp.call(va)


VP_CASES = [c for c in CASES if not c.implicit]


@pytest.mark.parametrize("case", VP_CASES, ids=str)
def test_vp_delivers_the_architectural_page_fault(case: Case) -> None:
    rig = Rig()
    thunk = code.encode_thunk(NOP)
    gpa = rig.page(TEST_VA + 0x5000, case.leaf, thunk)
    for tweak in case.tweaks:
        tweak(rig, case.va)
    p = rig.vp.p
    p.cr0, p.cr4, p.efer, p.rflags = case.cr0, case.cr4, case.efer, case.rflags
    rig.vp.flush_tlb()
    rig.trace.record()
    rig.vp.cr2 = 0xDEAD_0000
    if not case.expect:
        result = _run(rig, case.access, case.va, case.cpl)
        if case.access is Access.READ:
            assert result == thunk
        elif case.access is Access.WRITE:
            assert rig.ram.read(gpa, 8) == b"written!"
        else:
            assert result == "nop ran"
        assert rig.faults == []
        assert rig.vp.cr2 == 0xDEAD_0000
        return
    record = rig.expect_fault(lambda: _run(rig, case.access, case.va, case.cpl))
    assert record == FaultRecord(int(Vector.PF), case.code, case.va, 0, 0)
    assert rig.ram.read(gpa, code.THUNK_SIZE) == thunk  # nothing was written
    denied = [e for e in rig.trace.events if e.kind == "access" and e.outcome == "denied"]
    assert [(e.mechanism, e.detail["error_code"], e.detail["va"]) for e in denied] == [
        (case.expect, case.code, case.va)
    ]
    delivered = [e for e in rig.trace.events if e.kind == "exception"]
    assert [(e.detail["vector"], e.detail["error_code"], e.detail["cr2"]) for e in delivered] == [
        (14, case.code, case.va)
    ]
    assert delivered[0].cpl == case.cpl  # traced in the mode that faulted


# -- #GP for non-canonical addresses -----------------------------------------------------------
@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000, 1 << 64])
@pytest.mark.parametrize("access", list(Access), ids=lambda a: a.name)
@pytest.mark.parametrize("cpl", [0, 3])
def test_non_canonical_is_gp_zero_and_leaves_cr2(va: int, access: Access, cpl: int) -> None:
    rig = Rig()
    rig.vp.cr2 = 0x1234_5000
    record = rig.expect_fault(lambda: _run(rig, access, va, cpl))
    assert record == FaultRecord(int(Vector.GP), 0, 0x1234_5000, 0, 0)


def test_u64_and_u32_accessors_fault_like_read_and_write() -> None:
    rig = Rig()
    va = TEST_VA + 0x3000
    for action, code_ in (
        (lambda: rig.vp.read_u64(va), 0),
        (lambda: rig.vp.read_u32(va), 0),
        (lambda: rig.vp.write_u64(va, 1), 2),
        (lambda: rig.vp.write_u32(va, 1), 2),
    ):
        assert rig.expect_fault(action) == FaultRecord(14, code_, va, 0, 0)


# -- delivery mechanics ----------------------------------------------------------------------
DEMAND = "test.hw.demand_pager"


@code.guest_code(DEMAND)
def _demand_pager(vp: VirtualProcessor, vector: int, error_code: int) -> None:
    rig = vp.kernel()
    assert isinstance(rig, Rig)
    rig.faults.append(FaultRecord(vector, error_code, vp.read_cr(2), vp.cpl, vp.vtl))
    if rig.demand_fix:  # type: ignore[attr-defined]
        rig.page(vp.read_cr(2) & ~0xFFF, RW | US, b"paged in")
    # returning is IRET: the instruction runs again


def _with_handler(rig: Rig, name: str) -> None:
    va = rig.install(name)
    rig.ram.write(rig.idt_gpa + 14 * 16, interrupt_gate(va))


def test_handler_return_reexecutes_the_faulting_access() -> None:
    rig = Rig()
    rig.demand_fix = True  # type: ignore[attr-defined]
    _with_handler(rig, DEMAND)
    rig.vp.set_cpl(3)
    rig.vp.p.rip = 0x40_1000
    assert rig.vp.read(TEST_VA + 0x7000, 8) == b"paged in"
    assert rig.faults == [FaultRecord(14, 4, TEST_VA + 0x7000, 0, 0)]
    # IRET restored the interrupted mode and RIP.
    assert (rig.vp.cpl, rig.vp.p.rip) == (3, 0x40_1000)


def test_a_fault_that_is_never_fixed_is_a_guest_hang() -> None:
    rig = Rig()
    rig.demand_fix = False  # type: ignore[attr-defined]
    _with_handler(rig, DEMAND)
    with pytest.raises(GuestHang):
        rig.vp.read(TEST_VA + 0x7000, 8)
    assert rig.faults == [FaultRecord(14, 0, TEST_VA + 0x7000, 0, 0)] * MAX_RETRIES


def test_no_idt_means_triple_fault() -> None:
    rig = Rig()
    rig.vp.p.idtr_limit = 0
    with pytest.raises(TripleFault):
        rig.vp.read(TEST_VA, 8)
    assert rig.faults == []


def test_missing_pf_gate_escalates_to_double_fault() -> None:
    rig = Rig()
    rig.ram.write(rig.idt_gpa + 14 * 16, bytes(16))  # gate 14 not present
    record = rig.expect_fault(lambda: rig.vp.read(TEST_VA, 8))
    assert record == FaultRecord(int(Vector.DF), 0, TEST_VA, 0, 0)


def test_an_undeliverable_vector_is_not_traced_as_delivered() -> None:
    """Only the #DF was delivered: the #PF whose gate is absent never reached CPL0, so the trace
    must not show it as a gate (invariant 7 reported "took vector 8 at CPL3, but the last gate
    left it at CPL0" when it did)."""
    rig = Rig()
    rig.trace.record()
    rig.ram.write(rig.idt_gpa + 14 * 16, bytes(16))
    rig.expect_fault(lambda: rig.vp.read(TEST_VA, 8))
    delivered = [
        e.detail["vector"]
        for e in rig.trace.events
        if (e.kind, e.mechanism) == ("exception", "idt")
    ]
    assert delivered == [int(Vector.DF)]


def test_idt_on_a_user_page_is_refused_by_smap_even_with_ac() -> None:
    rig = Rig()
    rig.set_entry(0xFFFF_F880_0000_0000, 3, rig.entry(0xFFFF_F880_0000_0000, 3) | US)
    rig.vp.p.rflags |= 1 << 18  # AC does not cover implicit accesses
    rig.vp.flush_tlb()
    with pytest.raises(TripleFault):
        rig.vp.read(TEST_VA, 8)


# -- cross-page accesses, large pages through the VP -------------------------------------------
def test_read_and_write_across_a_page_boundary_use_both_translations() -> None:
    rig = Rig()
    a = rig.page(TEST_VA, RW)
    rig.frame()  # keep the frames apart
    b = rig.page(TEST_VA + PAGE_SIZE, RW)
    assert b != a + PAGE_SIZE
    rig.vp.write(TEST_VA + PAGE_SIZE - 3, b"abcdef")
    assert rig.ram.read(a + PAGE_SIZE - 3, 3) == b"abc"
    assert rig.ram.read(b, 3) == b"def"
    assert rig.vp.read(TEST_VA + PAGE_SIZE - 3, 6) == b"abcdef"
    rig.vp.write_u64(TEST_VA + PAGE_SIZE - 4, 0x1122_3344_5566_7788)
    assert rig.vp.read_u64(TEST_VA + PAGE_SIZE - 4) == 0x1122_3344_5566_7788
    assert rig.ram.read(b, 4) == bytes.fromhex("44332211")
    rig.vp.write_u32(TEST_VA + PAGE_SIZE - 2, 0xAABB_CCDD)
    assert rig.vp.read_u32(TEST_VA + PAGE_SIZE - 2) == 0xAABB_CCDD


def test_read_into_a_missing_second_page_faults_at_that_page() -> None:
    rig = Rig()
    rig.page(TEST_VA, RW)
    record = rig.expect_fault(lambda: rig.vp.read(TEST_VA + PAGE_SIZE - 2, 4))
    assert record == FaultRecord(14, 0, TEST_VA + PAGE_SIZE, 0, 0)


def test_2mib_and_1gib_pages_through_the_vp() -> None:
    rig = Rig()
    base = rig.ram.frames.alloc_contiguous(512, "large", align=512) << PAGE_SHIFT
    rig.pt.map(KERNEL_TEST_VA, base, RW, 21)
    rig.pt.map(KERNEL_TEST_VA + (1 << 30), 0, RW, 30)
    for off in (0, 0x1000, 0x12_3458, 0x1F_FFF8):
        rig.ram.write_u64(base + off, 0xC0DE_0000 + off)
        assert rig.vp.read_u64(KERNEL_TEST_VA + off) == 0xC0DE_0000 + off
        # The same bytes through the 1 GiB page that maps GPA 0.
        assert rig.vp.read_u64(KERNEL_TEST_VA + (1 << 30) + base + off) == 0xC0DE_0000 + off
    rig.vp.write(KERNEL_TEST_VA + 0x1F_FFFC, b"wxyz")
    assert rig.ram.read(base + 0x1F_FFFC, 4) == b"wxyz"


def test_gpa_beyond_ram_reads_float_high_through_the_vp() -> None:
    rig = Rig()
    rig.pt.map(TEST_VA, rig.ram.size + 0x10_0000, RW)
    assert rig.vp.read(TEST_VA, 4) == b"\xff" * 4
    assert rig.vp.read_u64(TEST_VA) == 0xFFFF_FFFF_FFFF_FFFF
    rig.vp.write(TEST_VA, b"dropped")  # unclaimed bus: silently dropped
    assert rig.vp.read(TEST_VA, 4) == b"\xff" * 4


# -- the TLB ------------------------------------------------------------------------------------
def _two_frames(rig: Rig, flags: int) -> tuple[int, int]:
    old = rig.page(TEST_VA, flags, b"OLD-DATA")
    new = rig.frame()
    rig.ram.write(new, b"NEW-DATA")
    return old, new


def _repoint(rig: Rig, gpa: int, flags: int) -> None:
    rig.set_entry(TEST_VA, 3, gpa | flags | 1)


def test_stale_translation_survives_a_pte_edit_until_invlpg() -> None:
    rig = Rig()
    _, new = _two_frames(rig, RW)
    vp = rig.vp
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    _repoint(rig, new, RW)
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    assert vp.read_u64(TEST_VA) == int.from_bytes(b"OLD-DATA", "little")
    vp.invlpg(TEST_VA + 0x123)  # any address inside the page
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"


def test_invlpg_only_drops_its_own_page() -> None:
    rig = Rig()
    rig.page(TEST_VA + PAGE_SIZE, RW, b"NEIGHBOR")
    _, new = _two_frames(rig, RW)
    vp = rig.vp
    assert vp.read(TEST_VA + PAGE_SIZE, 8) == b"NEIGHBOR"
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    rig.set_entry(TEST_VA + PAGE_SIZE, 3, new | RW | 1)
    _repoint(rig, new, RW)
    vp.invlpg(TEST_VA)
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"
    assert vp.read(TEST_VA + PAGE_SIZE, 8) == b"NEIGHBOR"


def test_cr3_write_flushes_non_global_translations() -> None:
    rig = Rig()
    _, new = _two_frames(rig, RW)
    vp = rig.vp
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    _repoint(rig, new, RW)
    vp.mov_to_cr(3, vp.p.cr3)
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"


def test_global_translation_survives_cr3_write_with_pge() -> None:
    rig = Rig()
    _, new = _two_frames(rig, RW | G)
    vp = rig.vp
    assert vp.p.cr4 & PGE
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    _repoint(rig, new, RW | G)
    vp.mov_to_cr(3, vp.p.cr3)
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    assert vp.read_u64(TEST_VA) == int.from_bytes(b"OLD-DATA", "little")
    vp.invlpg(TEST_VA)
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"


def test_global_translation_is_flushed_by_cr3_write_without_pge() -> None:
    rig = Rig()
    _, new = _two_frames(rig, RW | G)
    vp = rig.vp
    vp.mov_to_cr(4, vp.p.cr4 & ~PGE)
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    _repoint(rig, new, RW | G)
    vp.mov_to_cr(3, vp.p.cr3)
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"


@pytest.mark.parametrize("how", ["cr0", "cr4", "efer"])
def test_cr0_cr4_efer_writes_flush_global_translations_too(how: str) -> None:
    rig = Rig()
    _, new = _two_frames(rig, RW | G)
    vp = rig.vp
    assert vp.read(TEST_VA, 8) == b"OLD-DATA"
    _repoint(rig, new, RW | G)
    if how == "cr0":
        vp.mov_to_cr(0, vp.p.cr0)
    elif how == "cr4":
        vp.mov_to_cr(4, vp.p.cr4)
    else:
        vp.wrmsr(0xC000_0080, vp.p.efer)
    assert vp.read(TEST_VA, 8) == b"NEW-DATA"


def test_stale_present_translation_outlives_unmapping() -> None:
    rig = Rig()
    rig.page(TEST_VA, RW, b"STILL-HERE")
    vp = rig.vp
    assert vp.read(TEST_VA, 10) == b"STILL-HERE"
    rig.set_entry(TEST_VA, 3, 0)
    assert vp.read(TEST_VA, 10) == b"STILL-HERE"
    vp.invlpg(TEST_VA)
    assert rig.expect_fault(lambda: vp.read(TEST_VA, 1)) == FaultRecord(14, 0, TEST_VA, 0, 0)


def test_stale_writable_translation_outlives_write_protection() -> None:
    rig = Rig()
    gpa = rig.page(TEST_VA, RW)
    vp = rig.vp
    vp.write(TEST_VA, b"one")
    rig.set_entry(TEST_VA, 3, rig.entry(TEST_VA, 3) & ~RW)
    vp.write(TEST_VA, b"two")
    assert rig.ram.read(gpa, 3) == b"two"
    vp.invlpg(TEST_VA)
    assert rig.expect_fault(lambda: vp.write(TEST_VA, b"3")) == FaultRecord(14, 3, TEST_VA, 0, 0)
    assert rig.ram.read(gpa, 3) == b"two"


def test_stale_executable_translation_outlives_nx() -> None:
    rig = Rig()
    rig.page(TEST_VA, 0, code.encode_thunk(NOP))
    vp = rig.vp
    assert vp.call(TEST_VA) == "nop ran"
    rig.set_entry(TEST_VA, 3, rig.entry(TEST_VA, 3) | NX)
    assert vp.call(TEST_VA) == "nop ran"
    vp.invlpg(TEST_VA)
    assert rig.expect_fault(lambda: vp.call(TEST_VA)) == FaultRecord(14, 0x11, TEST_VA, 0, 0)


def test_cached_leaf_is_rechecked_against_the_current_mode() -> None:
    """A translation cached by a supervisor access does not let CPL3 touch a supervisor page."""
    rig = Rig()
    rig.page(TEST_VA, RW, b"kernel")
    vp = rig.vp
    assert vp.read(TEST_VA, 6) == b"kernel"
    vp.set_cpl(3)
    assert rig.expect_fault(lambda: vp.read(TEST_VA, 6)) == FaultRecord(14, 5, TEST_VA, 0, 0)


def test_cached_user_leaf_respects_smap_and_ac_changes() -> None:
    rig = Rig()
    rig.page(TEST_VA, RW | US, b"user")
    vp = rig.vp
    vp.p.rflags |= 1 << 18
    assert vp.read(TEST_VA, 4) == b"user"
    assert vp.read_u32(TEST_VA) == int.from_bytes(b"user", "little")
    vp.p.rflags &= ~(1 << 18)  # CLAC: no TLB flush, SMAP must apply again at once
    assert rig.expect_fault(lambda: vp.read_u32(TEST_VA)) == FaultRecord(14, 1, TEST_VA, 0, 0)


def test_clean_cached_leaf_walks_again_to_set_dirty() -> None:
    rig = Rig()
    rig.page(TEST_VA, RW)
    vp = rig.vp
    vp.read(TEST_VA, 1)
    assert not rig.entry(TEST_VA, 3) & int(Pte.D)
    vp.write(TEST_VA, b"x")
    assert rig.entry(TEST_VA, 3) & int(Pte.D)


def test_invlpg_drops_the_whole_large_page() -> None:
    rig = Rig()
    base = rig.ram.frames.alloc_contiguous(1024, "large", align=512) << PAGE_SHIFT
    rig.pt.map(KERNEL_TEST_VA, base, RW, 21)
    rig.ram.write(base + 0x1000, b"OLD!")
    rig.ram.write(base + (512 << PAGE_SHIFT) + 0x1000, b"NEW!")
    vp = rig.vp
    assert vp.read(KERNEL_TEST_VA, 4) == bytes(4)
    assert vp.read(KERNEL_TEST_VA + 0x1000, 4) == b"OLD!"
    pde = rig.entry_gpa(KERNEL_TEST_VA, 2)
    rig.ram.write_u64(pde, (base + (512 << PAGE_SHIFT)) | RW | PS | 1)
    vp.invlpg(KERNEL_TEST_VA)  # one INVLPG for the one 2 MiB translation
    assert vp.read(KERNEL_TEST_VA + 0x1000, 4) == b"NEW!"


def test_invlpg_requires_cpl0() -> None:
    rig = Rig()
    rig.vp.set_cpl(3)
    assert rig.expect_fault(lambda: rig.vp.invlpg(TEST_VA)) == FaultRecord(13, 0, 0, 0, 0)


def test_tlb_unit_fill_and_flush() -> None:
    tlb = Tlb()
    leaf = Leaf(0x5000, True, False, False, True, True, 12, "PTE")
    local = Leaf(0x6000, True, False, False, True, False, 12, "PTE")
    tlb.fill(1, leaf, Access.WRITE, 0, cacheable=True)
    tlb.fill(2, local, Access.READ, 3, cacheable=True)
    tlb.fill(3, local, Access.EXECUTE, 0, cacheable=False)
    assert tlb.maps_for(0)[1] == {1: 0x5000}
    assert tlb.maps_for(3)[0] == {2: 0x6000}
    assert tlb.maps_for(2) == tlb.maps_for(0)  # CPL 1/2 are supervisor
    assert tlb.maps_for(0)[2] == {}  # not cacheable: only the leaf is kept
    assert set(tlb.entries) == {1, 2, 3}
    tlb.flush_page(2)
    assert set(tlb.entries) == {1, 3} and tlb.maps_for(3)[0] == {}
    tlb.flush_all(keep_global=True)
    assert tlb.entries == {1: leaf}
    assert all(not m for m in tlb.fast)
    tlb.flush_all()
    assert tlb.entries == {} and tlb.flushes == 2


# -- SLAT through the VP ----------------------------------------------------------------------
def _slat_rig() -> tuple[Rig, Slat]:
    ram_pages = (16 << 20) >> PAGE_SHIFT
    slat = Slat(ram_pages)
    slat.enable_vtl(1)
    return Rig(slat=slat), slat


def test_slat_refusal_goes_to_the_hypervisor_not_the_idt() -> None:
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, RW, b"guarded")
    slat.set(1, gpa >> PAGE_SHIFT, 0)
    with pytest.raises(ThreadTerminated):
        rig.vp.read(TEST_VA + 3, 4)
    assert rig.faults == []
    ((verdict, gva),) = rig.exits.violations
    assert (verdict.mechanism, verdict.access, verdict.gpa, gva) == (
        "slat",
        Access.READ,
        gpa + 3,
        TEST_VA + 3,
    )


def test_slat_walk_refusal_names_the_entry_through_the_vp() -> None:
    rig, slat = _slat_rig()
    rig.page(TEST_VA, RW)
    pde = rig.entry_gpa(TEST_VA, 2)
    slat.set(1, pde >> PAGE_SHIFT, 0)
    with pytest.raises(ThreadTerminated):
        rig.vp.write(TEST_VA, b"x")
    ((verdict, gva),) = rig.exits.violations
    assert (verdict.mechanism, verdict.access, verdict.gpa, gva) == (
        "slat.walk",
        Access.READ,
        pde,
        TEST_VA,
    )


def test_slat_change_applies_after_the_hypervisor_flushes() -> None:
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, RW, b"readable")
    vp = rig.vp
    assert vp.read_u64(TEST_VA) == int.from_bytes(b"readable", "little")
    slat.set(1, gpa >> PAGE_SHIFT, 0)
    vp.flush_tlb(0)  # what HvCallModifyVtlProtectionMask does for every lower VTL
    with pytest.raises(ThreadTerminated):
        vp.read_u64(TEST_VA)
    assert rig.exits.violations[0][0].mechanism == "slat"


def test_tlb_hit_still_checks_slat() -> None:
    """The cached leaf (not the fast map) is re-checked against SLAT on every use."""
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, RW)
    vp = rig.vp
    vp.write(TEST_VA, b"a")  # leaf cached, dirty
    for fast in vp.tlbs[0].fast:
        fast.clear()
    slat.set(1, gpa >> PAGE_SHIFT, R)
    with pytest.raises(ThreadTerminated):
        vp.write(TEST_VA, b"b")
    verdict, _ = rig.exits.violations[0]
    assert (verdict.mechanism, verdict.access) == ("slat", Access.WRITE)
    assert rig.ram.read(gpa, 1) == b"a"


@pytest.mark.parametrize(
    ("mbec", "rights", "cpl", "runs"),
    [
        (False, R | KX, 3, True),
        (False, R | UX, 3, False),
        (True, R | UX, 3, True),
        (True, R | KX | UX, 3, True),
        (True, R, 3, False),
        (True, ALL & ~UX, 3, False),
    ],
)
def test_mbec_user_fetch(mbec: bool, rights: int, cpl: int, runs: bool) -> None:
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, US, code.encode_thunk(NOP))
    slat.set(1, gpa >> PAGE_SHIFT, rights)
    rig.vp.set_mbec(0, mbec)
    rig.vp.set_cpl(cpl)
    if runs:
        assert rig.vp.call(TEST_VA) == "nop ran"
    else:
        with pytest.raises(ThreadTerminated):
            rig.vp.call(TEST_VA)
        verdict, gva = rig.exits.violations[0]
        assert (verdict.mechanism, verdict.access, gva) == ("slat", Access.EXECUTE, TEST_VA)


@pytest.mark.parametrize(
    ("mbec", "rights", "runs"),
    [(False, R | KX, True), (True, R | KX | UX, True), (True, R | UX, False), (False, R, False)],
)
def test_mbec_supervisor_fetch_needs_kx(mbec: bool, rights: int, runs: bool) -> None:
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, 0, code.encode_thunk(NOP))
    slat.set(1, gpa >> PAGE_SHIFT, rights)
    rig.vp.set_mbec(0, mbec)
    if runs:
        assert rig.vp.call(TEST_VA) == "nop ran"
    else:
        with pytest.raises(ThreadTerminated):
            rig.vp.call(TEST_VA)


def test_set_mbec_flushes_that_vtls_tlb() -> None:
    rig, slat = _slat_rig()
    gpa = rig.page(TEST_VA, US, code.encode_thunk(NOP))
    slat.set(1, gpa >> PAGE_SHIFT, R | KX)
    rig.vp.set_cpl(3)
    assert rig.vp.call(TEST_VA) == "nop ran"  # KX governs while MBEC is off
    rig.vp.set_mbec(0, True)
    assert rig.vp.layers[0].mbec is True
    with pytest.raises(ThreadTerminated):
        rig.vp.call(TEST_VA)  # now UX governs user fetches and the page has none


class _CompletingExits(SlatExits):
    """A higher VTL that emulates (skips) every refused access."""

    def memory_violation(self, vp: VirtualProcessor, verdict: Verdict, gva: int | None) -> bool:
        self.violations.append((verdict, gva))
        return True


def test_access_completed_by_a_higher_vtl_gives_the_guest_no_data() -> None:
    rig, slat = _slat_rig()
    exits = _CompletingExits()
    rig.vp.exits = exits
    gpa = rig.page(TEST_VA, RW, b"SECRET!!" + code.encode_thunk(NOP))
    slat.set(1, gpa >> PAGE_SHIFT, 0)
    vp = rig.vp
    assert vp.read(TEST_VA, 8) == bytes(8)
    assert vp.read_u64(TEST_VA) == 0
    assert vp.read_u32(TEST_VA) == 0
    vp.write(TEST_VA, b"XXXXXXXX")
    vp.write_u64(TEST_VA, 0x5858_5858_5858_5858)
    assert vp.fetch(TEST_VA + 8) is None
    assert vp.call(TEST_VA + 8) is None
    assert rig.ram.read(gpa, 8) == b"SECRET!!"
    assert [(v.access, v.gpa) for v, _ in exits.violations] == [
        (Access.READ, gpa),
        (Access.READ, gpa),
        (Access.READ, gpa),
        (Access.WRITE, gpa),
        (Access.WRITE, gpa),
        (Access.EXECUTE, gpa + 8),
        (Access.EXECUTE, gpa + 8),
    ]
    assert rig.faults == []
