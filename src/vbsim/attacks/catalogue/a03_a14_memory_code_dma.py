"""A3, A5, A6, A8, A9, A13, A14: kernel code, kernel data, secure-call parameters, VTL1 ring 0 and
DMA (vbs-internals §5.1, §5.2, §5.5, §5.6, §6).

Every goal is read from the machine after the attack, never from what the attacker reports:

- *code ran*: the attacker's routine, when a processor executes it, is seen by a debugger's
  breakpoint on it (``payload_routine(..., breakpoint=True)``): the processor that fetches its
  code records its VTL and CPL (``Trace.executions``, read by
  :func:`~vbsim.attacks.catalogue.a15_a20_boot_and_trustlets.runs`);
- *data changed*: what a VTL0 reader of a kernel variable gets is the processor's own translation
  of its address — through NT's page tables, or HLAT's when HVPT pins it (:func:`reads_as`) —
  applied to RAM;
- *Secure Kernel / VTL1 memory changed or read*: RAM at the GPA (host side), and the attacker's
  loot page or its device's buffer.

Capabilities.  K0 acts either through the vulnerable signed driver's READ8/WRITE8 IOCTLs from an
administrator's process (A3, A6: what a real attacker with admin rights does), or as VTL0 ring-0
code (``ctx.kernel``) that edits NT's page tables, calls NT's ``Vsl*`` stubs with crafted arguments,
hooks NT's normal-call dispatch, or programs a device (A5, A8, A9, A14).  PHYS is a hot-plugged
bus master with no driver.  K1 is code in VTL1 ring 0 (the Secure Kernel compromised).

Stand-ins (the model has no file system and no symbol server): the attacker's unsigned
``rootkit.sys`` is put in NT's driver store as an administrator copies a file to disk; kernel
addresses (``g_CiOptions``, a driver's data section, the SK's key page, LsaIso's table) come from a
host-side lookup, as symbols or a memory scan give them to a real attacker.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import (
    needs_credential_guard,
    needs_vbs,
    nt_of,
    runs,
    trustlets,
)
from vbsim.attacks.context import AttackContext, payload_routine
from vbsim.attacks.goals import loot_contains, vtl0_rights
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.guest import hvcall
from vbsim.guest.address_space import CODE_BASE, DIRECT_MAP
from vbsim.guest.nic import driver_transfer
from vbsim.hv.defs import HvMapGpaFlags
from vbsim.hw.code import THUNK_SIZE, encode_thunk
from vbsim.hw.cpu import Cpu
from vbsim.hw.dma import DEFAULT_BASE, DIR_FROM_MEMORY, DIR_TO_MEMORY, STATUS_NAMES, DmaDevice
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Access, Pte
from vbsim.image import ImageKind, build_image
from vbsim.ium.lsaiso import TABLE_VA
from vbsim.nt import drivers
from vbsim.nt import kdp as ntkdp
from vbsim.nt.drivers import IOCTL_WRITE8, VULNERABLE_DRIVER, nt_allocate_executable
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import SE_CI_CALLBACKS, mdl_bytes
from vbsim.nt.lsass import nt_owf
from vbsim.nt.syscalls import syscall
from vbsim.nt.vsl import FIELDS_OFFSET
from vbsim.ntstatus import NtStatus
from vbsim.policy import Policy
from vbsim.sk.layouts import Hvci as SkHvci
from vbsim.sk.services.allocation import MDL_BYTECOUNT_OFFSET, NORMAL_GET_PHYSICAL_PAGES
from vbsim.sk.sscn import Service, ServiceTable

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
#: Blocked wherever VBS runs; meaningless without it.
VBS_BLOCKS = {"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B}
#: Only the legacy preset's Secure Kernel (before the 2019-2020 fixes) has the bug.
ONLY_LEGACY = {"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": S}
#: Stopped by HVCI: succeeds on every preset without it (legacy-2019 has no HVCI either).
HVCI_BLOCKS = {"vbs-off": S, "vbs": S, "vbs-hvci": B, "hardened": B, "legacy-2019": S}

#: Unused kernel VA where a K0 attacker maps pages of its own.
WINDOW_VA = 0xFFFF_F8A1_0000_0000
#: Offsets in the attacker's user buffer: a driver name, then the 16-byte IOCTL buffer.
NAME_AT, IOCTL_AT = 0, 512


def _nt(ctx: AttackContext) -> NtKernel:
    nt = ctx.booted.nt
    assert nt is not None
    return nt


def needs_kdp(policy: Policy) -> bool:
    """KDP runs (a protected variable exists to be bypassed): wherever VBS runs on a build that
    has KDP — it needs VBS, not HVCI (MS Learn, MmProtectDriverSection; MS-KDP 2020)."""
    return policy.vbs and policy.kdp


# -- host-side views ---------------------------------------------------------------------------
def reads_as(ctx: AttackContext, va: int, length: int = 8) -> bytes | None:
    """What any VTL0 ring-0 reader of ``va`` gets now: the processor's own VTL0 translation
    (NT's tables, or HLAT's for an HVPT-pinned page — nothing cached, no A/D update) applied
    to RAM.  None if the address does not translate."""
    machine = ctx.system.machine if ctx.system else None
    if machine is None:
        return None
    layer = machine.bsp.layers[0]
    assert layer is not None
    cpl = layer.state.cpl
    layer.state.cpl = 0  # a kernel reader, whatever mode the VP was left in
    try:
        verdict, _ = layer.walk(va, Access.READ, update_ad=False)
    finally:
        layer.state.cpl = cpl
    if not verdict.ok:
        return None
    return machine.ram.read(verdict.address, length)


def host_lookup(ctx: AttackContext, root: int, va: int) -> int | None:
    """The leaf entry for ``va`` in the page tables at ``root``, walked in RAM (host side: a walk
    through the VP would be an access by the VP's current VTL)."""
    machine = ctx.booted.machine
    assert machine is not None
    ram = machine.ram
    return PageTables(PhysAccess(ram.read_u64, lambda gpa, value: None, lambda: 0), root).lookup(va)


def sk_data_gpa(ctx: AttackContext, va: int) -> int:
    """The GPA behind a Secure Kernel VA (what the SK's own page tables say)."""
    sk = ctx.booted.sk
    assert sk is not None
    leaf = host_lookup(ctx, sk.space.root, va)
    assert leaf is not None
    return (leaf & PTE_ADDR_MASK) | (va & (PAGE_SIZE - 1))


def sk_key_page(ctx: AttackContext) -> tuple[int, bytes]:
    """The GPA of the Secure Kernel's VSM master keys and their bytes (host view)."""
    sk = ctx.booted.sk
    machine = ctx.booted.machine
    assert sk is not None and machine is not None
    gpa = sk_data_gpa(ctx, sk.keys_va)
    return gpa, machine.ram.read(gpa, 96)


def _ram(ctx: AttackContext, gpa: int, length: int) -> bytes:
    machine = ctx.system.machine if ctx.system else None
    return b"" if machine is None else machine.ram.read(gpa, length)


# -- an administrator's K0 primitive: the vulnerable signed driver -------------------------------
def _load(cpu: Cpu, buffer: int, name: str) -> int:
    raw = name.encode()
    cpu.write(buffer + NAME_AT, raw)
    return syscall(cpu, "NtLoadDriver", buffer + NAME_AT, len(raw))


def _write8(cpu: Cpu, buffer: int, address: int, value: int) -> int:
    """DeviceIoControl(vulnerable driver, WRITE8, {address, value}): an 8-byte store at CPL0."""
    raw = VULNERABLE_DRIVER.encode()
    cpu.write(buffer + NAME_AT, raw)
    cpu.write(buffer + IOCTL_AT, address.to_bytes(8, "little") + value.to_bytes(8, "little"))
    return syscall(
        cpu, "NtDeviceIoControlFile", buffer + NAME_AT, len(raw), IOCTL_WRITE8, buffer + IOCTL_AT
    )


def _admin_write(cpu: Cpu, buffer: int, address: int, value: int) -> list[int]:
    """A0 at CPL3: load the vulnerable signed driver (SeLoadDriverPrivilege), then WRITE8."""
    return [_load(cpu, buffer, VULNERABLE_DRIVER), _write8(cpu, buffer, address, value)]


def _as_admin(ctx: AttackContext, payload: Any, *args: Any) -> Any:
    process = ctx.process(admin=True, name="exploit.exe")
    buffer = ctx.user_buffer(process)
    return ctx.user(payload, buffer, *args, process=process)


def _statuses(values: Any) -> list[str]:
    if not isinstance(values, list):
        return [str(values)]
    return [NtStatus.name_of(v) if isinstance(v, int) else str(v) for v in values]


# -- A3: unsigned kernel code (DSE disabled) -----------------------------------------------------
ROOTKIT = "rootkit.sys"


def _rootkit_entry(cpu: Cpu, driver_object: int) -> int:
    """The unsigned driver's DriverEntry: if any processor ever executes it, its breakpoint
    records that."""
    return int(NtStatus.SUCCESS)


ROOTKIT_ENTRY = payload_routine(_rootkit_entry, breakpoint=True)


@functools.lru_cache(maxsize=1)
def rootkit_image() -> bytes:
    """A well-formed driver image with no signature at all."""
    return build_image(ImageKind.DRIVER, ROOTKIT, "DriverEntry", {"DriverEntry": ROOTKIT_ENTRY})


def _disable_dse_and_load(cpu: Cpu, buffer: int, callback: int, always_ok: int) -> list[int]:
    """A0 at CPL3: the DSE-disable recipe for a 20H1+ machine with VBS (vulnerable signed driver;
    ``SeCiCallbacks.CiValidateImageHeader := a routine that returns STATUS_SUCCESS``), then
    NtLoadDriver on the unsigned rootkit."""
    return [*_admin_write(cpu, buffer, callback, always_ok), _load(cpu, buffer, ROOTKIT)]


def a3_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    # The administrator copies rootkit.sys to disk (the model's driver store is NT's file view).
    nt.driver_store[ROOTKIT] = rootkit_image()
    # Symbols: nt!SeCiCallbacks and nt!ZwFlushInstructionCache.  Not ci!g_CiOptions: where VBS
    # runs (20H1+) CI's CiPolicy section is KDP read-only, so the classic write bugchecks (D5);
    # the callback table stays in ntoskrnl's ordinary .data (Fortinet 2022; helz.dev 2025).
    callback = drivers.se_ci_callbacks_va(nt) + SE_CI_CALLBACKS.CiValidateImageHeader.offset
    always_ok = nt.space.routines[drivers.ZW_FLUSH_INSTRUCTION_CACHE]
    ctx.notes["callback_va"] = callback
    ctx.notes["statuses"] = _statuses(_as_admin(ctx, _disable_dse_and_load, callback, always_ok))


A3 = Scenario(
    id="A3",
    title="Disable DSE through a vulnerable signed driver and load an unsigned driver",
    source="vbs-internals §5.1, §5.2, §6 A3 (CVE-2016-0181, CVE-2017-0193); Fortinet, 'The Swan "
    "Song for Driver Signature Enforcement Tampering' (2022) and helz.dev, 'ci.dll unsigned "
    "driver loading' (2025): the SeCiCallbacks swap, since KDP protects g_CiOptions",
    capability=Capability.A0,
    goal="attacker code runs at VTL0 CPL0 (the unsigned driver's DriverEntry executes)",
    expected=HVCI_BLOCKS,
    expected_why="without HVCI, NT's own code integrity is reached through the "
    "SeCiCallbacks.CiValidateImageHeader pointer in ntoskrnl's writable .data, which KDP does not "
    "protect (only CI's CiPolicy section with g_CiOptions is, whenever VBS runs: D5): pointing it "
    "at a routine that returns STATUS_SUCCESS skips the signature check and the driver runs "
    "(Fortinet 2022, helz.dev 2025). With HVCI the check belongs to SKCI in VTL1 and no page "
    "becomes kernel-executable unless a signed hash covers it, whatever VTL0's pointers say "
    "(vbs-internals §5.1 'Driver load under HVCI'). legacy-2019 has no HVCI: the attack works "
    "there as on any 2019 machine without Memory Integrity.",
    steps=a3_steps,
    goal_met=lambda ctx: (0, 0) in runs(ctx, ROOTKIT_ENTRY),
)


# -- A3-RWX: executable kernel pool / a hand-made RWX page ----------------------------------------
def _shellcode(cpu: Cpu) -> int:
    return 0


#: The shellcode's routine name (what its bytes encode), registered once on import.
SHELLCODE = payload_routine(_shellcode, breakpoint=True)


def place_rwx(cpu: Cpu, routine: str, window: int) -> tuple[int, str]:
    """K0: ``routine``'s bytes in memory the attacker made writable and executable: from
    ExAllocatePool(NonPagedPoolExecute), or, if NT refuses, an own frame mapped at ``window``
    with a PTE that has RW and no NX.  (Its VA, "pool" or "pte".)"""
    nt = nt_of(cpu)
    thunk = encode_thunk(routine)
    status, va = nt_allocate_executable(nt, cpu, PAGE_SIZE, writable=True)
    if status == NtStatus.SUCCESS and va:
        cpu.write(va, thunk)
        return va, "pool"
    _, gpa = nt.alloc_kernel_page(cpu)
    tables = PageTables(nt.phys(cpu), nt.space.root)
    tables.map(window, gpa, int(Pte.RW | Pte.G))  # present, writable, executable
    cpu.invlpg(window)
    cpu.write(window, thunk)
    return window, "pte"


def _rwx_and_jump(cpu: Cpu, window: int) -> str:
    """K0: the shellcode in RWX memory of the attacker's making (:func:`place_rwx`), called."""
    va, path = place_rwx(cpu, SHELLCODE, window)
    cpu.call(va)
    return path


A3_RWX = Scenario(
    id="A3-RWX",
    title="Allocate RWX kernel memory (executable pool or a crafted PTE) and run shellcode",
    source="vbs-internals §5.1 (W^X in SLAT), §6 A3",
    capability=Capability.K0,
    goal="attacker code runs at VTL0 CPL0 from memory the attacker wrote",
    expected=HVCI_BLOCKS,
    expected_why="without HVCI NT maps NonPagedPoolExecute RWX on its own authority and any "
    "VTL0 page is executable once its PTE says so; with HVCI the Secure Kernel refuses W+KX "
    "(MAKE_PROTECTED_PAGE_EXECUTABLE) and SLAT never lets VTL0 execute a page SKCI did not "
    "validate, whatever NT's PTE says (vbs-internals §5.1). legacy-2019 has no HVCI.",
    steps=lambda ctx: ctx.notes.update(path=ctx.kernel(_rwx_and_jump, WINDOW_VA)),
    goal_met=lambda ctx: (0, 0) in runs(ctx, SHELLCODE),
)


# -- the victim of A5 / A6: a driver's configuration variable -------------------------------------
#: A security product's configuration driver (an image of its own: edr.sys, the boot driver, is
#: already on PsLoadedModuleList and logs into its own .data, which KDP would make read-only).
VICTIM_SECTION = "edrcfg.sys!.data"
#: The driver's policy word (its "monitoring enforced" configuration) and the attacker's value.
VICTIM_VALUE = int.from_bytes(b"ENFORCE!", "little")
FORGED = int.from_bytes(b"DISABLED", "little")


def _victim(ctx: AttackContext, protect: bool) -> ntkdp.Section:
    """A security driver loads and keeps its configuration in its .data section; with
    ``protect`` it calls MmProtectDriverSection on it, as KDP's documentation suggests — which
    fails where KDP does not run (STATUS_INVALID_DEVICE_STATE without VSM; STATUS_NOT_SUPPORTED
    from a pre-20H1 Secure Kernel), and the driver carries on."""
    nt = _nt(ctx)
    vp = ctx.vp
    vp.actor = "edrcfg.sys"
    section = ntkdp.load_data_section(
        nt, vp.cpu, VICTIM_SECTION, 1, VICTIM_VALUE.to_bytes(8, "little")
    )
    if protect:
        status = ntkdp.mm_protect_driver_section(nt, vp.cpu, section.va)
        ctx.notes["protect_status"] = NtStatus.name_of(status)
    vp.actor = "nt"
    ctx.notes["variable_va"] = section.va
    ctx.notes["variable_gpa"] = section.gpa
    return section


def readers_see_forged(ctx: AttackContext) -> bool:
    va = ctx.notes.get("variable_va")
    return va is not None and reads_as(ctx, int(va)) == FORGED.to_bytes(8, "little")


# -- A5: PTE remapping -----------------------------------------------------------------------------
def remap_pte(cpu: Cpu, va: int, own_gpa: int) -> int | None:
    """K0: point the 4 KiB PTE that maps ``va`` in the current tables at ``own_gpa`` (RW, NX,
    global: NT's tables are VTL0-writable) and flush the stale translation; the PTE it replaced
    (None: no 4 KiB PTE maps ``va``)."""
    pte = PageTables(nt_of(cpu).phys(cpu), cpu.read_cr(3)).pte_gpa(va)
    if pte is None:
        return None
    old: int = cpu.read_u64(DIRECT_MAP + pte)
    flags = int(Pte.P | Pte.RW | Pte.NX | Pte.G)
    cpu.write_u64(DIRECT_MAP + pte, (own_gpa & PTE_ADDR_MASK) | flags)
    cpu.invlpg(va)
    return old


def _remap_and_set(cpu: Cpu, va: int, own_gpa: int, value: int) -> int:
    """K0: point the variable's PTE at a page of the attacker's, then store the value through
    the variable's own address."""
    old = remap_pte(cpu, va, own_gpa)
    if old is None:
        return 0
    cpu.write_u64(va, value)
    return old


def a5_steps(ctx: AttackContext) -> None:
    section = _victim(ctx, protect=True)
    _, own_gpa = ctx.kernel_page()
    ctx.notes["own_gpa"] = own_gpa
    ctx.notes["old_pte"] = ctx.kernel(_remap_and_set, section.va, own_gpa, FORGED)


A5 = Scenario(
    id="A5",
    title="Remap a KDP-protected variable's VA to an attacker-writable page",
    source="vbs-internals §5.2 'Limits', §5.6, §6 A5 (MS-HVPT 2025; Tanda, CVE-2024-21305)",
    capability=Capability.K0,
    goal="readers of the KDP-protected variable see the attacker's value",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": B, "legacy-2019": N},
    expected_why="KDP protects guest-physical pages; NT's page tables stay VTL0-writable, so the "
    "protected VA can be pointed at any writable GPA — only HVPT/HLAT, which translates the "
    "pinned range from tables VTL0 cannot write, keeps the VA on the protected GPA "
    "(vbs-internals §5.2 'Limits', §5.6). KDP needs VBS only (MS Learn MmProtectDriverSection; "
    "MS-KDP 2020), so the attack applies under vbs as under vbs-hvci and succeeds on both (no "
    "HVPT); HVCI changes nothing here. Without VBS (vbs-off) or before KDP existed "
    "(legacy-2019, a 2019 build: MmProtectDriverSection dates from build 19548) nothing is "
    "protected, so there is no protection to bypass: A6-KDP shows the plain write succeeding.",
    steps=a5_steps,
    goal_met=readers_see_forged,
    applicable=needs_kdp,
)


# -- A6 / A6-KDP: data-only attacks through the vulnerable driver ----------------------------------
def _a6_steps(protect: bool) -> Any:
    def steps(ctx: AttackContext) -> None:
        section = _victim(ctx, protect)
        ctx.notes["statuses"] = _statuses(_as_admin(ctx, _admin_write, section.va, FORGED))

    return steps


A6 = Scenario(
    id="A6",
    title="Data-only attack: overwrite an unprotected kernel variable with a vulnerable driver",
    source="vbs-internals §5.1 'What HVCI does not stop', §6 A6 (McGarr-HVCI, MS-KDP)",
    capability=Capability.A0,
    goal="readers of the driver's configuration variable see the attacker's value",
    expected={"vbs-off": S, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="HVCI protects code, not data: a kernel write primitive changes any variable "
    "nobody registered with KDP, whatever the preset (vbs-internals §6 A6: 'the model should let "
    "it succeed unless the target is KDP-protected')",
    steps=_a6_steps(protect=False),
    goal_met=readers_see_forged,
)

A6_KDP = Scenario(
    id="A6-KDP",
    title="Data-only attack on a KDP-protected variable (MmProtectDriverSection)",
    source="vbs-internals §5.2 (MS-KDP blog 2020-07-08), §6 A6",
    capability=Capability.A0,
    goal="readers of the driver's configuration variable see the attacker's value",
    expected={"vbs-off": S, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": S},
    expected_why="static KDP makes the section SLAT read-only for all of VTL0: the vulnerable "
    "driver's store is an EPT violation → secure intercept → bugcheck. KDP needs VBS, not HVCI "
    "(MS Learn MmProtectDriverSection: STATUS_INVALID_DEVICE_STATE only when VSM is disabled; "
    "MS-KDP 2020), so vbs blocks it too. Without VBS (vbs-off: STATUS_INVALID_DEVICE_STATE) "
    "and on a build before KDP (legacy-2019: the 2019 Secure Kernel answers "
    "STATUS_NOT_SUPPORTED) the variable is simply unprotected.",
    steps=_a6_steps(protect=True),
    goal_met=readers_see_forged,
)


# -- A8: secure-call parameter abuse (CVE-2020-0917 class) -----------------------------------------
MARKER = b"A8-OWNED"
#: Bytes the crafted copy writes past the allocation: the hash records' 16-byte header and one
#: 40-byte record (``vbsim.sk.layouts.Hvci``).
FORGED_LENGTH = SkHvci.HASH_RECORDS + SkHvci.RECORD_SIZE
#: The forged header: one record, the loader's capacity, and the attacker's marker in the
#: header's last eight bytes (which the SK leaves zero).
FORGED_HEADER = (1).to_bytes(4, "little") + SkHvci.HASH_MAX.to_bytes(4, "little") + MARKER


def _a8_shellcode(vp: Cpu) -> int:
    return 0


#: The shellcode's routine name, registered as code once at import (host side, like linking the
#: attacker's binary): the step only encodes a thunk that names it.
A8_SHELLCODE = payload_routine(_a8_shellcode, breakpoint=True)


@dataclass
class _Prepared:
    """What the K0 attacker computed before the overflow: the forged bytes, and the NT code page
    (and the free slot in it) its shellcode's thunk will go to."""

    forged: bytes
    code_va: int
    pfn: int
    thunk: bytes


def _prepare(vp: Cpu) -> _Prepared:
    """K0: pick NT's last code page (validated under HVCI), find a free thunk slot in it, and
    compute the SHA-256 of the page as it will be with the shellcode's thunk in that slot.  The
    forged bytes are a hash-record header (count 1, the loader's capacity) and one record naming
    that page with that hash.  Nothing here asks the Secure Kernel anything."""
    nt = nt_of(vp)
    header = FORGED_HEADER
    page_index = len(nt.space.code_pages) - 1
    va_page = CODE_BASE + page_index * PAGE_SIZE
    pfn = nt.space.code_pages[page_index]
    content = bytearray(vp.read(va_page, PAGE_SIZE))
    empty = bytes(THUNK_SIZE)
    slot = next(
        (o for o in range(0, PAGE_SIZE, THUNK_SIZE) if content[o : o + THUNK_SIZE] == empty),
        PAGE_SIZE - THUNK_SIZE,
    )
    thunk = encode_thunk(A8_SHELLCODE)
    content[slot : slot + THUNK_SIZE] = thunk
    record = pfn.to_bytes(8, "little") + hashlib.sha256(bytes(content)).digest()
    return _Prepared(header + record, va_page + slot, pfn, thunk)


def _make_executable_and_run(vp: Cpu, prepared: _Prepared) -> str:
    """K0, after the overflow: make the code page writable through the sanctioned
    MAKE_PROTECTED_PAGE_WRITABLE (NT's hotpatch path), write the thunk, and ask the SK to make
    the page executable again (it re-hashes it against its records); call the shellcode if the
    SK said yes."""
    nt = nt_of(vp)
    assert nt.vsl is not None
    status, _ = nt.vsl.call(vp, Service.MAKE_PROTECTED_PAGE_WRITABLE, prepared.pfn)
    if status == NtStatus.NOT_SUPPORTED:
        return "no-hvci"
    if status != NtStatus.SUCCESS:
        return NtStatus.name_of(status)
    page_offset = prepared.code_va & (PAGE_SIZE - 1)
    vp.write(DIRECT_MAP + (prepared.pfn << PAGE_SHIFT) + page_offset, prepared.thunk)
    status, _ = nt.vsl.call(vp, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, prepared.pfn, 0)
    if status != NtStatus.SUCCESS:
        return NtStatus.name_of(status)
    vp.call(prepared.code_va)
    return "ran"


def _overflow_source(nt: NtKernel, vp: Cpu, forged: bytes) -> list[int]:
    """Two pages: filler for the allocation, then the forged bytes that land behind it."""
    filler = MARKER * (PAGE_SIZE // len(MARKER))
    return ntkdp.stage_buffer(nt, vp, filler + forged.ljust(PAGE_SIZE, b"\0"))


def _crafted_fills(vp: Cpu) -> list[Any]:
    """K0: a secure allocation of one page, then FILL_SECURE_ALLOCATION with an MDL whose
    ByteCount runs past it (unchecked TransferMdl->ByteCount), and one whose offset starts right
    after it; then, under HVCI, the follow-on that turns the overwrite into unsigned code."""
    nt = nt_of(vp)
    prepared = _prepare(vp)
    status, handle = ntkdp.create_secure_allocation(nt, vp, PAGE_SIZE)
    if status != NtStatus.SUCCESS:
        return [status]
    source = _overflow_source(nt, vp, prepared.forged)
    statuses: list[Any] = [status]
    for offset, count in ((0, PAGE_SIZE + FORGED_LENGTH), (PAGE_SIZE, FORGED_LENGTH)):
        pfns = source if offset == 0 else source[1:]
        mdl_va, mdl_pfn = ntkdp.build_mdl(nt, vp, pfns, count)
        statuses.append(ntkdp.fill_secure_allocation_raw(nt, vp, handle, offset, mdl_va, mdl_pfn))
    statuses.append(_make_executable_and_run(vp, prepared))
    return [*statuses, prepared.forged]


def hash_records_gpa(ctx: AttackContext) -> int | None:
    sk = ctx.system.sk if ctx.system else None
    return None if sk is None else int(sk.hvci.hashes_gpa)


def sk_records_forged(ctx: AttackContext) -> bool:
    """HVCI's hash records, the SK data right behind the allocation, hold the attacker's forged
    header (:data:`FORGED_HEADER`, whose marker the SK never writes) and a record naming one of
    NT's code pages (RAM at their GPA, host side).  Judged from the scenario's own constants,
    never from bytes the payload hands back: a payload that wrote nothing cannot claim it."""
    gpa = hash_records_gpa(ctx)
    nt = ctx.system.nt if ctx.system else None
    if gpa is None or nt is None:
        return False
    raw = _ram(ctx, gpa, FORGED_LENGTH)
    gpn = int.from_bytes(raw[SkHvci.HASH_RECORDS : SkHvci.HASH_RECORDS + 8], "little")
    return raw[: SkHvci.HASH_RECORDS] == FORGED_HEADER and gpn in nt.space.code_pages


def _a8_steps(ctx: AttackContext) -> None:
    *statuses, forged = ctx.kernel(_crafted_fills)
    ctx.notes.update(statuses=_statuses(statuses[:-1]), follow_on=statuses[-1], forged=forged)


A8 = Scenario(
    id="A8",
    title="Secure-call MDL abuse (bug-class example): FILL_SECURE_ALLOCATION with an oversized "
    "ByteCount / offset",
    source="vbs-internals §6 A8 (the class: 'corrupt SK memory via bad MDL lengths'). An "
    "EXAMPLE of the class on another service, not the CVE: CVE-2020-0917 was in "
    "SkmmObtainHotPatchUndoTable (A8-UNDO re-enacts it), CVE-2020-0918 SkmmUnmapMdl on a "
    "controlled MDL, and the published chain wrote with LIVEDUMP_ADD_BUFFER (A8-LIVEDUMP; "
    "Amar & King, 'Breaking VSM by attacking SecureKernel', Black Hat USA 2020)",
    capability=Capability.K0,
    goal="SK memory changes: HVCI's validated-hash records behind the allocation hold a record "
    "the attacker forged (under HVCI the SK then makes the attacker's patched page executable)",
    expected=ONLY_LEGACY,
    expected_why="the fixed Secure Kernel captures the MDL and bounds ByteCount and the offset "
    "by the allocation (and checks every PFN is VTL0's) before copying; the legacy-2019 Secure "
    "Kernel trusts them like the SK of Amar & King's bugs did, so the copy runs into the SK data "
    "behind the buffer. The model's example of the class (vbs-internals §6 A8); the CVE's own "
    "service is A8-UNDO.",
    steps=_a8_steps,
    goal_met=sk_records_forged,
    applicable=needs_vbs,
)


# -- A8-UNDO: CVE-2020-0917 in its own service -----------------------------------------------------
def _undo_table_overflow(cpu: Cpu, target_pfn: int) -> int:
    """K0: OBTAIN_PATCH_UNDO_TABLE with a TransferMdl whose ByteCount is one page — less than the
    undo table — describing one page of its own; the PFN slot after the array names the target
    page (the MDL is VTL0 memory, so the attacker writes what follows it too)."""
    nt = nt_of(cpu)
    assert nt.vsl is not None
    _, own = nt.alloc_kernel_page(cpu)
    mdl = mdl_bytes([own >> PAGE_SHIFT], PAGE_SIZE) + target_pfn.to_bytes(8, "little")
    mdl_va, mdl_gpa = nt.alloc_kernel_page(cpu)
    cpu.write(mdl_va, mdl)
    status, _ = nt.vsl.call(cpu, Service.OBTAIN_PATCH_UNDO_TABLE, mdl_va, mdl_gpa >> PAGE_SHIFT)
    return status


def needs_undo_table_service(policy: Policy) -> bool:
    """VBS on a build whose secure-call table has OBTAIN_PATCH_UNDO_TABLE (table B only)."""
    return policy.vbs and Service.OBTAIN_PATCH_UNDO_TABLE in ServiceTable(policy.build)


def a8_undo_steps(ctx: AttackContext) -> None:
    target, secret = sk_key_page(ctx)
    ctx.notes.update(target_gpa=target, secret=secret)
    status = ctx.kernel(_undo_table_overflow, target >> PAGE_SHIFT)
    ctx.notes["status"] = NtStatus.name_of(status)


def sk_key_page_overwritten(ctx: AttackContext) -> bool:
    target, secret = ctx.notes.get("target_gpa"), ctx.notes.get("secret")
    return (
        target is not None
        and isinstance(secret, bytes)
        and (_ram(ctx, int(target), len(secret)) != secret)
    )


A8_UNDO = Scenario(
    id="A8-UNDO",
    title="CVE-2020-0917: OBTAIN_PATCH_UNDO_TABLE with a TransferMdl ByteCount smaller than the "
    "undo table",
    source="Amar & King, 'Breaking VSM by attacking SecureKernel', Black Hat USA 2020: "
    "CVE-2020-0917, an out-of-bounds write in SkmmObtainHotPatchUndoTable through an unchecked "
    "TransferMdl->ByteCount; vbs-internals §2.4 (table B 69), §6 A8",
    capability=Capability.K0,
    goal="SK memory changes: the undo-table copy overwrites the Secure Kernel's key page",
    expected={"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": N},
    expected_why="the fixed Secure Kernel captures the TransferMdl and refuses a ByteCount "
    "smaller than the table (and any PFN that is not VTL0's), so nothing is written; the "
    "unfixed one (the legacy switch on build B: test_a8_undo_flip_the_legacy_switch) checked "
    "only ByteCount's span and copied the whole table, taking the next PFN from attacker bytes. "
    "legacy-2019's table A has no OBTAIN_PATCH_UNDO_TABLE number (vbs-internals §2.4), so the "
    "service cannot be called there; vbs-off has no Secure Kernel. The published chain's "
    "own write primitive, LIVEDUMP_ADD_BUFFER, is A8-LIVEDUMP; CVE-2020-0918 (SkmmUnmapMdl) "
    "is not modelled.",
    steps=a8_undo_steps,
    goal_met=sk_key_page_overwritten,
    applicable=needs_undo_table_service,
)


# -- A9: double fetch through the normal-call window ----------------------------------------------
#: Where the hook finds its data: in the MDL's page, after the MDL (the attacker's own page, the
#: one the Secure Kernel's request names): the original routine's VA and a count of the hook's runs.
HOOK_ORIGINAL = PAGE_SIZE - 16
HOOK_RUNS = PAGE_SIZE - 8


def _a9_hook(cpu: Cpu, block: int) -> int:
    """The attacker's normal-call routine, run by NT's dispatcher from the slot the K0 step wrote.
    The request in ``block`` (NT's SECURE_CALL_ARGS copy, :mod:`vbsim.nt.vsl`) names the MDL's
    page (Field2: the MDL's PFN); the hook enlarges ByteCount there, counts its run, and lets the
    original routine, whose VA the K0 step left in that page, answer the Secure Kernel."""
    mdl_pfn = cpu.read_u64(block + FIELDS_OFFSET + 8)
    page = DIRECT_MAP + (mdl_pfn << PAGE_SHIFT)
    cpu.write_u32(page + MDL_BYTECOUNT_OFFSET, PAGE_SIZE + FORGED_LENGTH)
    cpu.write_u64(page + HOOK_RUNS, cpu.read_u64(page + HOOK_RUNS) + 1)
    original = cpu.read_u64(page + HOOK_ORIGINAL)
    result = cpu.call(original, block) if original else None
    return result if isinstance(result, int) else int(NtStatus.NOT_IMPLEMENTED)


#: The hook's routine name (what its thunk encodes), registered once on import.
A9_HOOK = payload_routine(_a9_hook, breakpoint=True)


def _toctou_fill(vp: Cpu, hook: int) -> list[Any]:
    """K0: a well-formed MDL (64 bytes), and a hook on NT's normal-call dispatch: the hook's VA
    written into VslpNormalCallTable's "get physical pages" slot (NT's .data: an ordinary kernel
    write; KDP protects only what NT or a driver asks it to).  The Secure Kernel makes that normal
    call after validating the MDL and before copying; NT's dispatcher reads the slot then and runs
    the hook, which enlarges ByteCount in VTL0 memory so that the copy would reach the forged
    bytes into the hash records behind the allocation.  The slot is put back afterwards."""
    nt = nt_of(vp)
    assert nt.vsl is not None
    prepared = _prepare(vp)
    status, handle = ntkdp.create_secure_allocation(nt, vp, PAGE_SIZE)
    if status != NtStatus.SUCCESS:
        return [status, prepared.forged]
    source = _overflow_source(nt, vp, prepared.forged)
    mdl_va, mdl_pfn = ntkdp.build_mdl(nt, vp, source, 64)
    slot = nt.vsl.normal_call_slot(NORMAL_GET_PHYSICAL_PAGES)
    original = vp.read_u64(slot)
    vp.write_u64(mdl_va + HOOK_ORIGINAL, original)
    vp.write_u64(slot, hook)
    try:
        fill = ntkdp.fill_secure_allocation_raw(nt, vp, handle, 0, mdl_va, mdl_pfn)
    finally:
        vp.write_u64(slot, original)
    return [status, fill, vp.read_u64(mdl_va + HOOK_RUNS), prepared.forged]


def _a9_steps(ctx: AttackContext) -> None:
    # [model] The hook's code is placed as a debugger plants code after boot (the loader's
    # KernelSpace.install, as the privilege matrix plants its probes), so it runs under HVCI as
    # well: it stands for what changes the MDL "after the SK validates it but before it uses it"
    # (vbs-internals §6 A9) — on a real machine the attacker's other processor writing it in a
    # loop through a kernel write primitive, which needs no new code.  The model's processors do
    # not run concurrently, so that write lands at the one moment it can matter, NT's normal call;
    # how NT comes to run it is the machine's: the K0 step's write into NT's table.
    space = ctx.booted.nt_space
    assert space is not None
    *result, forged = ctx.kernel(_toctou_fill, space.install(A9_HOOK))
    ctx.notes.update(result=result, forged=forged)


A9 = Scenario(
    id="A9",
    title="Double fetch: enlarge a validated MDL during the Secure Kernel's normal call",
    source="Amar & King, Black Hat USA 2020; vbs-internals §2.5 (normal calls), §6 A9",
    capability=Capability.K0,
    goal="SK memory changes: HVCI's validated-hash records behind the allocation hold a record "
    "the attacker forged (what that record buys under HVCI is A8's follow-on)",
    expected=ONLY_LEGACY,
    expected_why="the Secure Kernel copies VTL0-resident inputs into VTL1 before checking them "
    "and uses only its copy, so changing VTL0 memory after the check changes nothing; an SK that "
    "fetches the MDL again after the normal call (the legacy switch) copies the enlarged length "
    "(vbs-internals §6 A9: no specific double-fetch CVE is public, the class is).",
    steps=_a9_steps,
    goal_met=sk_records_forged,
    applicable=needs_vbs,
)


def lsaiso_table_gpa(ctx: AttackContext) -> int | None:
    """Where LsaIso's credential table lives: the SK's process table and LsaIso's page tables,
    walked from the DirectoryTableBase its SKPROCESS holds in RAM now."""
    machine = ctx.booted.machine
    assert machine is not None
    for process in trustlets(ctx, 1):
        leaf = host_lookup(ctx, process.host_root(machine.ram), TABLE_VA)
        if leaf is not None:
            return (leaf & PTE_ADDR_MASK) | (TABLE_VA & (PAGE_SIZE - 1))
    return None


def own_vtl0_and_lsaiso(
    cpu: Cpu, table_gpa: int, loot_gpa: int, params: tuple[int, int, int, int]
) -> int:
    """K1: read LsaIso's credential table through the SK's direct map, hand it to VTL0, then open
    that page to VTL0 in SLAT with a hypercall only VTL1 may make."""
    cpu.write(DIRECT_MAP + loot_gpa, cpu.read(DIRECT_MAP + table_gpa, 0x100))
    pages = hvcall.ParamPages(*params)
    result = hvcall.modify_vtl_protection_mask(
        cpu, pages, [table_gpa >> PAGE_SHIFT], HvMapGpaFlags.READABLE | HvMapGpaFlags.WRITABLE
    )
    return result.status


def a13_steps(ctx: AttackContext) -> None:
    sk = ctx.booted.sk
    assert sk is not None
    table_gpa = lsaiso_table_gpa(ctx)
    if table_gpa is None:
        return
    ctx.notes["secret"] = nt_owf(DEFAULT_LOGON.password)
    ctx.notes["table_pfn"] = table_gpa >> PAGE_SHIFT
    ctx.notes["rights_before"] = vtl0_rights(ctx, [table_gpa >> PAGE_SHIFT])
    _, loot_gpa = ctx.kernel_page()
    ctx.notes["loot_gpa"] = loot_gpa
    p = sk.params
    ctx.notes["status"] = ctx.secure_kernel(
        own_vtl0_and_lsaiso, table_gpa, loot_gpa, (p.in_va, p.in_gpa, p.out_va, p.out_gpa)
    )


def a13_goal(ctx: AttackContext) -> bool:
    if "table_pfn" not in ctx.notes:
        return False
    stolen = loot_contains(ctx, ctx.notes["secret"])
    changed = vtl0_rights(ctx, [ctx.notes["table_pfn"]]) != ctx.notes["rights_before"]
    return stolen and changed


A13 = Scenario(
    id="A13",
    title="VTL1 ring 0: read LsaIso's secrets and change VTL0's SLAT",
    source="Amar & King, Black Hat USA 2020 (the chain ended in SK code execution); "
    "vbs-internals §6 A13",
    capability=Capability.K1,
    goal="LsaIso's NT OWF reaches VTL0 and a VTL0 SLAT right changes",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="nothing is above VTL1 ring 0 but the hypervisor, which takes the Secure "
    "Kernel's hypercalls as the configuration: it reads every trustlet page and sets VTL0's "
    "SLAT at will (vbs-internals §6 A13: 'none: the SK controls VTL0 SLAT'). Without VBS there "
    "is no VTL1.",
    steps=a13_steps,
    goal_met=a13_goal,
    applicable=needs_credential_guard,
)


# -- A14: DMA -------------------------------------------------------------------------------------
def _plug(ctx: AttackContext, device: DmaDevice) -> DmaDevice:
    ctx.notes["device"] = device
    return device


def _driver_dma(cpu: Cpu, base: int, target: int, loot: int, staging: int) -> list[int]:
    """K0 driving its NIC: DMA the target page into the device and back out into the loot page,
    then DMA 0xCC bytes from a staging page onto the target."""
    statuses = [
        driver_transfer(cpu, base, target, 96, DIR_FROM_MEMORY),
        driver_transfer(cpu, base, loot, 96, DIR_TO_MEMORY),
    ]
    cpu.write(DIRECT_MAP + staging, b"\xcc" * 16)
    statuses.append(driver_transfer(cpu, base, staging, 16, DIR_FROM_MEMORY))
    statuses.append(driver_transfer(cpu, base, target, 16, DIR_TO_MEMORY))
    return statuses


def a14_steps(ctx: AttackContext) -> None:
    machine = ctx.booted.machine
    assert machine is not None
    # The platform's NIC (an internal PCIe function); its VTL0 driver is the attacker's tool.
    device = _plug(ctx, DmaDevice("nic0", machine.iommu))
    device.claim(machine.bus, DEFAULT_BASE)
    target, secret = sk_key_page(ctx)
    ctx.notes.update(secret=secret, target_gpa=target)
    _, loot = ctx.kernel_page()
    _, staging = ctx.kernel_page()
    ctx.notes["loot_gpa"] = loot
    statuses = ctx.kernel(_driver_dma, DEFAULT_BASE, target, loot, staging)
    ctx.notes["statuses"] = [STATUS_NAMES.get(s, s) for s in statuses or []]


def sk_page_read_or_changed(ctx: AttackContext) -> bool:
    target = ctx.notes.get("target_gpa")
    if target is None:
        return False
    secret = ctx.notes.get("secret", b"")
    device = ctx.notes.get("device")
    in_device = isinstance(device, DmaDevice) and device.attacker and secret in device.buffer
    return loot_contains(ctx, secret) or in_device or _ram(ctx, target, 16) == b"\xcc" * 16


A14 = Scenario(
    id="A14",
    title="A VTL0 driver programs its device to DMA into Secure Kernel memory",
    source="vbs-internals §5.5 (WI7 part 1 ch. 2, part 2); TLFS 'DMA and Devices'",
    capability=Capability.K0,
    goal="the Secure Kernel's key page reaches VTL0 memory, or changes",
    expected=VBS_BLOCKS,
    expected_why="the hypervisor programs the IOMMU so that DMA has exactly VTL0's SLAT rights; "
    "VTL1 pages have none, so the transfer is refused whole (vbs-internals §5.5 'Model "
    "consequence'; no VBS DMA bypass recorded). Without VBS there is no VTL1 memory.",
    steps=a14_steps,
    goal_met=sk_page_read_or_changed,
    applicable=needs_vbs,
)


def a14_phys_steps(ctx: AttackContext) -> None:
    machine = ctx.booted.machine
    assert machine is not None
    section = _victim(ctx, protect=False)  # PCILeech-style: the variable is found by scanning
    device = _plug(ctx, DmaDevice.malicious(machine.iommu))  # hot-plugged: no driver, no domain
    ctx.notes["status"] = STATUS_NAMES[device.dma_write(section.gpa, FORGED.to_bytes(8, "little"))]


A14_PHYS = Scenario(
    id="A14-PHYS",
    title="A malicious Thunderbolt device DMAs into VTL0 kernel memory",
    source="vbs-internals §5.5 (Kernel DMA Protection, Windows 10 1803+), §6 A14",
    capability=Capability.PHYS,
    goal="readers of a driver's (unprotected) configuration variable see the attacker's value",
    expected={"vbs-off": S, "vbs": S, "vbs-hvci": S, "hardened": B, "legacy-2019": S},
    expected_why="a device with no remapping domain passes through the IOMMU with VTL0's rights, "
    "and the variable is VTL0-writable; only Kernel DMA Protection blocks an external device "
    "that has no domain (vbs-internals §5.5; §6 A14: systems without it 'were open to "
    "Thunderbolt DMA against VTL0 (not VTL1)').",
    steps=a14_phys_steps,
    goal_met=readers_see_forged,
)


def a14_phys_vtl1_steps(ctx: AttackContext) -> None:
    machine = ctx.booted.machine
    assert machine is not None
    device = _plug(ctx, DmaDevice.malicious(machine.iommu))
    target, secret = sk_key_page(ctx)
    ctx.notes.update(secret=secret, target_gpa=target)
    read = device.dma_read(target, 96)
    ctx.notes["read"] = read is not None
    ctx.notes["status"] = STATUS_NAMES[device.dma_write(target, b"\xcc" * 16)]


A14_PHYS_VTL1 = Scenario(
    id="A14-PHYS-VTL1",
    title="A malicious Thunderbolt device DMAs into Secure Kernel memory",
    source="vbs-internals §5.5, §6 A14; TLFS 'DMA and Devices'",
    capability=Capability.PHYS,
    goal="the Secure Kernel's key page reaches the device, or changes",
    expected=VBS_BLOCKS,
    expected_why="DMA never has more than VTL0's SLAT rights, which exclude VTL1 pages; "
    "hardened also keeps the unassigned external device off the bus entirely (Kernel DMA "
    "Protection). Without VBS there is no VTL1.",
    steps=a14_phys_vtl1_steps,
    goal_met=sk_page_read_or_changed,
    applicable=needs_vbs,
)

SCENARIOS = [A3, A3_RWX, A5, A6, A6_KDP, A8, A8_UNDO, A9, A13, A14, A14_PHYS, A14_PHYS_VTL1]
