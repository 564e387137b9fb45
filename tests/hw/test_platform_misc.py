"""Architectural numbers, the register split, guest-code thunks and the page-table builder."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vbsim.hw import code
from vbsim.hw.pagetable import TABLE_FLAGS, PageTables, PhysAccess
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import PRIVATE_REGS, SHARED_GPRS, SHARED_OTHER, PrivateState
from vbsim.hw.x86 import (
    MAXPHYADDR,
    PAGE_SIZE,
    PTE_ADDR_MASK,
    PTE_RSVD_ADDR_MASK,
    Access,
    Cr0,
    Cr4,
    Efer,
    Msr,
    PfErr,
    Pte,
    Rflags,
    Vector,
)


# -- architectural numbers (Intel SDM) ------------------------------------------------------------
def test_page_fault_error_code_bits() -> None:
    assert [int(b) for b in (PfErr.P, PfErr.W, PfErr.U, PfErr.RSVD, PfErr.I)] == [1, 2, 4, 8, 16]


def test_vectors() -> None:
    assert (Vector.UD, Vector.DF, Vector.GP, Vector.PF) == (6, 8, 13, 14)


def test_pte_bits_and_address_masks() -> None:
    assert (Pte.P, Pte.RW, Pte.US, Pte.A, Pte.D, Pte.PS, Pte.G) == (1, 2, 4, 32, 64, 128, 256)
    assert Pte.NX == 1 << 63
    assert MAXPHYADDR == 46
    assert PTE_ADDR_MASK == 0x0000_3FFF_FFFF_F000
    assert PTE_RSVD_ADDR_MASK == 0x000F_C000_0000_0000


def test_control_register_and_msr_numbers() -> None:
    assert (Cr0.WP, Cr0.PG, Cr4.PGE, Cr4.SMEP, Cr4.SMAP) == (
        1 << 16,
        1 << 31,
        1 << 7,
        1 << 20,
        1 << 21,
    )
    assert (Efer.SCE, Efer.NXE, Rflags.AC) == (1, 1 << 11, 1 << 18)
    assert (Msr.EFER, Msr.STAR, Msr.LSTAR, Msr.SFMASK) == (
        0xC000_0080,
        0xC000_0081,
        0xC000_0082,
        0xC000_0084,
    )
    assert (Access.READ, Access.WRITE, Access.EXECUTE) == (0, 1, 2)


# -- registers: private per VTL vs shared ------------------------------------------------------
def test_rsp_is_private_and_the_other_gprs_shared() -> None:
    assert "rsp" not in SHARED_GPRS and "rsp" in PRIVATE_REGS
    assert len(SHARED_GPRS) == 15
    assert set(SHARED_GPRS) == {
        "rax",
        "rcx",
        "rdx",
        "rbx",
        "rbp",
        "rsi",
        "rdi",
        *(f"r{i}" for i in range(8, 16)),
    }
    assert {"cr0", "cr3", "cr4", "efer", "lstar", "rip", "rflags"} <= set(PRIVATE_REGS)
    assert "cr2" in SHARED_OTHER and "cr2" not in PRIVATE_REGS
    assert not set(SHARED_GPRS) & set(PRIVATE_REGS)


def test_private_state_copy_is_deep_for_segments() -> None:
    state = PrivateState(rip=5, cr3=0x1000, lstar=7, cpl=3)
    state.segments["cs"].selector = 0x33
    clone = state.copy()
    assert [getattr(clone, n) for n in PRIVATE_REGS] == [getattr(state, n) for n in PRIVATE_REGS]
    assert clone.cpl == 3 and clone.segments["cs"].selector == 0x33
    clone.segments["cs"].selector = 0x10
    clone.rip = 9
    assert state.segments["cs"].selector == 0x33 and state.rip == 5


# -- guest code thunks -------------------------------------------------------------------------
def test_thunk_layout() -> None:
    thunk = code.encode_thunk("test.hw.thunk-layout")
    assert len(thunk) == code.THUNK_SIZE == 32
    assert thunk.startswith(b"\x0f\x3fVBSM\x01")  # 0F 3F: an undefined opcode
    assert thunk[-1] == 0xC3
    assert code.encode_thunk("test.hw.thunk-layout") == thunk
    assert code.encode_thunk("test.hw.thunk-layout2") != thunk


def test_a_replaced_routine_is_not_kept_alive() -> None:
    """Kernels register fresh closures under the same names at every boot: the old one must go
    with its thunk (the per-routine table used to keep every boot's closures: 42 per boot)."""

    def make(tag: int) -> Callable[[object, int], int]:
        def routine(vp: object, a: int) -> int:
            return tag + a

        return routine

    first, second = make(1), make(2)
    code.register("test.hw.replaced", first)
    code.register("test.hw.also-first", first)
    with code.linking():  # a boot re-links names to fresh code
        code.register("test.hw.replaced", second)
        assert second in code._arity and first in code._arity  # still named by another thunk
        code.register("test.hw.also-first", second)
    assert first not in code._arity and code._arity[second] == 1


def test_outside_a_loader_window_a_linked_name_keeps_its_code() -> None:
    """What a thunk already in RAM runs cannot change once boot is over (CodeRelinked); a name
    may be re-registered with the same code, and new names may be registered."""

    def original(vp: object) -> int:
        return 1

    def replacement(vp: object) -> int:
        return 2

    thunk = code.register("test.hw.linked-once", original)
    assert code.register("test.hw.linked-once", original) == thunk
    with pytest.raises(code.CodeRelinked):
        code.register("test.hw.linked-once", replacement)
    decoded = code.decode_thunk(thunk)
    assert decoded is not None and decoded[1] is original

    def wrap(target: object) -> code.GuestRoutine:
        def service(vp: object) -> object:
            return target

        return service

    code.register("test.hw.wrapper", wrap(original))
    code.register("test.hw.wrapper", wrap(original))  # the same wrapper over the same code
    with pytest.raises(code.CodeRelinked):
        code.register("test.hw.wrapper", wrap(replacement))  # the same wrapper, other code


def test_register_decode_and_name_of() -> None:
    def routine(vp: object) -> int:
        return 1

    thunk = code.register("test.hw.registered", routine)
    assert code.decode_thunk(thunk) == ("test.hw.registered", routine)
    assert code.name_of(thunk) == "test.hw.registered"
    assert code.decode_thunk(code.encode_thunk("test.hw.never-registered")) is None
    assert code.name_of(bytes(32)) is None
    assert code.decode_thunk(thunk[:-1]) is None
    # Re-registering the same name (e.g. a module reload) replaces the routine.
    assert code.register("test.hw.registered", routine) == thunk


# -- the page-table builder --------------------------------------------------------------------
@pytest.fixture
def tables() -> tuple[GuestRam, PageTables]:
    ram = GuestRam(4 << 20)
    return ram, PageTables(PhysAccess.direct(ram, "pt"))


def test_map_writes_real_entries(tables: tuple[GuestRam, PageTables]) -> None:
    ram, pt = tables
    va = 0x0000_1234_5678_9000
    pt.map(va, 0x0003_4000, int(Pte.RW | Pte.NX))
    assert pt.frames is not None and len(pt.frames) == 4  # PML4, PDPT, PD, PT
    table = pt.root
    for shift in (39, 30, 21):
        entry = ram.read_u64(table + ((va >> shift) & 0x1FF) * 8)
        assert entry & 0xFFF == TABLE_FLAGS == int(Pte.P | Pte.RW | Pte.US)
        table = entry & PTE_ADDR_MASK
    pte_gpa = table + ((va >> 12) & 0x1FF) * 8
    assert pt.pte_gpa(va) == pte_gpa
    assert ram.read_u64(pte_gpa) == 0x0003_4000 | int(Pte.P | Pte.RW | Pte.NX)
    assert pt.lookup(va + 0xFFF) == ram.read_u64(pte_gpa)
    assert all(ram.frames.owner(f) == "pt" for f in pt.frames)


def test_large_maps_set_ps_and_align(tables: tuple[GuestRam, PageTables]) -> None:
    _, pt = tables
    pt.map(0x4000_0000, 0x0020_1000, int(Pte.RW), 21)  # frame rounded down to 2 MiB
    assert pt.lookup(0x4000_0000) == 0x0020_0000 | int(Pte.P | Pte.RW | Pte.PS)
    pt.map(0x80_0000_0000, 0x4123_4000, 0, 30)
    assert pt.lookup(0x80_1234_5678) == 0x4000_0000 | int(Pte.P | Pte.PS)
    assert pt.pte_gpa(0x4000_0000) is None  # inside a large page
    with pytest.raises(ValueError):
        pt.map(0x4000_1000, 0x5000, int(Pte.RW))


def test_unmap_and_lookup_of_absent(tables: tuple[GuestRam, PageTables]) -> None:
    _, pt = tables
    assert pt.lookup(0x1000) is None
    assert pt.pte_gpa(0x1000) is None
    pt.map_range(0x1000, 0x9000, 3 * PAGE_SIZE, int(Pte.RW))
    assert [pt.lookup(0x1000 + i * PAGE_SIZE) & PTE_ADDR_MASK for i in range(3)] == [
        0x9000,
        0xA000,
        0xB000,
    ]
    pt.unmap(0x2000)
    assert pt.lookup(0x2000) is None
    assert pt.lookup(0x1000) is not None and pt.lookup(0x3000) is not None
    pt.unmap(0x7777_0000)  # absent: nothing happens


def test_existing_root_is_reused(tables: tuple[GuestRam, PageTables]) -> None:
    _, pt = tables
    pt.map(0x5000, 0x6000, 0)
    again = PageTables(pt.phys, root=pt.root)
    assert again.frames == [] and again.lookup(0x5000) == pt.lookup(0x5000)
