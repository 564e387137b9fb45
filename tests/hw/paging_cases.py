"""The #PF cases of SDM Vol. 3A §4.6/§4.7, shared by the walker tests and the VP tests.

Each case maps one 4 KiB page at ``CASE_VA`` with given leaf flags (intermediate entries are
P|RW|US as :class:`PageTables` builds them), optionally edits an entry, sets processor state and
performs one access.  The expectation is either success or a refusal with the exact mechanism and
the exact page-fault error code (figure 4-12: P=1, W=2, U=4, RSVD=8, I=16)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vbsim.hw.regs import LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER
from vbsim.hw.x86 import Access, Cr0, Cr4, Efer, Pte, Rflags

from .rig import TEST_VA, Rig

CASE_VA = TEST_VA + 0x5000
#: A VA whose PML4 slot holds nothing at all (user half).
UNMAPPED_PML4_VA = 0x0000_7000_0000_0000
#: A VA in the same page table as CASE_VA whose PTE is zero.
UNMAPPED_PTE_VA = TEST_VA + 0x9000

P, W, U, RSVD, I = 1, 2, 4, 8, 16  # noqa: E741
RW, US, NX, PS = int(Pte.RW), int(Pte.US), int(Pte.NX), int(Pte.PS)
SMEP, SMAP = int(Cr4.SMEP), int(Cr4.SMAP)
NXE = int(Efer.NXE)
WP = int(Cr0.WP)
AC = int(Rflags.AC)

BASE_CR4 = LONG_MODE_CR4 | SMEP | SMAP
NO_NXE = LONG_MODE_EFER & ~NXE

Tweak = Callable[[Rig, int], None]


def _or_entry(depth: int, bits: int) -> Tweak:
    def tweak(rig: Rig, va: int) -> None:
        rig.set_entry(va, depth, rig.entry(va, depth) | bits)

    return tweak


def _clear_entry(depth: int, bits: int) -> Tweak:
    def tweak(rig: Rig, va: int) -> None:
        rig.set_entry(va, depth, rig.entry(va, depth) & ~bits)

    return tweak


def _set_entry(depth: int, value: int) -> Tweak:
    def tweak(rig: Rig, va: int) -> None:
        rig.set_entry(va, depth, value)

    return tweak


@dataclass(frozen=True)
class Case:
    name: str
    leaf: int  # leaf flags of the page at CASE_VA (P added)
    access: Access
    cpl: int = 0
    expect: str = ""  # '' = allowed, else the refusing mechanism
    code: int = 0  # expected #PF error code (for paging refusals)
    va: int = CASE_VA
    cr0: int = LONG_MODE_CR0
    cr4: int = BASE_CR4
    efer: int = LONG_MODE_EFER
    rflags: int = int(Rflags.FIXED1)
    implicit: bool = False
    tweaks: tuple[Tweak, ...] = field(default=())

    def __str__(self) -> str:
        return self.name


R_, W_, X_ = Access.READ, Access.WRITE, Access.EXECUTE

CASES: tuple[Case, ...] = (
    # -- not present (P=0): P clear in the error code ---------------------------------------
    Case("np-pte-read-cpl0", RW, R_, 0, "paging.p", 0, va=UNMAPPED_PTE_VA),
    Case("np-pte-write-cpl0", RW, W_, 0, "paging.p", W, va=UNMAPPED_PTE_VA),
    Case("np-pte-read-cpl3", RW, R_, 3, "paging.p", U, va=UNMAPPED_PTE_VA),
    Case("np-pte-write-cpl3", RW, W_, 3, "paging.p", W | U, va=UNMAPPED_PTE_VA),
    Case("np-fetch-cpl3-nxe", RW, X_, 3, "paging.p", U | I, va=UNMAPPED_PTE_VA),
    Case("np-fetch-cpl0-nxe", RW, X_, 0, "paging.p", I, va=UNMAPPED_PTE_VA),
    # I is reported only with NXE or SMEP (SDM §4.7).
    Case(
        "np-fetch-cpl0-no-nxe-no-smep",
        RW,
        X_,
        0,
        "paging.p",
        0,
        va=UNMAPPED_PTE_VA,
        efer=NO_NXE,
        cr4=LONG_MODE_CR4,
    ),
    Case("np-fetch-cpl0-smep-only", RW, X_, 0, "paging.p", I, va=UNMAPPED_PTE_VA, efer=NO_NXE),
    Case("np-pml4e-read-cpl0", RW, R_, 0, "paging.p", 0, va=UNMAPPED_PML4_VA),
    Case("np-pml4e-write-cpl3", RW, W_, 3, "paging.p", W | U, va=UNMAPPED_PML4_VA),
    Case("np-pde-cleared", RW | US, R_, 3, "paging.p", U, tweaks=(_clear_entry(2, 1),)),
    # Reserved bits in a not-present entry are ignored: still a not-present fault.
    Case(
        "np-with-reserved-bits",
        RW | US,
        R_,
        3,
        "paging.p",
        U,
        tweaks=(_set_entry(3, (1 << 51) | (1 << 46) | PS | 0x1000),),
    ),
    # -- U/S: user access to a supervisor page ------------------------------------------------
    Case("us-user-read-supervisor", RW, R_, 3, "paging.us", P | U),
    Case("us-user-write-supervisor", RW, W_, 3, "paging.us", P | W | U),
    Case("us-user-fetch-supervisor", RW, X_, 3, "paging.us", P | U | I),
    Case("us-user-read-user", RW | US, R_, 3),
    Case(
        "us-cleared-in-pde-only",
        RW | US,
        R_,
        3,
        "paging.us",
        P | U,
        tweaks=(_clear_entry(2, US),),
    ),
    Case(
        "us-cleared-in-pml4e-only",
        RW | US,
        W_,
        3,
        "paging.us",
        P | W | U,
        tweaks=(_clear_entry(0, US),),
    ),
    # -- R/W: user write to a read-only page --------------------------------------------------
    Case("rw-user-write-readonly", US, W_, 3, "paging.rw", P | W | U),
    Case("rw-user-read-readonly", US, R_, 3),
    Case("rw-user-write-writable", RW | US, W_, 3),
    Case(
        "rw-cleared-in-pdpte-only",
        RW | US,
        W_,
        3,
        "paging.rw",
        P | W | U,
        tweaks=(_clear_entry(1, RW),),
    ),
    # -- CR0.WP: supervisor write to a read-only page -----------------------------------------
    Case("wp1-supervisor-write-readonly", 0, W_, 0, "paging.wp", P | W),
    Case("wp0-supervisor-write-readonly", 0, W_, 0, cr0=LONG_MODE_CR0 & ~WP),
    Case(
        "wp1-readonly-in-pml4e-only",
        RW,
        W_,
        0,
        "paging.wp",
        P | W,
        tweaks=(_clear_entry(0, RW),),
    ),
    Case(
        "wp0-supervisor-write-readonly-user-page-no-smap",
        US,
        W_,
        0,
        cr0=LONG_MODE_CR0 & ~WP,
        cr4=LONG_MODE_CR4,
    ),
    Case(
        "wp1-supervisor-write-readonly-user-page",
        US,
        W_,
        0,
        "paging.wp",
        P | W,
        cr4=LONG_MODE_CR4,
    ),
    # -- XD with EFER.NXE ---------------------------------------------------------------------
    Case("nx-supervisor-fetch", RW | NX, X_, 0, "paging.nx", P | I),
    Case("nx-user-fetch", RW | US | NX, X_, 3, "paging.nx", P | U | I),
    Case("nx-in-pml4e-only", RW, X_, 0, "paging.nx", P | I, tweaks=(_or_entry(0, NX),)),
    Case("nx-in-pde-only-user", RW | US, X_, 3, "paging.nx", P | U | I, tweaks=(_or_entry(2, NX),)),
    Case("nx-clear-supervisor-fetch", RW, X_, 0),
    Case("nx-clear-user-fetch", US, X_, 3),
    Case("nx-page-is-still-readable", RW | NX, R_, 0),
    # -- SMEP -----------------------------------------------------------------------------------
    Case("smep-supervisor-fetch-user-page", RW | US, X_, 0, "smep", P | I),
    Case("smep-off-supervisor-fetch-user-page", RW | US, X_, 0, cr4=LONG_MODE_CR4 | SMAP),
    Case("smep-reports-i-without-nxe", US, X_, 0, "smep", P | I, efer=NO_NXE),
    Case(
        "smep-not-applied-when-pde-is-supervisor",
        RW | US,
        X_,
        0,
        tweaks=(_clear_entry(2, US),),
    ),
    # -- SMAP -----------------------------------------------------------------------------------
    Case("smap-supervisor-read-user-page", RW | US, R_, 0, "smap", P),
    Case("smap-supervisor-write-user-page", RW | US, W_, 0, "smap", P | W),
    Case("smap-ac-allows-read", RW | US, R_, 0, rflags=int(Rflags.FIXED1) | AC),
    Case("smap-ac-allows-write", RW | US, W_, 0, rflags=int(Rflags.FIXED1) | AC),
    Case("smap-off-supervisor-read-user-page", RW | US, R_, 0, cr4=LONG_MODE_CR4 | SMEP),
    Case(
        "smap-implicit-ignores-ac",
        RW | US,
        R_,
        0,
        "smap",
        P,
        rflags=int(Rflags.FIXED1) | AC,
        implicit=True,
    ),
    # An implicit access made while CPL=3 is a supervisor access: no U bit, SMAP applies.
    Case("smap-implicit-at-cpl3", RW | US, R_, 3, "smap", P, implicit=True),
    Case("implicit-at-cpl3-reads-supervisor-page", RW, R_, 3, implicit=True),
    # -- reserved bits: RSVD (with P=1) ------------------------------------------------------
    Case("rsvd-ps-in-pml4e", RW, R_, 0, "paging.rsvd", P | RSVD, tweaks=(_or_entry(0, PS),)),
    Case("rsvd-bit46-in-pte", RW, R_, 0, "paging.rsvd", P | RSVD, tweaks=(_or_entry(3, 1 << 46),)),
    Case(
        "rsvd-bit51-in-pdpte", RW, R_, 0, "paging.rsvd", P | RSVD, tweaks=(_or_entry(1, 1 << 51),)
    ),
    Case(
        "rsvd-bit48-in-pde-user-write",
        RW | US,
        W_,
        3,
        "paging.rsvd",
        P | W | U | RSVD,
        tweaks=(_or_entry(2, 1 << 48),),
    ),
    Case("rsvd-nx-without-nxe-pte", RW | NX, R_, 0, "paging.rsvd", P | RSVD, efer=NO_NXE),
    Case(
        "rsvd-nx-without-nxe-pml4e",
        RW,
        R_,
        0,
        "paging.rsvd",
        P | RSVD,
        efer=NO_NXE,
        tweaks=(_or_entry(0, NX),),
    ),
    Case(
        "rsvd-fetch-reports-i",
        RW,
        X_,
        0,
        "paging.rsvd",
        P | RSVD | I,
        tweaks=(_or_entry(3, 1 << 47),),
    ),
    Case(
        "rsvd-user-fetch",
        RW | US,
        X_,
        3,
        "paging.rsvd",
        P | U | RSVD | I,
        tweaks=(_or_entry(3, 1 << 47),),
    ),
    # Reserved bits beat access rights: a reserved bit on a supervisor page at CPL3 is RSVD.
    Case(
        "rsvd-beats-us",
        RW,
        R_,
        3,
        "paging.rsvd",
        P | U | RSVD,
        tweaks=(_or_entry(3, 1 << 50),),
    ),
    # -- bits that are *not* reserved -------------------------------------------------------
    Case("ignored-bits-52-62", RW, R_, 0, tweaks=(_or_entry(3, 0x7FF << 52),)),
    Case("ignored-avl-bits-9-11", RW, R_, 0, tweaks=(_or_entry(3, 0xE00), _or_entry(0, 0xE00))),
    Case("pat-bit-in-pte-not-reserved", RW, R_, 0, tweaks=(_or_entry(3, PS),)),
    Case("g-bit-in-pml4e-ignored", RW, R_, 0, tweaks=(_or_entry(0, int(Pte.G)),)),
    Case("nx-allowed-with-nxe", RW | NX, W_, 0),
)
