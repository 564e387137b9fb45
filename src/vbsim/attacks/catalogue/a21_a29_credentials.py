"""A21, A22, A27, A29: Credential Guard's credentials — used, kept, dumped, denied
(vbs-internals §5.3, §6, §7).

The secret is the NT OWF of the model's one interactive logon (``vbsim.boot.logon.DEFAULT_LOGON``):
in lsass's memory in clear without Credential Guard, in LsaIso's private VTL1 memory with it.
Credential Guard protects the *storage* of the OWF, not its *use* (A21), nor what lsass does with
the next logon once an administrator changes lsass (A22), and VTL0 can always stop LsaIso (A29).
"""

from __future__ import annotations

from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import (
    lsaiso_shadow,
    needs_credential_guard,
    nt_of,
    process_memory,
    trustlets,
)
from vbsim.attacks.context import AttackContext, payload_routine
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.boot.logon import DEFAULT_LOGON, Logon, type_logon
from vbsim.hw.code import encode_thunk
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.ium.lsaiso import ntlm_response
from vbsim.nt import dump as nt_dump
from vbsim.nt import lsass
from vbsim.nt.layouts import EPROCESS, read_field
from vbsim.nt.lsass import nt_owf
from vbsim.nt.process import Process
from vbsim.nt.syscalls import PAGE_EXECUTE_READWRITE, syscall
from vbsim.nt.vad import process_regions
from vbsim.ntstatus import NtStatus
from vbsim.sk.sscn import Service

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
LSAISO_ID = 1


def _owf() -> bytes:
    return nt_owf(DEFAULT_LOGON.password)


def lsass_process(ctx: AttackContext) -> Process:
    nt = ctx.booted.nt
    assert nt is not None
    pid, _, _ = lsass.credential_region(nt)
    return ctx.booted.process(pid)


# -- A21 -------------------------------------------------------------------------------------------
#: The challenge Pass-the-Challenge and every NTLMv1 cracking service use (rainbow tables exist
#: for it): 1122334455667788.
CHALLENGE = bytes.fromhex("1122334455667788")


def _pass_the_challenge(cpu: Cpu, record_va: int, port: int, buffer: int) -> int:
    """The attacker's SSP, running inside lsass at CPL3: take lsass's "[LSA Isolated Data]" blob,
    hand it to LsaIso with a chosen challenge over LsaIso's port, keep the answer.  ``buffer``:
    three pages in lsass (scratch, request, reply)."""
    parsed = lsass.parse_record(cpu.read(record_va, lsass.RECORD_SIZE))
    blob = lsass.isolated_blob(parsed.blob) if parsed is not None and parsed.blob else None
    if not blob:
        return int(NtStatus.NOT_FOUND)
    request = lsass.respond_message(blob, CHALLENGE)
    cpu.write(buffer + PAGE_SIZE, request)
    return syscall(
        cpu,
        "NtAlpcSendWaitReceivePort",
        port,
        buffer + PAGE_SIZE,
        len(request),
        buffer + 2 * PAGE_SIZE,
    )


def _read_remote(cpu: Cpu, pid: int, va: int, buffer: int, length: int) -> int:
    """A0 with SeDebugPrivilege at CPL3: ReadProcessMemory → NtReadVirtualMemory."""
    return syscall(cpu, "NtReadVirtualMemory", pid, va, buffer, length)


