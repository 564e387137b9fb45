"""HVPT: the Secure Kernel's side of hypervisor-enforced paging translation (vbs-internals §5.6).

HVCI and KDP protect guest-*physical* pages; NT's page tables, which map virtual addresses to
them, stay writable by VTL0 ring 0.  A K0 attacker can therefore remap a KDP-protected virtual
address to a writable page it controls (vbs-internals §6 A5).  With ``policy.hvpt`` the Secure
Kernel builds HLAT paging structures (Intel VT-rp, modelled in :mod:`vbsim.hw.hlat`) in frames
that VTL0 may read (the processor's walk needs that) but never write, and programs every VP's VTL0
HLAT root.  Addresses it registers — NT's code range at phase 1, every KDP-protected page when it
is protected — are translated by those tables; everything else restarts with NT's own tables.

The SK reads NT's page tables itself (VTL0 CR3 obtained with HvCallGetVpRegisters, entries read
through the SK's direct map), as it reads any VTL0 memory; translations it registers are the ones
NT had when it asked for protection.

How it asks the hypervisor — the published hvdef surface (OpenVMM ``vm/hv1/hvdef``; issue 11
item 8), not an invented one: HVPT runs only if ``HvRegisterVsmCapabilities
.hardware_hvpt_available`` is reported and covers the kernel half (``hardware_hvpt_range_bits``
≥ 47) and the loader enabled VTL1 with ``EnablePartitionVtlFlags.enable_hardware_hvpt``; each VP
gets ``HvRegisterVsmVpSecureVtlConfig.hardware_hvpt_enabled`` for VTL0
(:func:`secure_config_bits`, set with MBEC's bit at processor start, and again before the HLAT
root is given to a VP); the HLAT table frames are protected R + ``paging_writability`` (the CPU's
own walk may set A/D there, VTL0 may not write) and every pinned KDP page gets
``verify_paging_writability``.  The model's SLAT keeps R/W/KX/UX only, so those two flags are
accepted and passed on but change no access (HLAT entries are built with A/D preset instead).
Only the HLAT root and prefix size go through the model's stand-in register
(:data:`HV_REGISTER_MODEL_HLAT_CONTROL`, see :mod:`vbsim.hw.hlat`): hvdef names no register
for them.

Every decision is a trace event of kind ``hvpt``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vbsim.guest import hvcall
from vbsim.guest.address_space import CODE_BASE
from vbsim.hv import defs
from vbsim.hv.defs import HvMapGpaFlags, HvRegisterName
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.ntstatus import BugCheck
from vbsim.sk.layouts import Config, HvptRecords, Mem, read_field, write_field

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

EXT = "hvpt"
#: The HLAT interface as the SK programs it (the same numbers the platform implements in
#: ``vbsim.hw.hlat``; tests/kdp_hvpt check they agree).  Bit 11 of an HLAT paging-structure entry:
#: restart the translation with ordinary paging (Intel SDM vol. 3C, HLAT).
RESTART = 1 << 11
#: MODEL STAND-IN for VMCS HLATP / prefix size, the one part hvdef does not name (see hw.hlat);
#: HVPT itself is enabled through hvdef's hardware_hvpt_enabled bit.
HV_REGISTER_MODEL_HLAT_CONTROL = 0x000D_F000
#: Control layout (model): bit 0 enable, bits 6:1 prefix size, bits 51:12 HLATP.
CONTROL_ENABLE = 1 << 0
CONTROL_PREFIX_SHIFT = 1
R = int(HvMapGpaFlags.READABLE)
#: hvdef HvMapGpaFlags bits 5 and 6 (vsm-spec §3.1).
PAGING_WRITABILITY = int(HvMapGpaFlags.PAGING_WRITABILITY)
VERIFY_PAGING_WRITABILITY = int(HvMapGpaFlags.VERIFY_PAGING_WRITABILITY)
#: The VA bits the SK's protected range needs: the canonical kernel half of 48-bit paging.
NEEDED_RANGE_BITS = 47
#: Prefix size 1: HLAT covers the kernel half (bit 63 set), as the SDM's enumerated maximum.
PREFIX_SIZE = 1
#: At most this many NT code pages are registered at phase 1 (a bound on the loop, not a limit
#: any model kernel reaches).
MAX_CODE_PAGES = 4096

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
_RESTART_ENTRY = _P | RESTART
#: Non-leaf HLAT entries are permissive (the leaf decides), with A preset (see vbsim.hw.hlat).
_TABLE_ENTRY = _P | _RW | _US | _A
_LEVEL_SHIFTS = (39, 30, 21, 12)


@dataclass(frozen=True, slots=True)
class Mapping:
    """A VTL0 translation as the SK reads it: the 4 KiB GPA page of the address and its rights."""

    gpa: int
    writable: bool
    user: bool
    nx: bool
    leaf: int  # the leaf entry's value
    pinned: bool  # translated by the SK's HLAT tables


@dataclass
class HvptState:
    """Where HVPT's structures are.  Every value HVPT decides from is in SK memory: the records
    page (``layouts.HvptRecords``: the HLAT root the SK programmed, which VPs it enabled, the
    pinned ranges) and the HLAT tables themselves (whether a page is pinned).  ``root`` is the
    value the SK wrote into HLATP (a register, as a kernel knows its own CR3; 0 before phase 1)
    and ``table_pfns`` the frames it took for the tables, root first: both for host tools (the
    report, the soak's targets); no SK decision reads them."""

    records_va: int
    records_gpa: int
    root: int = 0
    table_pfns: list[int] = field(default_factory=list)


def allocate(sk: SecureKernel) -> None:
    """Loader: the records page (zero: HVPT not running until phase 1 sets the root)."""
    va, gpa = sk.builder().alloc_data(1)
    sk.hvpt = HvptState(va, gpa)


def state(sk: SecureKernel) -> HvptState | None:
    """HVPT's addresses once phase 1 built the HLAT root (host tools; the SK reads
    :func:`root` from its records)."""
    value = sk.hvpt
    return value if isinstance(value, HvptState) and value.root else None


def _records(sk: SecureKernel) -> HvptState | None:
    value = sk.hvpt
    return value if isinstance(value, HvptState) else None


def root(sk: SecureKernel, vp: Mem) -> int:
    """The HLAT root as the SK's records hold it now; 0: HVPT is not running."""
    st = _records(sk)
    return read_field(vp, st.records_va, HvptRecords.ROOT) & PTE_ADDR_MASK if st else 0


def _phys(sk: SecureKernel, gpa: int) -> int:
    return sk.space.phys_va(gpa)


def _new_table(sk: SecureKernel, vp: Cpu, st: HvptState | None) -> int:
    """A frame for HLAT structures: SK-owned, every entry "restart", VTL0 read-only in SLAT."""
    pfn = sk.alloc_frame(vp)  # the SK's own pool (marks it the SK's)
    vp.write(_phys(sk, pfn << PAGE_SHIFT), _RESTART_ENTRY.to_bytes(8, "little") * 512)
    # hvdef paging_writability: the processor's paging walk may write here; VTL0 software not.
    if not sk.set_vtl0_rights(vp, [pfn], R | PAGING_WRITABILITY):
        sk.bugcheck(vp, BugCheck.SECURE_KERNEL_ERROR, 0x40, pfn)
    if st is not None:
        st.table_pfns.append(pfn)
    return pfn


def vtl0_cr3(sk: SecureKernel, vp: Cpu) -> int:
    result, values = hvcall.get_vp_registers(vp, sk.params, [int(HvRegisterName.CR3)], 0)
    return values[0] & PTE_ADDR_MASK if result.ok and values else 0


def _walk(
    sk: SecureKernel, vp: Cpu, root: int, va: int, restartable: bool
) -> Mapping | bool | None:
    """Read a 4-level walk for ``va`` from ``root``; True means "an entry said restart"."""
    table = root
    rw_us = _RW | _US
    nx = 0
    limit = sk.ram_pages(vp) << PAGE_SHIFT
    for shift in _LEVEL_SHIFTS:
        entry_gpa = table + (((va >> shift) & 0x1FF) << 3)
        if entry_gpa + 8 > limit:
            return None
        value = vp.read_u64(_phys(sk, entry_gpa))
        if not value & _P:
            return None
        if restartable and value & RESTART:
            return True
        rw_us &= value
        nx |= value & _NX
        if shift == 12 or (shift in (30, 21) and value & _PS):
            mask = (1 << shift) - 1
            gpa = ((value & PTE_ADDR_MASK & ~mask) | (va & mask)) & ~PAGE_MASK
            return Mapping(gpa, bool(rw_us & _RW), bool(rw_us & _US), bool(nx), value, restartable)
        table = value & PTE_ADDR_MASK
    return None  # pragma: no cover - the PTE level always ends the loop


def translate(sk: SecureKernel, vp: Cpu, va: int, cr3: int | None = None) -> Mapping | None:
    """VTL0's effective translation of ``va`` (HLAT first when it covers ``va``, as the CPU);
    ``cr3`` is VTL0's, when the caller already read it."""
    va &= 0xFFFF_FFFF_FFFF_FFFF
    if not (va < 1 << 47 or va >= 0xFFFF_8000_0000_0000):
        return None
    hlat = root(sk, vp) if va >> 63 else 0
    if hlat:
        found = _walk(sk, vp, hlat, va, restartable=True)
        if found is not True:
            return found if isinstance(found, Mapping) else None
    found = _walk(sk, vp, vtl0_cr3(sk, vp) if cr3 is None else cr3, va, restartable=False)
    return found if isinstance(found, Mapping) else None


def available(sk: SecureKernel, vp: Cpu) -> bool:
    """HvRegisterVsmCapabilities reports hardware HVPT wide enough for the kernel half (hvdef
    ``hardware_hvpt_available``, ``hardware_hvpt_range_bits``)."""
    result, values = hvcall.get_vp_registers(vp, sk.params, [int(HvRegisterName.VSM_CAPABILITIES)])
    if not result.ok or not values:
        return False
    caps = values[0]
    return bool(defs.CAP_HW_HVPT_AVAILABLE.extract(caps)) and (
        defs.CAP_HW_HVPT_RANGE_BITS.extract(caps) >= NEEDED_RANGE_BITS
    )


def secure_config_bits(sk: SecureKernel, vp: Cpu) -> int:
    """The HvRegisterVsmVpSecureConfigVtl0 bits HVPT needs on this processor: hvdef's
    ``hardware_hvpt_enabled`` when the policy asks for HVPT and the hypervisor offers it."""
    if not sk.config(vp, Config.HVPT) or not available(sk, vp):
        return 0
    return int(defs.SECCFG_HW_HVPT_ENABLED.mask)


def _enable_on(sk: SecureKernel, vp: Cpu, index: int) -> bool:
    """Set hardware_hvpt_enabled in VP ``index``'s VTL0 secure config (read, OR, write back)."""
    name = int(HvRegisterName.VSM_VP_SECURE_CONFIG_VTL0)
    result, values = hvcall.get_vp_registers(vp, sk.params, [name], vp_index=index)
    if not result.ok or not values:
        return False
    value = values[0] | int(defs.SECCFG_HW_HVPT_ENABLED.mask)
    return hvcall.set_vp_registers(vp, sk.params, [(name, value)], vp_index=index).ok


def _reload(sk: SecureKernel, vp: Cpu, st: HvptState) -> bool:
    """(Re)program HLAT on every VP's VTL0; the hypervisor drops their VTL0 TLBs.  Which VPs
    already carry hardware_hvpt_enabled is the records' ENABLED bitmap, read now."""
    control = CONTROL_ENABLE | PREFIX_SIZE << CONTROL_PREFIX_SHIFT | root(sk, vp)
    enabled = read_field(vp, st.records_va, HvptRecords.ENABLED)
    ok = True
    # One hypercall per VP that names it (HvCallSetVpRegisters' VpIndex, vsm-spec §4): the
    # hypervisor does the per-VP work; the SK never touches another processor.
    for index in range(sk.config(vp, Config.VPS)):
        if index >= 64 or not enabled >> index & 1:
            if not _enable_on(sk, vp, index):
                ok = False
                continue
            enabled |= (1 << index) if index < 64 else 0
            write_field(vp, st.records_va, HvptRecords.ENABLED, enabled)
        result = hvcall.set_vp_registers(
            vp,
            sk.params,
            [(HV_REGISTER_MODEL_HLAT_CONTROL, control)],
            target_vtl=0,
            vp_index=index,
        )
        ok = ok and result.ok
    return ok


def _pin_one(sk: SecureKernel, vp: Cpu, st: HvptState, va: int, m: Mapping) -> None:
    table = root(sk, vp)
    for shift in _LEVEL_SHIFTS[:3]:
        entry = _phys(sk, table + (((va >> shift) & 0x1FF) << 3))
        value = vp.read_u64(entry)
        if value & _P and not value & RESTART:
            table = value & PTE_ADDR_MASK
            continue
        child = _new_table(sk, vp, st) << PAGE_SHIFT
        vp.write_u64(entry, child | _TABLE_ENTRY)
        table = child
    # The leaf carries NT's *effective* rights (combined over its levels); A and D are preset.
    leaf = m.gpa | (m.leaf & _G) | _P | _A | _D
    if m.user:
        leaf |= _US
    if m.writable:
        leaf |= _RW
    if m.nx:
        leaf |= _NX
    vp.write_u64(_phys(sk, table + (((va >> 12) & 0x1FF) << 3)), leaf)


def _record_range(vp: Mem, st: HvptState, first: int, end: int, label: str) -> None:
    """A range record for reports (a ring of ``HvptRecords.MAX``; COUNT counts them all)."""
    count = read_field(vp, st.records_va, HvptRecords.COUNT)
    record = st.records_va + HvptRecords.RANGES + (count % HvptRecords.MAX) * HvptRecords.RANGE
    name = label.encode("ascii", "replace")[: HvptRecords.LABEL.size - 1]
    vp.write(record, _RANGE.pack(first, end, name))
    write_field(vp, st.records_va, HvptRecords.COUNT, count + 1)


_RANGE = struct.Struct("<QQ16s")  # HvptRecords range: first, end, label
assert _RANGE.size == HvptRecords.RANGE and HvptRecords.LABEL.offset == 0x10


def pin(
    sk: SecureKernel,
    vp: Cpu,
    pages: list[tuple[int, Mapping]],
    label: str,
    rights: int | None = None,
) -> bool:
    """Fix ``va → mapping`` for each (page VA, mapping) in the HLAT tables.  False when HVPT is
    not running (nothing is pinned).  With ``rights`` (the VTL0 rights the caller just gave the
    pages), their protection is re-issued with hvdef's ``verify_paging_writability``: the pages
    are to be reached only through paging structures marked ``paging_writability``."""
    st = _records(sk)
    if st is None or not pages or not root(sk, vp):
        return False
    for va, mapping in pages:
        _pin_one(sk, vp, st, va & ~PAGE_MASK, mapping)
    if rights is not None:
        gpns = [m.gpa >> PAGE_SHIFT for _, m in pages]
        sk.set_vtl0_rights(vp, gpns, rights | VERIFY_PAGING_WRITABILITY)
    first = pages[0][0] & ~PAGE_MASK
    last = (pages[-1][0] & ~PAGE_MASK) + PAGE_SIZE
    _record_range(vp, st, first, last, label)
    ok = _reload(sk, vp, st)
    sk.emit(
        vp,
        "hvpt",
        "hvpt",
        "pinned" if ok else "reload-failed",
        label=label,
        va=first,
        pages=len(pages),
        gpas=[m.gpa for _, m in pages],
    )
    return ok


def setup(sk: SecureKernel, vp: Cpu) -> None:
    """Phase-1 hook: build the HLAT root, pin NT's code range, enable HLAT on every VP."""
    if not sk.config(vp, Config.HVPT):
        return
    if not available(sk, vp):
        sk.emit(vp, "hvpt", "hvpt", "unavailable", reason="hardware_hvpt_available")
        return
    st = _records(sk)
    if st is None:
        return
    hlat = _new_table(sk, vp, st) << PAGE_SHIFT
    write_field(vp, st.records_va, HvptRecords.ROOT, hlat)
    st.root = hlat  # what HLATP is about to hold (for host tools)
    code: list[tuple[int, Mapping]] = []
    cr3 = vtl0_cr3(sk, vp)
    for i in range(MAX_CODE_PAGES):
        va = CODE_BASE + i * PAGE_SIZE
        found = _walk(sk, vp, cr3, va, restartable=False) if cr3 else None
        if not isinstance(found, Mapping):
            break
        code.append((va, found))
    if code:
        pin(sk, vp, code, "nt.code")
    else:
        _reload(sk, vp, st)
    sk.emit(vp, "hvpt", "hvpt", "enabled", root=hlat, code_pages=len(code))


def is_pinned(sk: SecureKernel, vp: Cpu, va: int) -> bool:
    """Whether the SK's HLAT tables pin the page of ``va``: a walk of the tables as they stand
    in SK memory now (a leaf that is present and not "restart")."""
    hlat = root(sk, vp)
    if not hlat or not va >> 63:
        return False
    return isinstance(_walk(sk, vp, hlat, va, restartable=True), Mapping)


# -- host side: tools standing outside the machine read the same bytes from RAM ----------------
class _Ram(Protocol):
    def read(self, gpa: int, length: int, /) -> bytes: ...


def host_root(ram: _Ram, sk: SecureKernel) -> int:
    st = _records(sk)
    if st is None:
        return 0
    raw = ram.read(st.records_gpa + HvptRecords.ROOT.offset, HvptRecords.ROOT.size)
    return int.from_bytes(raw, "little") & PTE_ADDR_MASK


def host_pinned(ram: _Ram, sk: SecureKernel, va: int) -> int | None:
    """The GPA page the HLAT tables in RAM pin ``va``'s page to; None: not pinned."""
    table = host_root(ram, sk)
    limit = sk.loader_ram_pages << PAGE_SHIFT
    if not table or not va >> 63:
        return None
    for shift in _LEVEL_SHIFTS:
        entry_gpa = table + (((va >> shift) & 0x1FF) << 3)
        if entry_gpa + 8 > limit:
            return None
        value = int.from_bytes(ram.read(entry_gpa, 8), "little")
        if not value & _P or value & RESTART:
            return None
        if shift == 12 or (shift in (30, 21) and value & _PS):
            mask = (1 << shift) - 1
            return ((value & PTE_ADDR_MASK & ~mask) | (va & mask)) >> PAGE_SHIFT
        table = value & PTE_ADDR_MASK
    return None  # pragma: no cover - the PTE level always ends the loop


def host_ranges(ram: _Ram, sk: SecureKernel) -> list[tuple[int, int, str]]:
    """(first VA, end VA, label) of the pinned ranges the records still hold, oldest first."""
    st = _records(sk)
    if st is None:
        return []
    raw = ram.read(st.records_gpa, PAGE_SIZE)
    count = int.from_bytes(raw[HvptRecords.COUNT.offset : HvptRecords.COUNT.offset + 4], "little")
    kept = min(count, HvptRecords.MAX)
    out: list[tuple[int, int, str]] = []
    for n in range(count - kept, count):
        offset = HvptRecords.RANGES + (n % HvptRecords.MAX) * HvptRecords.RANGE
        first, end, label = _RANGE.unpack_from(raw, offset)
        out.append((first, end, label.split(b"\0", 1)[0].decode("ascii", "replace")))
    return out
