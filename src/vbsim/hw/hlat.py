"""HLAT: hypervisor-managed linear-address translation (Intel VT-rp), the hardware under HVPT.

vbs-internals §5.6: HVPT protects *virtual* addresses with Intel's HLAT.  What the processor does
(Intel SDM Vol. 3A, "HLAT paging", as reproduced in public notes on the SDM and in Tanda's
VT-rp posts; vbs-internals cites Tanda-VTrp):

- the VMCS of a VTL holds an *HLAT pointer* (HLATP, the GPA of a PML4 in the same format as CR3)
  and an *HLAT prefix size*; with the "enable HLAT" control set, a linear address in the
  *protected linear range* is translated starting from HLATP instead of CR3.  Prefix size 0: every
  address; prefix size 1 (the only other value processors enumerate): addresses with bit 63 set,
  i.e. the kernel half;
- HLAT paging structures have the ordinary entry format; an entry with **bit 11 set** (and P=1)
  *restarts* the translation with ordinary paging from CR3 — the whole address again, and only the
  ordinary entries' access rights apply.  So the Secure Kernel's HLAT tables map exactly the
  pages it protects, and mark everything else "restart";
- the HLAT walk reads its paging structures through EPT like any walk (it needs read rights;
  the EPT "paging-write" bit lets the CPU set A/D bits in pages software may not write).  The
  model's SLAT has no paging-write bit (its rights byte is R/W/KX/UX), so the Secure Kernel
  builds its HLAT entries with A and D already set: the walk never needs to write them, and VTL0
  gets read-only rights on the HLAT frames.

Guest page-table edits by VTL0 therefore change nothing for a protected address: the walk never
reads them.  The hook in :meth:`vbsim.hw.paging.PagingLayer.walk` costs one attribute test when
HLAT is off.

Programming interface.  HVPT is switched on through the published hvdef surface (OpenVMM
``vm/hv1/hvdef``): the capability ``HvRegisterVsmCapabilities.hardware_hvpt_available`` (with
``hardware_hvpt_range_bits``), ``EnablePartitionVtlFlags.enable_hardware_hvpt`` when VTL1 is
enabled, and per VP ``HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled`` for the protected
VTL; the GPA flags ``paging_writability`` / ``verify_paging_writability`` mark the HLAT tables
and the pages they protect.  What hvdef names nowhere is where the HLAT paging structures are
(the VMCS HLATP at encoding 0x2040 and the prefix size at 0x0006): only for that the model keeps
**a stand-in**, :data:`HV_REGISTER_MODEL_HLAT_CONTROL`, set with HvCallSetVpRegisters by a
*higher* VTL for a lower VTL of any VP, and accepted only while that VP's
``hardware_hvpt_enabled`` is set for the lower VTL (clearing the bit turns HLAT off). Writing it
(even with the same value) drops that VP's TLB for the target VTL, as a hypervisor does after
changing HLATP (INVVPID): the Secure Kernel rewrites it after editing its HLAT tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_MASK, PTE_ADDR_MASK, Access, Pte

if TYPE_CHECKING:
    from vbsim.hv.calls.registers import Access as RegisterAccess
    from vbsim.hv.defs import HvStatus
    from vbsim.hw.paging import Leaf, PagingLayer
    from vbsim.hw.translation import Verdict

#: Bit 11 of an HLAT paging-structure entry: restart the translation with ordinary paging (SDM).
RESTART = 1 << 11
#: MODEL STAND-IN for VMCS HLATP / HLAT prefix size / "enable HLAT" (not a TLFS register name;
#: chosen inside the VSM register block 0x000Dxxxx, far from the documented ones).
HV_REGISTER_MODEL_HLAT_CONTROL = 0x000D_F000
#: Register layout (model): bit 0 enable, bits 6:1 prefix size, bits 51:12 HLATP.
CONTROL_ENABLE = 1 << 0
CONTROL_PREFIX_SHIFT = 1
CONTROL_PREFIX_MASK = 0x3F << CONTROL_PREFIX_SHIFT
CONTROL_ROOT_MASK = PTE_ADDR_MASK
CONTROL_RESERVED = ~(CONTROL_ENABLE | CONTROL_PREFIX_MASK | CONTROL_ROOT_MASK) & ((1 << 64) - 1)
#: IA32_VMX_EPT_VPID_CAP[53:48], the maximum HLAT prefix size processors enumerate (SDM).
MAX_PREFIX_SIZE = 1

_P = int(Pte.P)
_PS = int(Pte.PS)
#: (shift, may map a large page, is the PTE level) per level, PML4E first (SDM table 4-14).
_LEVELS = ((39, False, False), (30, True, False), (21, True, False), (12, False, True))


class Hlat:
    """The HLAT state of one (VP, VTL): its HLATP and prefix size ("enable HLAT" = present)."""

    __slots__ = ("prefix_size", "root")

    def __init__(self, root: int, prefix_size: int = 1) -> None:
        self.root = root & CONTROL_ROOT_MASK
        self.prefix_size = prefix_size

    def covers(self, va: int) -> bool:
        """Whether ``va`` is in the protected linear range (SDM: prefix 0 = all, else bit 63)."""
        return self.prefix_size == 0 or bool(va >> 63)

    def control(self) -> int:
        return CONTROL_ENABLE | (self.prefix_size << CONTROL_PREFIX_SHIFT) | self.root

    def walk(
        self, layer: PagingLayer, va: int, access: Access, implicit: bool, update_ad: bool
    ) -> tuple[Verdict, Leaf | None]:
        """Translate a protected-range address: HLAT paging, or ordinary paging on a restart.

        First the HLAT path is followed (each entry read through SLAT, as the real walk does) to
        learn whether an entry restarts the translation; then the ordinary walker runs from the
        root that applies, so rights, faults and A/D handling are exactly those of paging."""
        mm = layer.ram.mm
        size = layer.ram.size
        slat = layer.slat
        eff = None if slat is None else slat.effective[layer.vtl]
        table = self.root
        for shift, large_ok, is_pte in _LEVELS:
            entry_gpa = table + (((va >> shift) & 0x1FF) << 3)
            if entry_gpa + 8 > size or (eff is not None and not eff[entry_gpa >> 12] & 1):
                break  # the full walk below reports the refusal (all-ones / slat.walk)
            value = int.from_bytes(mm[entry_gpa : entry_gpa + 8], "little")
            if not value & _P:
                break  # no translation: #PF, no restart (SDM)
            if value & RESTART:
                return layer.walk(va, access, implicit, update_ad, root=layer.state.cr3)
            if is_pte or (large_ok and value & _PS):
                break
            table = value & PTE_ADDR_MASK
        verdict, leaf = layer.walk(va, access, implicit, update_ad, root=self.root)
        if verdict.ok:
            verdict.mechanism = "hvpt"  # the translation the Secure Kernel enforces
        return verdict, leaf


def decode_control(value: int) -> Hlat | None:
    """The HLAT state a control value asks for (None: HLAT disabled).  Validity is checked by
    :func:`set_control`."""
    if not value & CONTROL_ENABLE:
        return None
    prefix = (value & CONTROL_PREFIX_MASK) >> CONTROL_PREFIX_SHIFT
    return Hlat(value & CONTROL_ROOT_MASK, prefix)


# -- the hypervisor's side: the synthetic register (see the module docstring) -------------------
def hvpt_enabled(a: RegisterAccess, vtl: int) -> bool:
    """Whether the caller set ``hardware_hvpt_enabled`` in this VP's secure config for ``vtl``."""
    from vbsim.hv.defs import SECCFG_HW_HVPT_ENABLED

    config = a.hv.states[a.vp.index][a.caller_vtl].secure_config.get(vtl, 0)
    return bool(SECCFG_HW_HVPT_ENABLED.extract(config))