def a21_steps(ctx: AttackContext) -> None:
    nt = ctx.booted.nt
    assert nt is not None
    target = lsass_process(ctx)
    _, record_va, _ = lsass.credential_region(nt)  # what symbols tell a debugger
    # LsaIso's port admits lsass only: the attacker's code runs inside lsass, as an SSP loaded
    # with AddSecurityPackage or injected (Pass-the-Challenge does the latter).  Its pages there
    # are what VirtualAllocEx would give it.
    inside = ctx.user_buffer(target, 3 * PAGE_SIZE)
    port = lsass.lsaiso_port(nt, ctx.vp.cpu)  # what NT's .data says (a debugger's read)
    status = ctx.user(_pass_the_challenge, record_va, port, inside, process=target)
    ctx.notes["status"] = NtStatus.name_of(status) if isinstance(status, int) else status
    # The answer leaves lsass for the attacker's own process.
    attacker = ctx.process(admin=True, name="ptc.exe")
    ctx.notes["attacker"] = attacker
    mine = ctx.user_buffer(attacker)
    ctx.user(_read_remote, target.pid, inside + 2 * PAGE_SIZE, mine, 64, process=attacker)


def a21_goal(ctx: AttackContext) -> bool:
    """The attacker's memory holds the valid response to its challenge, and never held the OWF."""
    attacker = ctx.notes.get("attacker")
    if not isinstance(attacker, Process):
        return False
    memory = process_memory(ctx, attacker)
    return ntlm_response(_owf(), CHALLENGE) in memory and _owf() not in memory


A21 = Scenario(
    id="A21",
    title="Pass-the-Challenge: make LsaIso answer a chosen NTLM challenge",
    source="Lyak, 'Pass-the-Challenge' (2022); SpecterOps 'DumpGuard' (2025); ipurple-CG",
    capability=Capability.A0,
    goal="the attacker obtains a valid NTLM response to its own challenge without the NT OWF",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="Credential Guard protects storage, not use: LsaIso computes responses for "
    "whoever holds lsass's blob and reaches its port (vbs-internals §5.3, §6 A21). Without "
    "Credential Guard there is no oracle to abuse: the same attacker reads the OWF itself "
    "(the 'K0 dumps lsass' seed), so 'use without the OWF' is not a question there.",
    steps=a21_steps,
    goal_met=a21_goal,
    applicable=needs_credential_guard,
)


# -- A22 -------------------------------------------------------------------------------------------
#: The next interactive logon, after the attacker changed lsass.
NEXT_LOGON = Logon(user="bob", domain="CONTOSO", password="Spring2025#", logon_id=0x3E7_0002)
LSASS_MAIN = "lsass.main"


def _lsass_entry(ctx: AttackContext, process: Process) -> int | None:
    """Where lsass's logon routine is (a debugger's symbol lookup): the VA of its thunk."""
    machine = ctx.booted.machine
    assert machine is not None
    thunk = encode_thunk(LSASS_MAIN)
    for region in process_regions(machine.ram, process):
        for index, pfn in enumerate(region.pfns):
            page = machine.ram.read(pfn << 12, PAGE_SIZE)
            offset = page.find(thunk)
            if offset >= 0 and offset % 32 == 0:
                return region.base + index * PAGE_SIZE + offset
    return None


def _logon_hook(cpu: Cpu, scratch: int, message: int, port: int) -> int:
    """The attacker's detour, running inside lsass in place of its logon routine: the original
    code, copied to a trampoline, is called as if Credential Guard were not running (the
    ``g_IsCredGuardEnabled = 0`` patch, ipurple-CG)."""
    out = scratch + 0x800
    if syscall(cpu, "NtAllocateVirtualMemory", out, PAGE_SIZE, PAGE_EXECUTE_READWRITE):
        return 0
    trampoline = cpu.read_u64(out)
    cpu.write(trampoline, encode_thunk(LSASS_MAIN))  # the bytes the detour overwrote
    result: int = cpu.call(trampoline, scratch, message, 0)
    return result


def _patch_process(cpu: Cpu, pid: int, va: int, buffer: int, data: bytes) -> list[int]:
    """A0 with SeDebugPrivilege at CPL3: what kernel32's WriteProcessMemory does on a code page —
    NtProtectVirtualMemory(lsass, page, PAGE_EXECUTE_READWRITE), then NtWriteVirtualMemory.
    The model's reduced argument lists: (pid, address, size, new protection) and (pid, address,
    buffer, size)."""
    cpu.write(buffer, data)
    page = va & ~(PAGE_SIZE - 1)
    return [
        syscall(cpu, "NtProtectVirtualMemory", pid, page, PAGE_SIZE, PAGE_EXECUTE_READWRITE),
        syscall(cpu, "NtWriteVirtualMemory", pid, va, buffer, len(data)),
    ]


