"""Second-level address translation with per-VTL protections (TLFS "Memory Access Protections").

Protections belong to a *(protecting VTL, GPA page)* pair and restrict every lower VTL
(vsm-spec §3.3).  The effective rights of VTL *n* are host ∩ the protections of every enabled
VTL above *n* (vsm-spec §3.3, D11: the intersection is the natural reading of the TLFS, marked
unverified; it is the only formula implemented here).  The host grants RWX on all RAM, so a VTL
with no enabled VTL above it (VTL1 with two VTLs) is unrestricted: its table is ``None``.

Rights are the HV_MAP_GPA bits R=1, W=2, KX=4, UX=8 (vsm-spec §3.1), one byte per GPA page in
a ``bytearray`` (1 MiB of host memory per 4 GiB of guest RAM).

Execution (vsm-spec §3.2): with MBEC off, KX alone governs execution in both modes and UX is
ignored.  With MBEC on, KX governs fetches from supervisor linear addresses and UX fetches from
user linear addresses (Intel SDM Vol. 3C §29.3.3.2: the execute bit used depends on the U/S of the
linear address) — except that when SMEP is available but disabled, all execution is governed by
KX (TLFS).  The issue's shorthand "KX for CPL0 fetches, UX for CPL3 fetches" coincides with this
whenever SMEP is on, since CPL0 then cannot fetch user pages at all.
"""

from __future__ import annotations

from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import PAGE_SHIFT, Access

R, W, KX, UX = 1, 2, 4, 8
ALL = R | W | KX | UX

#: Rights needed per access kind for a data access.
_NEED = {Access.READ: R, Access.WRITE: W}


def describe(mask: int) -> str:
    """'R', 'RW', 'R+KX', 'R+UX', 'RW+KX+UX', 'none' ..."""
    if not mask & ALL:
        return "none"
    data = ("R" if mask & R else "") + ("W" if mask & W else "")
    execs = [name for bit, name in ((KX, "KX"), (UX, "UX")) if mask & bit]
    return "+".join([data or "-", *execs]) if execs else data


def exec_right(user_address: bool, mbec: bool, smep: bool) -> int:
    """The SLAT right that governs an instruction fetch."""
    if mbec and user_address and smep:
        return UX
    return KX


class Slat:
    """Per-VTL SLAT protections for one partition."""

    def __init__(self, pages: int, vtls: int = 2) -> None:
        self.pages = pages
        self.vtls = vtls
        #: protections[m][gpn]: rights VTL m grants to every VTL below it (None: m not enabled).
        self.protections: list[bytearray | None] = [None] * vtls
        #: effective[n][gpn]: rights of VTL n (None: unrestricted, host RWX on RAM).
        self.effective: list[bytearray | None] = [None] * vtls
        #: incremented on every change; TLBs compare it to drop stale entries.
        self.generation = 0

    def enable_vtl(self, vtl: int, default_mask: int = ALL) -> None:
        """VTL ``vtl`` becomes a protecting VTL; its default mask applies to all pages
        (vsm-spec §3.4: enabling a VTL protects nothing, the default is RWX)."""
        self.protections[vtl] = bytearray([default_mask & ALL]) * self.pages
        self._recompute()

    def protected_by(self, vtl: int) -> bool:
        return self.protections[vtl] is not None

    def set(self, protecting_vtl: int, gpn: int, mask: int) -> None:
        table = self.protections[protecting_vtl]
        if table is None:
            raise ValueError(f"VTL{protecting_vtl} is not enabled")
        table[gpn] = mask & ALL
        for lower in range(protecting_vtl):
            self._recompute_page(lower, gpn)
        self.generation += 1

    def rights(self, vtl: int, gpn: int) -> int:
        table = self.effective[vtl]
        if table is None:
            return ALL
        return table[gpn] if 0 <= gpn < self.pages else 0

    def protection(self, protecting_vtl: int, gpn: int) -> int:
        table = self.protections[protecting_vtl]
        return ALL if table is None else table[gpn]

    def _recompute(self) -> None:
        for lower in range(self.vtls):
            above = [t for t in self.protections[lower + 1 :] if t is not None]
            if not above:
                self.effective[lower] = None
            elif len(above) == 1:
                self.effective[lower] = above[0]  # shared: no copy with a single higher VTL
            else:
                eff = bytearray(above[0])
                for table in above[1:]:
                    eff = bytearray(a & b for a, b in zip(eff, table, strict=True))
                self.effective[lower] = eff
        self.generation += 1

    def _recompute_page(self, lower: int, gpn: int) -> None:
        eff = self.effective[lower]
        above = [t for t in self.protections[lower + 1 :] if t is not None]
        if eff is None or len(above) <= 1:
            return  # aliases the single protecting table
        value = ALL
        for table in above:
            value &= table[gpn]
        eff[gpn] = value


class SlatLayer:
    """SLAT(vtl) over RAM: translates GPA → GPA, refusing what VTL ``vtl`` may not do."""

    __slots__ = ("ram_size", "slat", "vtl")

    def __init__(self, slat: Slat, vtl: int, ram_size: int) -> None:
        self.slat = slat
        self.vtl = vtl
        self.ram_size = ram_size

    def translate(
        self,
        gpa: int,
        access: Access,
        *,
        user_address: bool = False,
        mbec: bool = False,
        smep: bool = True,
    ) -> Verdict:
        if not 0 <= gpa < self.ram_size:
            return Verdict(False, gpa, "ram.unbacked", access)
        rights = self.slat.rights(self.vtl, gpa >> PAGE_SHIFT)
        need = _NEED.get(access) or exec_right(user_address, mbec, smep)
        if rights & need:
            return Verdict(True, gpa, "slat", access)
        return Verdict(False, gpa, "slat", access)