def get_control(a: RegisterAccess) -> int | HvStatus:
    from vbsim.hv.defs import HvStatus

    if a.caller_vtl <= a.vtl:
        return HvStatus.ACCESS_DENIED
    layer = a.vp.layers[a.vtl]
    hlat = None if layer is None else layer.hlat
    return 0 if hlat is None else hlat.control()


def set_control(a: RegisterAccess, value: int) -> HvStatus:
    """Only a higher VTL programs a lower VTL's HLAT (VTL0 can never turn its own HLAT off)."""
    from vbsim.hv.defs import HvStatus

    if a.caller_vtl <= a.vtl:
        return HvStatus.ACCESS_DENIED
    layer = a.vp.layers[a.vtl]
    if layer is None:
        return HvStatus.INVALID_VTL_STATE
    if value >> 64 or value & CONTROL_RESERVED:
        return HvStatus.INVALID_REGISTER_VALUE
    hlat = decode_control(value)
    if hlat is not None and (
        hlat.prefix_size > MAX_PREFIX_SIZE or hlat.root + PAGE_MASK >= a.hv.ram.size
    ):
        return HvStatus.INVALID_REGISTER_VALUE
    if hlat is not None and not hvpt_enabled(a, a.vtl):
        # hvdef HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled is the switch; the model's
        # register only says where the tables are.
        return HvStatus.INVALID_VTL_STATE
    layer.hlat = hlat
    a.vp.tlbs[a.vtl].flush_all()
    if a.hv.trace.on:
        a.vp.emit(
            "hvpt",
            "hlat",
            "enabled" if hlat is not None else "disabled",
            target_vtl=a.vtl,
            target_vp=a.vp.index,
            root=0 if hlat is None else hlat.root,
            prefix_size=0 if hlat is None else hlat.prefix_size,
        )
    return HvStatus.SUCCESS