def next_logon(ctx: AttackContext, logon: Logon) -> None:
    """The user logs on again (the host types ``logon`` at winlogon into NT's logon buffer), and
    winlogon → LsaLogonUser: lsass runs its logon routine again, with the arguments NT gives it
    at boot (:func:`vbsim.nt.lsass.start`): its stack page, the logon, LsaIso's port if Credential
    Guard runs."""
    nt = ctx.booted.nt
    assert nt is not None
    process = lsass_process(ctx)
    entry = ctx.notes.get("lsass_entry") or _lsass_entry(ctx, process)
    if entry is None:
        return
    port = lsass.lsaiso_port(nt, ctx.vp.cpu) if lsass.credential_guard_active(nt, ctx.vp.cpu) else 0
    vp = ctx.vp
    vp.actor = "lsass"
    assert ctx.system is not None and ctx.system.machine is not None
    type_logon(ctx.system.machine.ram, nt, logon)
    message = lsass.deliver_logon(nt, vp.cpu, process)
    stack = process_regions(ctx.system.machine.ram, process)[0].base  # its first VAD
    run = nt.run_user(vp.cpu, process, entry, stack, message, port)
    vp.actor = "nt"
    if run.terminated is not None:
        ctx.stops.append(run.terminated)


def a22_steps(ctx: AttackContext) -> None:
    target = lsass_process(ctx)
    entry = _lsass_entry(ctx, target)
    ctx.notes["lsass_entry"] = entry
    if entry is None:
        return
    hook = encode_thunk(payload_routine(_logon_hook))
    attacker = ctx.process(admin=True, name="patcher.exe")
    buffer = ctx.user_buffer(attacker)
    statuses = ctx.user(_patch_process, target.pid, entry, buffer, hook, process=attacker)
    if isinstance(statuses, list):
        ctx.notes["statuses"] = [NtStatus.name_of(s) for s in statuses]
    next_logon(ctx, NEXT_LOGON)


def a22_goal(ctx: AttackContext) -> bool:
    if ctx.system is None or ctx.system.nt is None:
        return False
    return nt_owf(NEXT_LOGON.password) in process_memory(ctx, lsass_process(ctx))


