"""x86-64 4-level paging, described by a table of levels (SDM Vol. 3A §4.5, §4.6, §4.7).

The walker reads paging-structure entries from guest RAM *through SLAT*, as EPT does: reading an
entry needs SLAT read rights, and setting its accessed/dirty bit needs SLAT write rights.  A
refused entry access is reported with mechanism ``slat.walk`` and the entry's GPA; the processor
turns it into a secure intercept, not a page fault.

Access rights follow SDM §4.6: U/S and R/W are combined over all levels (a user access needs U/S=1
at every level; a write needs R/W=1 at every level, for supervisor writes only when CR0.WP=1);
XD (NX) is effective when EFER.NXE=1 and set at any level; SMEP forbids supervisor fetches from
user linear addresses; SMAP forbids supervisor data accesses to user linear addresses unless
RFLAGS.AC=1 (explicit accesses only).  A refusal is a #PF whose error code has the architectural
bits P, W, U, RSVD and I (SDM figure 4-12).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vbsim.hw.ram import GuestRam
from vbsim.hw.slat import KX, UX, R, Slat, W, exec_right
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import (
    LINEAR_ADDRESS_BITS,
    PAGE_MASK,
    PAGE_SHIFT,
    PTE_ADDR_MASK,
    PTE_RSVD_ADDR_MASK,
    Access,
    Cr0,
    Cr4,
    Efer,
    PfErr,
    Pte,
    Rflags,
)

#: One little-endian 64-bit entry straight out of the RAM mapping (no slice copy).
_read_entry = struct.Struct("<Q").unpack_from

if TYPE_CHECKING:
    from vbsim.hw.hlat import Hlat


@dataclass(frozen=True, slots=True)
class Level:
    """One level of the 4-level walk."""

    name: str
    shift: int  # linear-address bits translated below this level
    large_ok: bool  # PS=1 maps a large page here (PDPTE: 1 GiB, PDE: 2 MiB)
    leaf: bool  # always a leaf (PTE)


#: SDM Vol. 3A table 4-14 and figures 4-8..4-10: PML4E → PDPTE → PDE → PTE.
LEVELS: tuple[Level, ...] = (
    Level("PML4E", 39, large_ok=False, leaf=False),
    Level("PDPTE", 30, large_ok=True, leaf=False),
    Level("PDE", 21, large_ok=True, leaf=False),
    Level("PTE", 12, large_ok=False, leaf=True),
)

_P, _RW, _US, _A, _D, _PS, _G = (
    int(Pte.P),
    int(Pte.RW),
    int(Pte.US),
    int(Pte.A),
    int(Pte.D),
    int(Pte.PS),
    int(Pte.G),
)
_NX = int(Pte.NX)
_ADDR = PTE_ADDR_MASK
_RSVD_ADDR = PTE_RSVD_ADDR_MASK
_CANON_HI = (1 << 64) - (1 << (LINEAR_ADDRESS_BITS - 1))
_CANON_LO_END = 1 << (LINEAR_ADDRESS_BITS - 1)
_U64_END = 1 << 64
_NXE = int(Efer.NXE)
_RSVD = int(PfErr.RSVD)
#: In a large-page entry, address bits (shift-1):13 are reserved; bit 12 is PAT (SDM table 4-17).
_LARGE_RSVD = ~PAGE_MASK & ~(1 << 12)
#: Per level: shift, large_ok, leaf, name, reserved bits with EFER.NXE=1, and with NXE=0
#: (then XD is reserved too, SDM §4.5).  PS is reserved in a PML4E.
_LEVEL_TUPLES = tuple(
    (
        lv.shift,
        lv.large_ok,
        lv.leaf,
        lv.name,
        PTE_RSVD_ADDR_MASK | (0 if lv.large_ok or lv.leaf else int(Pte.PS)),
        PTE_RSVD_ADDR_MASK | (0 if lv.large_ok or lv.leaf else int(Pte.PS)) | int(Pte.NX),
    )
    for lv in LEVELS
)


def canonical(va: int) -> bool:
    return 0 <= va < (1 << (LINEAR_ADDRESS_BITS - 1)) or _CANON_HI <= va < (1 << 64)


class PagingState(Protocol):
    """The processor state that shapes translation (the VP's private register bank has it)."""

    cr3: int
    cr0: int
    cr4: int
    efer: int
    cpl: int
    rflags: int


@dataclass(slots=True)
class SimplePagingState:
    """A standalone paging state, for host-side tools and tests."""

    cr3: int
    cr0: int = int(Cr0.PG | Cr0.PE | Cr0.WP)
    cr4: int = int(Cr4.PAE)
    efer: int = int(Efer.LME | Efer.LMA | Efer.NXE)
    cpl: int = 0
    rflags: int = int(Rflags.FIXED1)


@dataclass(slots=True)
class Leaf:
    """What a successful walk found (the information a TLB entry caches)."""

    gpa_page: int  # GPA of the 4 KiB page containing the address
    writable: bool  # R/W=1 at every level
    user: bool  # U/S=1 at every level
    nx: bool  # XD=1 at some level (only meaningful with EFER.NXE)
    dirty: bool
    glob: bool
    size_shift: int  # 12, 21 or 30
    level: str


_WP = int(Cr0.WP)
_SMEP = int(Cr4.SMEP)
_SMAP = int(Cr4.SMAP)
_AC = int(Rflags.AC)
_PF_P, _PF_W, _PF_U, _PF_I = int(PfErr.P), int(PfErr.W), int(PfErr.U), int(PfErr.I)


def error_code(present: bool, access: Access, user_mode: bool, state: PagingState) -> int:
    """The #PF error code (SDM figure 4-12); I is reported when NXE or SMEP is on."""
    code = _PF_P if present else 0
    if access is Access.WRITE:
        code |= _PF_W
    if user_mode:
        code |= _PF_U
    if access is Access.EXECUTE and (state.efer & _NXE or state.cr4 & _SMEP):
        code |= _PF_I
    return code


def check_rights(leaf: Leaf, access: Access, state: PagingState, implicit: bool = False) -> str:
    """SDM §4.6 access-rights checks on a completed walk; returns '' or the refusing mechanism."""
    user_mode = state.cpl == 3 and not implicit
    if user_mode and not leaf.user:
        return "paging.us"
    if access is Access.WRITE:
        if not leaf.writable and (user_mode or state.cr0 & _WP):
            return "paging.rw" if user_mode else "paging.wp"
    elif access is Access.EXECUTE:
        if leaf.nx and state.efer & _NXE:
            return "paging.nx"
        if not user_mode and leaf.user and state.cr4 & _SMEP:
            return "smep"
        return ""
    if not user_mode and leaf.user and state.cr4 & _SMAP and (implicit or not state.rflags & _AC):
        return "smap"
    return ""


class PagingLayer:
    """Paging(cr3, cpl) over SLAT(vtl) over RAM."""

    __slots__ = ("hlat", "mbec", "ram", "slat", "state", "vtl")

    def __init__(
        self, ram: GuestRam, slat: Slat | None, vtl: int, state: PagingState, mbec: bool = False
    ) -> None:
        self.ram = ram
        self.slat = slat
        self.vtl = vtl
        self.state = state
        self.mbec = mbec
        #: HVPT hook: HLAT (Intel VT-rp) state of this (VP, VTL), set by the hypervisor on the
        #: higher VTL's request; None = HLAT off (see vbsim.hw.hlat).
        self.hlat: Hlat | None = None

    def _slat_rights(self, gpn: int) -> int:
        slat = self.slat
        if slat is None:
            return R | W | KX | UX
        return slat.rights(self.vtl, gpn)

    def walk(
        self,
        va: int,
        access: Access,
        implicit: bool = False,
        update_ad: bool = True,
        root: int | None = None,
    ) -> tuple[Verdict, Leaf | None]:
        """Translate ``va``; on success set A (and D for writes) and return the leaf.

        ``root`` is the PML4 to start from; None means "as the processor chooses": CR3, or
        HLATP for an address in HLAT's protected range (the HLAT walker passes it explicitly).

        This is the TLB-miss path, so it is written for speed: plain ints, locals, one loop over
        the level table."""
        state = self.state
        if not (va < _CANON_LO_END or _CANON_HI <= va < _U64_END):
            return Verdict(False, va, "canonical", access), None
        if root is None:
            # HVPT hook (vbsim.hw.hlat): with HLAT on, a protected-range address is translated
            # from HLATP (or restarted from CR3) by the HLAT walker, which calls back with root.
            hlat = self.hlat
            if hlat is not None and hlat.covers(va):
                return hlat.walk(self, va, access, implicit, update_ad)
            root = state.cr3
        slat = self.slat
        eff = None if slat is None else slat.effective[self.vtl]
        mm = self.ram.mm
        size = self.ram.size
        nxe = state.efer & _NXE
        table = root & _ADDR
        # (gpa, value) of each entry used whose Accessed bit is still clear: the only ones the
        # A/D update below may have to write (besides the leaf's D bit on a write).
        pending: list[tuple[int, int]] = []
        flags_and = _RW | _US
        nx = 0
        need_ad = access is Access.WRITE
        for shift, large_ok, is_pte, name, rsvd_nxe, rsvd_legacy in _LEVEL_TUPLES:
            entry_gpa = table + (((va >> shift) & 0x1FF) << 3)
            if entry_gpa + 8 <= size:
                if eff is not None and not eff[entry_gpa >> 12] & 1:
                    return Verdict(False, va, "slat.walk", Access.READ, gpa=entry_gpa), None
                value = _read_entry(mm, entry_gpa)[0]
            else:
                value = 0xFFFF_FFFF_FFFF_FFFF  # unbacked: the bus floats high
            if not value & _P:
                code = error_code(False, access, state.cpl == 3 and not implicit, state)
                return Verdict(False, va, "paging.p", access, fault=code), None
            leaf_here = is_pte or (large_ok and value & _PS)
            if value & (rsvd_nxe if nxe else rsvd_legacy) or (
                leaf_here and not is_pte and value & ((1 << shift) - 1) & _LARGE_RSVD
            ):
                code = error_code(True, access, state.cpl == 3 and not implicit, state)
                return Verdict(False, va, "paging.rsvd", access, fault=code | _RSVD), None
            if not value & _A:
                pending.append((entry_gpa, value))
                need_ad = True
            flags_and &= value
            nx |= value & _NX
            if leaf_here:
                mask = (1 << shift) - 1
                gpa_page = ((value & _ADDR & ~mask) | (va & mask)) & ~PAGE_MASK
                leaf = Leaf(
                    gpa_page,
                    bool(flags_and & _RW),
                    bool(flags_and & _US),
                    bool(nx),
                    bool(value & _D),
                    bool(value & _G),
                    shift,
                    name,
                )
                break
            table = value & _ADDR
        else:  # pragma: no cover - the PTE level is always a leaf
            raise AssertionError("walk ended without a leaf")
        mechanism = check_rights(leaf, access, state, implicit)
        if mechanism:
            code = error_code(True, access, state.cpl == 3 and not implicit, state)
            return Verdict(False, va, mechanism, access, fault=code), None
        gpa = leaf.gpa_page | (va & PAGE_MASK)
        # Without an effective table (no SLAT, or no protecting VTL above this one) every RAM
        # page is RWX and a non-RAM GPA has no SLAT protection: slat_check could only say None.
        if eff is not None:
            if access is not Access.READ or gpa >= size:
                refusal = self.slat_check(gpa, access, leaf.user)
                if refusal is not None:
                    return refusal, None
            elif not eff[gpa >> 12] & 1:
                return Verdict(False, gpa, "slat", access, gpa=gpa), None
        if not need_ad or not update_ad:
            return Verdict(True, gpa, "paging", access), leaf
        # Accessed / dirty bits: writing paging structures needs SLAT write rights (EPT A/D).
        write = access is Access.WRITE
        leaf_gpa, leaf_value = entry_gpa, value
        if write and not leaf_value & _D and (not pending or pending[-1][0] != leaf_gpa):
            pending.append((leaf_gpa, leaf_value))
        for index, (entry_gpa, value) in enumerate(pending):
            new = value | _A
            if write and index == len(pending) - 1 and entry_gpa == leaf_gpa:
                new |= _D
            if new != value:
                if eff is not None and not eff[entry_gpa >> 12] & 2:
                    return Verdict(False, va, "slat.walk", Access.WRITE, gpa=entry_gpa), None
                mm[entry_gpa : entry_gpa + 8] = new.to_bytes(8, "little")
        if access is Access.WRITE and not leaf.dirty:
            leaf = Leaf(
                leaf.gpa_page,
                leaf.writable,
                leaf.user,
                leaf.nx,
                True,
                leaf.glob,
                leaf.size_shift,
                leaf.level,
            )
        return Verdict(True, gpa, "paging", access), leaf

    def slat_check(self, gpa: int, access: Access, user_address: bool) -> Verdict | None:
        """None if SLAT permits ``access`` to ``gpa`` for this VTL, else the refusal."""
        if not 0 <= gpa < self.ram.size:
            return None  # not RAM: no SLAT protection exists there; the bus decides (MMIO)
        rights = self._slat_rights(gpa >> PAGE_SHIFT)
        if access is Access.READ:
            need = R
        elif access is Access.WRITE:
            need = W
        else:
            need = exec_right(user_address, self.mbec, bool(self.state.cr4 & _SMEP))
        if rights & need:
            return None
        return Verdict(False, gpa, "slat", access, gpa=gpa)

    # -- the layer interface ------------------------------------------------------------------
    def translate(self, va: int, access: Access = Access.READ) -> Verdict:
        return self.walk(va, access)[0]
