"""Property tests: the walker against an independent reference of SDM Vol. 3A §4.5-§4.8 for
random entries at every level, and the VP against random guest behaviour (only guest events,
never a stray Python exception)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vbsim.hw import code
from vbsim.hw.faults import GuestTermination
from vbsim.hw.paging import PagingLayer, SimplePagingState
from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import ALL, Slat
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import PAGE_SIZE, Access, Cr0, Cr4, Efer, Msr, Pte, Rflags

from .rig import TEST_VA, Rig

U64 = (1 << 64) - 1
#: Mechanisms a walk may name (the documented set of vbsim.hw.translation.Verdict, minus the
#: layers that are not paging).
WALK_MECHANISMS = {
    "paging",
    "canonical",
    "slat",
    "slat.walk",
    "paging.p",
    "paging.rw",
    "paging.us",
    "paging.nx",
    "paging.rsvd",
    "paging.wp",
    "smep",
    "smap",
}

# -- an independent reference walker ------------------------------------------------------------
MAXPHYADDR = 46
ADDR_BITS = ((1 << MAXPHYADDR) - 1) & ~0xFFF  # bits 45:12
RSVD_PHYS = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)  # bits 51:46
P_, RW_, US_, A_, D_, PS_, G_ = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
NX_ = 1 << 63
R_RIGHT, W_RIGHT, KX_RIGHT, UX_RIGHT = 1, 2, 4, 8


@dataclass
class Expected:
    kind: str  # ok | canonical | pf | slat.walk | slat
    gpa: int = 0
    code: int = 0
    mechanisms: frozenset[str] = frozenset()
    access: Access | None = None
    size_shift: int = 0
    writable: bool = False
    user: bool = False
    nx: bool = False
    glob: bool = False
    dirty: bool = False
    updates: tuple[tuple[int, int], ...] = ()  # (entry gpa, bits that must now be set)


def reference_walk(
    ram: GuestRam,
    rights: list[int] | None,
    va: int,
    access: Access,
    state: SimplePagingState,
    implicit: bool,
    mbec: bool,
) -> Expected:
    """SDM Vol. 3A 4-level paging, written from the manual, independently of vbsim.hw.paging."""
    if not (va < 1 << 47 or (1 << 64) - (1 << 47) <= va <= U64):
        return Expected("canonical")
    user_mode = state.cpl == 3 and not implicit
    nxe = bool(state.efer & int(Efer.NXE))
    smep = bool(state.cr4 & int(Cr4.SMEP))
    smap = bool(state.cr4 & int(Cr4.SMAP))
    wp = bool(state.cr0 & int(Cr0.WP))
    ac = bool(state.rflags & int(Rflags.AC))

    def pf_code(present: bool) -> int:
        code_ = int(present)
        code_ |= 2 if access is Access.WRITE else 0
        code_ |= 4 if user_mode else 0
        code_ |= 16 if access is Access.EXECUTE and (nxe or smep) else 0
        return code_

    def right(gpa: int) -> int:
        return ALL if rights is None else rights[gpa >> 12]

    table = state.cr3 & ADDR_BITS
    used: list[tuple[int, int]] = []
    rw_all = us_all = True
    nx_any = False
    for level, shift in enumerate((39, 30, 21, 12)):
        entry_gpa = table + ((va >> shift) & 0x1FF) * 8
        if entry_gpa + 8 <= ram.size:
            if not right(entry_gpa) & R_RIGHT:
                return Expected("slat.walk", gpa=entry_gpa, access=Access.READ)
            value = int.from_bytes(ram.mm[entry_gpa : entry_gpa + 8], "little")
        else:
            value = U64
        if not value & P_:
            return Expected("pf", code=pf_code(False), mechanisms=frozenset({"paging.p"}))
        is_leaf = level == 3 or (level in (1, 2) and bool(value & PS_))
        reserved = value & RSVD_PHYS
        if not nxe:
            reserved |= value & NX_
        if level == 0:
            reserved |= value & PS_
        if is_leaf and level in (1, 2):
            reserved |= value & ((1 << shift) - 1) & ~0x1FFF  # bits shift-1..13
        if reserved:
            return Expected("pf", code=pf_code(True) | 8, mechanisms=frozenset({"paging.rsvd"}))
        used.append((entry_gpa, value))
        rw_all &= bool(value & RW_)
        us_all &= bool(value & US_)
        nx_any |= bool(value & NX_)
        if is_leaf:
            page_mask = (1 << shift) - 1
            gpa = (value & ADDR_BITS & ~page_mask) | (va & page_mask)
            leaf_value, leaf_shift = value, shift
            break
        table = value & ADDR_BITS
    # Access rights (SDM §4.6).
    violated: set[str] = set()
    if access is Access.EXECUTE:
        if user_mode and not us_all:
            violated.add("paging.us")
        if nxe and nx_any:
            violated.add("paging.nx")
        if not user_mode and us_all and smep:
            violated.add("smep")
    else:
        if user_mode and not us_all:
            violated.add("paging.us")
        if access is Access.WRITE and not rw_all:
            if user_mode:
                violated.add("paging.rw")
            elif wp:
                violated.add("paging.wp")
        if not user_mode and us_all and smap and (implicit or not ac):
            violated.add("smap")
    if violated:
        return Expected("pf", code=pf_code(True), mechanisms=frozenset(violated))
    # SLAT on the final GPA (RAM only).
    if gpa < ram.size:
        if access is Access.READ:
            need = R_RIGHT
        elif access is Access.WRITE:
            need = W_RIGHT
        else:
            need = UX_RIGHT if (mbec and us_all and smep) else KX_RIGHT
        if not right(gpa) & need:
            return Expected("slat", gpa=gpa, access=access)
    # Accessed / dirty updates need SLAT write rights on the entry's page.
    updates = []
    for i, (entry_gpa, value) in enumerate(used):
        bits = A_ | (D_ if i == len(used) - 1 and access is Access.WRITE else 0)
        if value | bits != value and not right(entry_gpa) & W_RIGHT:
            return Expected("slat.walk", gpa=entry_gpa, access=Access.WRITE)
        updates.append((entry_gpa, bits))
    return Expected(
        "ok",
        gpa=gpa,
        size_shift=leaf_shift,
        writable=rw_all,
        user=us_all,
        nx=nx_any,
        glob=bool(leaf_value & G_),
        dirty=bool(leaf_value & D_) or access is Access.WRITE,
        updates=tuple(updates),
    )


# -- random paging structures -----------------------------------------------------------------
RAM_PAGES = 64
RAM = GuestRam(RAM_PAGES * PAGE_SIZE)
#: The A and D bit positions of every 8-byte word of RAM, as one big integer.
AD_EVERYWHERE = int.from_bytes((A_ | D_).to_bytes(8, "little") * (RAM.size // 8), "little")
TABLES = (1, 2, 3, 4)  # frames of PML4, PDPT, PD, PT

#: Where an entry points: mostly the next table of the chain, else any table frame, any RAM
#: frame (aliasing and zero-filled frames), or beyond RAM (the bus floats high).
TARGETS = ["next"] * 12 + ["table", "ram", "beyond"]
#: Mostly-legal high bits: none, XD, ignored bits 52..62, and now and then a reserved one.
HIGH = [0] * 12 + [NX_] * 3 + [0x7FF << 52, 1 << 62, "rsvd"]


@st.composite
def entry_values(draw: st.DrawFn, next_table: int, level: int = 3) -> int:
    """An entry for ``level`` (0 = PML4E .. 3 = PTE) that usually continues the chain."""
    target = draw(st.sampled_from(TARGETS))
    if target == "next":
        pfn = next_table
    elif target == "table":
        pfn = draw(st.sampled_from(TABLES))
    elif target == "ram":
        pfn = draw(st.integers(0, RAM_PAGES - 1))
    else:
        pfn = draw(st.integers(RAM_PAGES, (1 << 34) - 1))
    present = draw(st.sampled_from([P_] * 15 + [0]))
    large = 0
    if level in (1, 2) and draw(st.sampled_from([False] * 4 + [True])):
        large = PS_
        align = 1 << (9 * (3 - level))  # frames per 1 GiB / 2 MiB page
        if draw(st.sampled_from([True] * 4 + [False])):  # mostly aligned, else misaligned
            pfn = draw(st.integers(0, ((1 << 34) - 1) // align)) * align
        pfn |= draw(st.sampled_from([0, 0, 1]))  # bit 12: PAT in a large page
    elif draw(st.sampled_from([False] * 15 + [True])):
        large = PS_  # reserved in a PML4E, PAT in a PTE
    flags = draw(st.integers(0, 0xFFF)) & ~(P_ | PS_)
    flags |= draw(st.sampled_from([RW_ | US_] * 3 + [0, RW_, US_]))
    high = draw(st.sampled_from(HIGH))
    if high == "rsvd":
        high = 1 << draw(st.integers(46, 51))
    return (pfn << 12) | flags | present | large | high


high_bits = st.sampled_from(HIGH).flatmap(
    lambda h: st.integers(46, 51).map(lambda b: 1 << b) if h == "rsvd" else st.just(h)
)


@st.composite
def vas(draw: st.DrawFn) -> int:
    kind = draw(st.sampled_from(["low"] * 6 + ["high"] * 3 + ["fixed", "noncanonical"]))
    if kind == "low":
        return draw(st.integers(0, (1 << 47) - 1))
    if kind == "high":
        return draw(st.integers((1 << 64) - (1 << 47), U64))
    if kind == "fixed":
        return draw(st.sampled_from([TEST_VA, 0x0000_7FFF_FFFF_F000, 0xFFFF_8000_0000_0000]))
    return draw(
        st.integers(1 << 47, (1 << 64) - (1 << 47) - 1) | st.integers(1 << 64, (1 << 64) + 4096)
    )


@st.composite
def rights_lists(draw: st.DrawFn) -> list[int]:
    """SLAT rights per RAM frame: table frames mostly unrestricted, data frames often not."""
    some_rights = st.integers(0, 15)
    rights = draw(
        st.lists(st.sampled_from([ALL, ALL]) | some_rights, min_size=RAM_PAGES, max_size=RAM_PAGES)
    )
    for frame in TABLES:
        rights[frame] = draw(st.sampled_from([ALL] * 48 + list(range(16))))
    return rights


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    va=vas(),
    entries=st.tuples(
        entry_values(2, 0), entry_values(3, 1), entry_values(4, 2), entry_values(5, 3)
    ),
    cr3_low=st.sampled_from([0, 0x8, 0x10, 0x18, 1 << 63]),
    access=st.sampled_from(list(Access)),
    cpl=st.sampled_from([0, 3, 3, 1]),
    cr0_wp=st.booleans(),
    smep=st.booleans(),
    smap=st.booleans(),
    nxe=st.sampled_from([True, True, True, False]),
    ac=st.booleans(),
    implicit=st.booleans(),
    mbec=st.booleans(),
    slat_mode=st.sampled_from(["none", "vtl1", "vtl0", "vtl0"]),
    rights=rights_lists(),
)
def test_walk_matches_the_reference(
    va: int,
    entries: tuple[int, int, int, int],
    cr3_low: int,
    access: Access,
    cpl: int,
    cr0_wp: bool,
    smep: bool,
    smap: bool,
    nxe: bool,
    ac: bool,
    implicit: bool,
    mbec: bool,
    slat_mode: str,
    rights: list[int],
) -> None:
    ram = RAM
    ram.mm[:] = bytes(ram.size)
    for frame, shift, value in zip(TABLES, (39, 30, 21, 12), entries, strict=True):
        index = ((va & U64) >> shift) & 0x1FF
        ram.write_u64((frame << 12) + index * 8, value)
    state = SimplePagingState(
        cr3=(TABLES[0] << 12) | cr3_low,
        cr0=int(Cr0.PG | Cr0.PE) | (int(Cr0.WP) if cr0_wp else 0),
        cr4=int(Cr4.PAE) | (int(Cr4.SMEP) if smep else 0) | (int(Cr4.SMAP) if smap else 0),
        efer=int(Efer.LME | Efer.LMA) | (int(Efer.NXE) if nxe else 0),
        cpl=cpl,
        rflags=int(Rflags.FIXED1) | (int(Rflags.AC) if ac else 0),
    )
    slat: Slat | None = None
    effective: list[int] | None = None
    vtl = 0
    if slat_mode != "none":
        slat = Slat(RAM_PAGES)
        slat.enable_vtl(1)
        for gpn, mask in enumerate(rights):
            if mask != ALL:
                slat.set(1, gpn, mask)
        if slat_mode == "vtl0":
            effective = rights
        else:
            vtl = 1
    expected = reference_walk(ram, effective, va, access, state, implicit, mbec)
    before = bytes(ram.mm[:])
    layer = PagingLayer(ram, slat, vtl, state, mbec=mbec)

    verdict, leaf = layer.walk(va, access, implicit=implicit)
    event(f"{expected.kind}: {verdict.mechanism}")

    assert isinstance(verdict, Verdict)
    assert verdict.mechanism in WALK_MECHANISMS
    assert verdict.ok is (expected.kind == "ok")
    assert verdict.ok is (leaf is not None)
    if expected.kind == "canonical":
        assert (verdict.mechanism, verdict.address, verdict.fault) == ("canonical", va, 0)
    elif expected.kind == "pf":
        assert verdict.mechanism in expected.mechanisms
        assert (verdict.address, verdict.fault, verdict.access) == (va, expected.code, access)
    elif expected.kind == "slat.walk":
        assert (verdict.mechanism, verdict.access, verdict.gpa, verdict.address) == (
            "slat.walk",
            expected.access,
            expected.gpa,
            va,
        )
    elif expected.kind == "slat":
        assert (verdict.mechanism, verdict.address, verdict.gpa, verdict.access) == (
            "slat",
            expected.gpa,
            expected.gpa,
            access,
        )
    else:
        assert leaf is not None
        assert (verdict.mechanism, verdict.address, verdict.fault) == ("paging", expected.gpa, 0)
        assert leaf.gpa_page == expected.gpa & ~0xFFF
        assert (leaf.size_shift, leaf.writable, leaf.user, leaf.nx, leaf.glob, leaf.dirty) == (
            expected.size_shift,
            expected.writable,
            expected.user,
            expected.nx,
            expected.glob,
            expected.dirty,
        )
        for entry_gpa, bits in expected.updates:
            assert ram.read_u64(entry_gpa) & bits == bits
        # Nothing but A/D bits changed anywhere in RAM.
        changed = int.from_bytes(before, "little") ^ int.from_bytes(ram.mm[:], "little")
        assert changed & ~AD_EVERYWHERE == 0
    if not verdict.ok:
        assert verdict.fault == 0 or verdict.mechanism.startswith(("paging.", "sm"))


# -- random guest behaviour on a VP ---------------------------------------------------------------
NOP = "test.hw.prop_nop"


@code.guest_code(NOP)
def _nop(vp: object) -> None:
    return None


ops = st.one_of(
    st.tuples(st.just("read"), vas(), st.integers(0, 2 * PAGE_SIZE)),
    st.tuples(st.just("write"), vas(), st.binary(max_size=64)),
    st.tuples(st.just("read_u64"), vas()),
    st.tuples(st.just("write_u64"), vas(), st.integers(0, U64)),
    st.tuples(st.just("read_u32"), vas()),
    st.tuples(st.just("write_u32"), vas(), st.integers(0, U64)),
    st.tuples(st.just("fetch"), vas()),
    st.tuples(st.just("invlpg"), vas()),
    st.tuples(st.just("cr3")),
    st.tuples(st.just("cpl"), st.sampled_from([0, 3])),
    st.tuples(st.just("cr4"), st.integers(0, (1 << 25) - 1) | st.integers(0, U64)),
    st.tuples(st.just("efer"), st.integers(0, 0xFFF)),
    st.tuples(st.just("pte"), st.integers(0, 15), entry_values(0)),
)
near_vas = st.integers(0, 16 * PAGE_SIZE - 1).map(lambda o: TEST_VA + o)


# ``call`` is left out on purpose: a fetch that lands on a routine with another signature
# raises TypeError (see test_vp_instructions.test_routine_entered_with_another_signature...).
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pages=st.lists(
        st.tuples(st.integers(0, 15), st.integers(0, 0xFFF), high_bits, st.booleans()),
        max_size=8,
    ),
    program=st.lists(
        st.one_of(
            ops,
            st.tuples(st.just("read"), near_vas, st.integers(0, 3 * PAGE_SIZE)),
            st.tuples(st.just("write"), near_vas, st.binary(max_size=64)),
            st.tuples(st.just("fetch"), near_vas),
        ),
        max_size=12,
    ),
    with_slat=st.booleans(),
    rights=st.lists(st.integers(0, 15), min_size=16, max_size=16),
)
def test_vp_only_ever_raises_guest_terminations(
    pages: list[tuple[int, int, int, bool]],
    program: list[tuple[object, ...]],
    with_slat: bool,
    rights: list[int],
) -> None:
    slat = None
    if with_slat:
        slat = Slat((1 << 20) // PAGE_SIZE)
        slat.enable_vtl(1)
    rig = Rig(ram_size=1 << 20, slat=slat)
    vp = rig.vp
    data_frames = []
    for index, flags, high, thunk in pages:
        va = TEST_VA + index * PAGE_SIZE
        gpa = rig.page(va, (flags | 1) & ~int(Pte.PS), code.encode_thunk(NOP) if thunk else b"")
        rig.set_entry(va, 3, rig.entry(va, 3) | high)
        data_frames.append(gpa)
    if slat is not None:
        for gpa, mask in zip(data_frames, rights, strict=False):
            slat.set(1, gpa >> 12, mask)
    pte_table = rig.entry(TEST_VA, 2) & ADDR_BITS if pages else None
    for op in program:
        name = op[0]
        try:
            if name == "read":
                vp.read(op[1], op[2])
            elif name == "write":
                vp.write(op[1], op[2])
            elif name in ("read_u64", "read_u32"):
                getattr(vp, name)(op[1])
            elif name in ("write_u64", "write_u32"):
                getattr(vp, name)(op[1], op[2])
            elif name == "fetch":
                vp.fetch(op[1])
            elif name == "invlpg":
                vp.invlpg(op[1])
            elif name == "cr3":
                vp.mov_to_cr(3, vp.p.cr3)
            elif name == "cpl":
                vp.set_cpl(op[1])
            elif name == "cr4":
                vp.mov_to_cr(4, op[1])
            elif name == "efer":
                vp.wrmsr(Msr.EFER, op[1])
            elif name == "pte" and pte_table is not None:
                rig.ram.write_u64(pte_table + (TEST_VA >> 12 & 0x1FF) * 8 + op[1] * 8, op[2])
        except GuestTermination:
            pass
    # Every delivered fault was an architectural vector with a sane error code.
    for record in rig.faults:
        assert record.vector in (6, 8, 13, 14)
        assert 0 <= record.error_code < 32