A22 = Scenario(
    id="A22",
    title="Patch lsass so the next logon keeps its credentials in VTL0",
    source="ipurple, 'Credential Guard' (2024): patched lsass / WDigest re-enabled (Akira, Qilin)",
    capability=Capability.A0,
    goal="the NT OWF of a logon made after the attack is readable in lsass's memory",
    expected={"vbs-off": S, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="lsass is VTL0 code: an administrator with SeDebugPrivilege can change it, and "
    "it then never hands new credentials to LsaIso; VBS does not stop this, only RunAsPPL or EDR "
    "would (vbs-internals §6 A22). Without Credential Guard the OWF is there anyway.",
    steps=a22_steps,
    goal_met=a22_goal,
)


# -- A27 -------------------------------------------------------------------------------------------
def _dump_and_hibernate(cpu: Cpu) -> list[int]:
    """A0 at CPL3: a live kernel dump with user pages, then ``shutdown /h``."""
    return [
        nt_dump.syscall(cpu, "NtSystemDebugControl", nt_dump.SYSDBG_GET_LIVE_KERNEL_DUMP),
        nt_dump.syscall(cpu, "NtInitiatePowerAction", nt_dump.POWER_ACTION_HIBERNATE),
    ]


def a27_steps(ctx: AttackContext) -> None:
    nt = ctx.booted.nt
    assert nt is not None
    if not nt_dump.registered(nt):
        # Stand-in for NtKernel registering its dump services at start-up (vbsim.nt.dump).
        nt_dump.register(nt)
    statuses = ctx.user(_dump_and_hibernate, admin=True)
    if isinstance(statuses, list):
        ctx.notes["statuses"] = [NtStatus.name_of(s) for s in statuses]


def a27_goal(ctx: AttackContext) -> bool:
    """The OWF's bytes are in a file NT wrote to disk (the attacker, or a thief of the disk,
    searches MEMORY.DMP / hiberfil.sys for it)."""
    nt = ctx.system.nt if ctx.system else None
    if nt is None:
        return False
    # ``type(...) is bytes``: a file's contents are bytes; a subclass whose ``__contains__``
    # says yes is not a file NT wrote (a second audit planted one).
    owf = _owf()
    return any(type(data) is bytes and owf in data for data in nt_dump.files(nt).values())


A27 = Scenario(
    id="A27",
    title="Recover the NT OWF from a memory dump or hiberfil.sys",
    source="WI7 part 1 ch. 3 and part 2 (trustlet pages encrypted for paging, hibernation, dumps)",
    capability=Capability.A0,
    goal="the logon's NT OWF appears in a dump file or the hibernation file",
    expected={"vbs-off": S, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B},
    expected_why="with Credential Guard the OWF lives only in LsaIso's VTL1 pages, which NT cannot "
    "read and the Secure Kernel hands out only encrypted (PREPARE_FOR_HIBERNATION / "
    "PREPARE_FOR_CRASHDUMP); without it lsass holds the OWF in clear (vbs-internals §5.3, §6 A27: "
    "none known)",
    steps=a27_steps,
    goal_met=a27_goal,
)


# -- A29 -------------------------------------------------------------------------------------------
def _rundown(cpu: Cpu, pid: int) -> int:
    """K0: SECURESERVICE_RUNDOWN_PROCESS on LsaIso's secure handle (from its EPROCESS)."""
    nt = nt_of(cpu)
    assert nt.vsl is not None
    target = nt.lookup_process(cpu, pid)  # PsLookupProcessByProcessId: the list in RAM
    handle = read_field(cpu, target.eprocess, EPROCESS.SecurePid) if target is not None else 0
    return nt.vsl.call(cpu, Service.RUNDOWN_PROCESS, handle)[0]


def _terminate(cpu: Cpu, pid: int) -> int:
    return syscall(cpu, "NtTerminateProcess", pid, 0xC000_0001)


def a29_steps(ctx: AttackContext) -> None:
    target = lsaiso_shadow(ctx)
    if target is None:
        return
    statuses = [
        ctx.kernel(_rundown, target.pid),
        ctx.user(_terminate, target.pid, admin=True),
    ]
    ctx.notes["statuses"] = [NtStatus.name_of(s) if isinstance(s, int) else s for s in statuses]


def lsaiso_answers(ctx: AttackContext) -> bool:
    """LsaIso can still answer lsass: its secure process lives and NT still routes to it."""
    alive = bool(trustlets(ctx, LSAISO_ID))
    return alive and ctx.system is not None and ctx.system.booted and lsaiso_shadow(ctx) is not None


A29 = Scenario(
    id="A29",
    title="Terminate LsaIso from VTL0 (denial of service on VTL1)",
    source="WI7 part 2 (NT schedules VTL1 threads); Amar & King, BH 2020; MS-IUM",
    capability=Capability.K0,
    goal="Credential Guard stops answering (LsaIso no longer runs)",
    expected={"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": S, "legacy-2019": S},
    expected_why="by design: VTL0 owns scheduling and may terminate trustlets; the Secure Kernel "
    "only clears their private pages (vbs-internals §6 A29, §7 'Termination')",
    steps=a29_steps,
    goal_met=lambda ctx: not lsaiso_answers(ctx),
    applicable=needs_credential_guard,
)


SCENARIOS = [A21, A22, A27, A29]
