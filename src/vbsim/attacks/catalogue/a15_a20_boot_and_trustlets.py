"""A15-A20: the boot chain and the trustlets themselves (vbs-internals §1, §3, §6, §7).

A15-A17 change what the next boot loads or reads — components on disk, the registry — and reboot;
the goal is read from the machine that comes up (which Secure Kernel or LsaIso runs, whether VBS
runs).  A18-A20 go after trustlets on a running machine: start a tampered or home-made one, start
a genuine one under another identity, read or debug LsaIso from VTL0.

A note on capabilities.  The model has no file-system calls, so A15/A16's file replacement (an
administrator's right: Windows Downdate takes over Windows Update's ``Pending.xml``/``poqexec``)
is a direct change of the system disk.  Starting a secure process has no NT system service in the
model either, so A18/A19 start trustlets from VTL0 ring 0 with NT's own ``create_secure_process``:
K0 can do everything A0 can, so a K0 attempt that fails fails for A0 too.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from vbsim.attacks.context import AttackContext
from vbsim.attacks.goals import loot_contains
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.boot.disk import VBS_REGISTRY_KEY
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.boot.trustlets import trustlet_image
from vbsim.hw.code import encode_thunk, guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.image import ComponentVersion
from vbsim.image.errors import ImageFormatError
from vbsim.image.parse import ParsedImage, parse_image
from vbsim.ium import lsaiso as _lsaiso  # noqa: F401  (registers lsaiso.main)
from vbsim.ium import vmsp
from vbsim.ium.images import LSAISO, VMSP
from vbsim.ium.lsaiso import TABLE_VA
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import EPROCESS, HostReader, read_field
from vbsim.nt.lsass import nt_owf
from vbsim.nt.process import Process
from vbsim.nt.secure_process import create_secure_process, run_trustlet
from vbsim.nt.syscalls import syscall
from vbsim.nt.vad import process_regions
from vbsim.ntstatus import NtStatus
from vbsim.policy import Component, Policy
from vbsim.signing import other_pki
from vbsim.sk.ium.process import SecureProcess
from vbsim.sk.sscn import Service

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
#: Blocked wherever VBS runs; meaningless without it.
VBS_BLOCKS = {"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B}
#: Succeeds wherever VBS runs without the hardened preset's revocation / UEFI lock / Mandatory.
ONLY_HARDENED_BLOCKS = {"vbs-off": N, "vbs": S, "vbs-hvci": S, "hardened": B, "legacy-2019": S}

#: The Windows 10 2004 (19041) generation Downdate rolled back to, with a lower SVN.
OLD = Component("10.0.19041.1", 3)
OLD_VERSION = str(ComponentVersion.parse(OLD.version, svn=OLD.svn))
LSAISO_ID = 1


def needs_vbs(policy: Policy) -> bool:
    return policy.vbs


def needs_credential_guard(policy: Policy) -> bool:
    return policy.vbs and policy.credential_guard


# -- host-side views (what a hardware debugger would read) ---------------------------------------
def nt_of(cpu: Cpu) -> NtKernel:
    """The kernel the VP runs in VTL0 (its GS base: NT's processor block)."""
    nt = cpu.kernel()
    assert isinstance(nt, NtKernel)
    return nt


def secure_processes(ctx: AttackContext) -> list[SecureProcess]:
    """The Secure Kernel's table of secure processes, as a VTL1 debugger would list it."""
    system = ctx.system
    if system is None or system.sk is None:
        return []
    if system.machine is None:
        return []
    table = system.sk.host_processes(system.machine.ram)
    return [p for p in table.values() if isinstance(p, SecureProcess)]


def trustlets(ctx: AttackContext, trustlet_id: int, live: bool = True) -> list[SecureProcess]:
    """The secure processes whose SKPROCESS (in VTL1 RAM) holds ``trustlet_id`` (and, with
    ``live``, is not terminated), as a VTL1 debugger reads them."""
    system = ctx.system
    if system is None or system.machine is None:
        return []
    ram = system.machine.ram
    return [
        p
        for p in secure_processes(ctx)
        if p.host_trustlet_id(ram) == trustlet_id and not (live and p.host_terminated(ram))
    ]


def lsaiso_shadow(ctx: AttackContext) -> Process | None:
    """LsaIso's VTL0 shadow process (Task Manager lists it: vbs-internals §7): the listed
    process whose EPROCESS.TrustletId in RAM is LsaIso's."""
    for process in ctx.booted.processes().values():  # the list in RAM
        view = ctx.view(process)  # its EPROCESS as RAM holds it now
        if view.trustlet_id == LSAISO_ID and not view.exiting:
            return process
    return None


def directory_table_base(ctx: AttackContext, process: Process) -> int:
    """The process's page-table root as its EPROCESS in RAM holds it now
    (``Pcb.DirectoryTableBase``), not the root NT's handle was built with."""
    from vbsim.guest.address_space import DIRECT_MAP

    machine = ctx.booted.machine
    assert machine is not None
    value = HostReader(machine.ram, DIRECT_MAP).field(process.eprocess, EPROCESS.DirectoryTableBase)
    return value & 0x000F_FFFF_FFFF_F000


def running_image(ctx: AttackContext, process: SecureProcess) -> ParsedImage | None:
    """The image a secure process runs, parsed from its image pages as RAM holds them now (the
    PFNs its SKPROCESS records: the section NT built, read-only to VTL0), not the SK's Python
    copy of what it admitted; None when the bytes are not an image."""
    machine = ctx.booted.machine
    assert machine is not None
    ram = machine.ram
    data = b"".join(ram.read(pfn << PAGE_SHIFT, PAGE_SIZE) for pfn in process.host_image_pfns(ram))
    try:
        return parse_image(data)
    except ImageFormatError:
        return None


def process_gpa(ctx: AttackContext, process: Process, va: int) -> int | None:
    """Host side (a debugger's walk of the process's tables in RAM, from the root its EPROCESS
    holds)."""
    from vbsim.hw.pagetable import PageTables, PhysAccess

    machine = ctx.booted.machine
    assert machine is not None
    root = directory_table_base(ctx, process)
    entry = PageTables(PhysAccess.direct(machine.ram, "debugger"), root).lookup(va)
    if entry is None:
        return None
    return (entry & 0x000F_FFFF_FFFF_F000) | (va & 0xFFF)


def process_memory(ctx: AttackContext, process: Process) -> bytes:
    """Every committed page of a VTL0 process, read from RAM (host side)."""
    machine = ctx.system.machine if ctx.system else None
    if machine is None:
        return b""
    return b"".join(
        machine.ram.read(pfn << PAGE_SHIFT, PAGE_SIZE)
        for region in process_regions(machine.ram, process)
        for pfn in region.pfns
    )


def booted_version(ctx: AttackContext, component: str) -> str | None:
    """The version of ``component`` the last boot verified and loaded (its boot record)."""
    system = ctx.system
    if system is None:
        return None
    for step in reversed(system.steps):
        if (
            step.get("step") == "secureboot"
            and step.get("outcome") == "verified"
            and step.get("component") == component
        ):
            version = step.get("version")
            return str(version) if version is not None else None
    return None


# -- code that runs: a fact about the CPU, seen by a debugger's breakpoint ----------------------
ATTACKER_ENTRY = "attack.a18.payload"


def runs(ctx: AttackContext, routine: str) -> list[tuple[int, int]]:
    """(VTL, CPL) of every execution of the breakpoint routine ``routine`` since the machine
    booted, as the processors that fetched its code recorded them (``Trace.executions``; the
    attacker's code can neither record nor forge one, hw.code)."""
    return ctx.trace.ran(routine)


@guest_code(ATTACKER_ENTRY, breakpoint=True)
def _attacker_trustlet(cpu: Cpu, message: int, length: int, reply: int) -> int:
    """The attacker's trustlet code: if it ever runs, it runs here (its breakpoint says so)."""
    return 0


def _start_and_run(cpu: Cpu, name: str, trustlet_id: int, image: bytes, message: bytes) -> int:
    """K0: CreateProcess with PS_CP_SECURE_PROCESS(trustlet_id) on ``image``, then let its thread
    run once with ``message`` (NT schedules trustlet threads)."""
    nt = nt_of(cpu)
    status, process = create_secure_process(nt, cpu, name, trustlet_id, image=image)
    if process is not None:
        run_trustlet(nt, cpu, process, message)
    return status


# -- A15 -------------------------------------------------------------------------------------------
def a15_sk_steps(ctx: AttackContext) -> None:
    # Downdate: the old, still validly signed securekernel.exe replaces the current one on disk.
    ctx.disk.components["securekernel.exe"] = OLD
    ctx.reboot()


def a15_sk_goal(ctx: AttackContext) -> bool:
    system = ctx.system
    return bool(
        system is not None
        and system.booted
        and system.vbs_running
        and booted_version(ctx, "securekernel.exe") == OLD_VERSION
    )


A15 = Scenario(
    id="A15",
    title="Downgrade securekernel.exe to an older signed build (Windows Downdate)",
    source="Leviev (SafeBreach), 'Windows Downdate', BH USA 2024; CVE-2024-21302; KB5042562",
    capability=Capability.A0,
    goal="after the reboot the old Secure Kernel (10.0.19041.1, SVN 3) runs",
    expected=ONLY_HARDENED_BLOCKS,
    expected_why="Secure Boot accepts an older image with a valid signature; only the opt-in "
    "SkuSiPolicy revocation (UEFI-locked) refuses it, and Mandatory then halts the boot "
    "(vbs-internals §1.2, §6 A15)",
    steps=a15_sk_steps,
    goal_met=a15_sk_goal,
    applicable=needs_vbs,
)


def a15_lsaiso_steps(ctx: AttackContext) -> None:
    # Downdate again: LsaIso.exe from before the CVE-2022-34709 fix, still validly signed.
    ctx.disk.trustlets[LSAISO] = OLD
    ctx.reboot()


def a15_lsaiso_goal(ctx: AttackContext) -> bool:
    """A live trustlet 1 runs the old image: its version resource, read from the image pages in
    RAM."""
    old = ComponentVersion.parse(OLD.version, svn=OLD.svn).numbers
    for p in trustlets(ctx, LSAISO_ID):
        image = running_image(ctx, p)
        if image is not None and image.version is not None and image.version.numbers == old:
            return True
    return False


A15_LSAISO = Scenario(
    id="A15-LsaIso",
    title="Downgrade LsaIso.exe to a build with CVE-2022-34709 (Windows Downdate)",
    source="Leviev, 'Windows Downdate' (2024): CVE-2022-34709 on a downgraded LsaIso; A23",
    capability=Capability.A0,
    goal="after the reboot the old LsaIso (10.0.19041.1, SVN 3) runs as trustlet 1",
    expected=ONLY_HARDENED_BLOCKS,
    expected_why="SKCI admits an old trustlet whose signature is valid unless a revocation "
    "policy sets a floor (vbs-internals §3.6 last bullet, §6 A15/A23)",
    steps=a15_lsaiso_steps,
    goal_met=a15_lsaiso_goal,
    applicable=needs_credential_guard,
)


# -- A16 -------------------------------------------------------------------------------------------
def a16_steps(ctx: AttackContext) -> None:
    # "Invalidated securekernel.exe": one byte changed after signing.
    current = ctx.disk.components["securekernel.exe"]
    ctx.disk.components["securekernel.exe"] = replace(current, tampered=True)
    ctx.reboot()


def runs_without_vbs(ctx: AttackContext) -> bool:
    system = ctx.system
    return bool(system is not None and system.booted and not system.vbs_running)


A16 = Scenario(
    id="A16",
    title="Invalidate securekernel.exe so Windows boots without VBS (UEFI-lock bypass)",
    source="Leviev, 'Windows Downdate' (2024); Microsoft 'Mandatory' flag (Oct 2024, MS-MemInt)",
    capability=Capability.A0,
    goal="after the reboot Windows runs, and VBS does not",
    expected=ONLY_HARDENED_BLOCKS,
    expected_why="winload falls back to booting without VBS when the Secure Kernel fails "
    "verification, even when UEFI-locked; DeviceGuard\\Mandatory=1 makes it halt instead "
    "(vbs-internals §1.4, §6 A16)",
    steps=a16_steps,
    goal_met=runs_without_vbs,
    applicable=needs_vbs,
    decisive=("mandatory",),
)


# -- A17 -------------------------------------------------------------------------------------------
def _set_value(cpu: Cpu, buffer: int, key: bytes, value: int) -> int:
    """A0 at CPL3: RegSetValueEx → NtSetValueKey, with the key's name in its own memory."""
    cpu.write(buffer, key)
    return syscall(cpu, "NtSetValueKey", buffer, len(key), value)


def a17_steps(ctx: AttackContext) -> None:
    process = ctx.process(admin=True, name="reg.exe")
    buffer = ctx.user_buffer(process)
    ctx.notes["status"] = ctx.user(
        _set_value, buffer, VBS_REGISTRY_KEY.encode(), 0, process=process
    )
    ctx.reboot()


A17 = Scenario(
    id="A17",
    title="Turn VBS off in the registry and reboot",
    source="Microsoft, 'Enable memory integrity' (MS-MemInt): Locked / UEFI lock; Amossys part 1",
    capability=Capability.A0,
    goal="after the reboot Windows runs, and VBS does not",
    expected=ONLY_HARDENED_BLOCKS,
    expected_why="winload reads EnableVirtualizationBasedSecurity from the registry, unless UEFI "
    "lock put the setting in a boot-services-only EFI variable (vbs-internals §1.1 row 3, §6 A17)",
    steps=a17_steps,
    goal_met=runs_without_vbs,
    applicable=needs_vbs,
)


# -- A18 -------------------------------------------------------------------------------------------
def patched_lsaiso(ctx: AttackContext) -> bytes:
    """LsaIso.exe from the disk with its entry point patched to jump to the attacker's code: the
    32 bytes of the entry thunk in .text change after signing."""
    original = ctx.disk.trustlet(LSAISO)
    thunk = encode_thunk("lsaiso.main")
    assert original.count(thunk) == 1
    return original.replace(thunk, encode_thunk(ATTACKER_ENTRY))


@functools.lru_cache(maxsize=4)
def home_made_trustlet(trustlet_id: int = 3) -> bytes:
    """A trustlet of the attacker's own: valid PE, valid .tPolicy, signed with the IUM EKU by a
    certificate chaining to a root that is not Microsoft's."""
    return trustlet_image(
        "IumBackdoor.exe",
        trustlet_id=trustlet_id,
        entry=ATTACKER_ENTRY,
        signer=other_pki().signer("ium"),
    )


def a18_steps(ctx: AttackContext) -> None:
    statuses = []
    statuses.append(ctx.kernel(_start_and_run, LSAISO, LSAISO_ID, patched_lsaiso(ctx), b"run"))
    statuses.append(ctx.kernel(_start_and_run, "IumBackdoor.exe", 3, home_made_trustlet(), b"run"))
    ctx.notes["statuses"] = [NtStatus.name_of(s) if isinstance(s, int) else s for s in statuses]


def a18_goal(ctx: AttackContext) -> bool:
    return (1, 3) in runs(ctx, ATTACKER_ENTRY)


A18 = Scenario(
    id="A18",
    title="Run a patched LsaIso.exe or a home-made trustlet in IUM",
    source="Microsoft, 'Isolated User Mode' (MS-IUM); WI7 part 1 ch. 3; Ionescu, BH 2015",
    capability=Capability.K0,
    goal="attacker-controlled code executes at VTL1 ring 3",
    expected=VBS_BLOCKS,
    expected_why="SKCI admits only images whose Authenticode digest matches and that chain to "
    "Microsoft with the IUM EKU; a patched image or another root is refused (vbs-internals §3.4, "
    "§3.6; no public bypass on production signing)",
    steps=a18_steps,
    goal_met=a18_goal,
    applicable=needs_vbs,
)


# -- A19 -------------------------------------------------------------------------------------------
def a19_steps(ctx: AttackContext) -> None:
    # vmsp.exe, genuinely signed with ApplicationId 2, asked to start as trustlet 1 (LsaIso), then
    # asked to seal data into what would be LsaIso's identity-bound secure storage.
    seal = (vmsp.OP_SEAL).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"whose storage?"
    status = ctx.kernel(_start_and_run, VMSP, LSAISO_ID, trustlet_image(VMSP), seal)
    ctx.notes["status"] = NtStatus.name_of(status) if isinstance(status, int) else status


def a19_goal(ctx: AttackContext) -> bool:
    """A secure process holds trustlet ID 1 (LsaIso's keys, storage, mailboxes) although its
    signed policy names another ApplicationId (the policy in its image pages in RAM)."""
    for p in trustlets(ctx, LSAISO_ID):
        image = running_image(ctx, p)
        policy = image.policy if image is not None else None
        if policy is not None and policy.application_id != LSAISO_ID:
            return True
    return False


A19 = Scenario(
    id="A19",
    title="Start a genuine trustlet (vmsp, ID 2) as trustlet 1",
    source="WI7 part 1 ch. 3 (trustlet identity; the ID must equal the signed ApplicationId)",
    capability=Capability.K0,
    goal="code signed as another trustlet runs with LsaIso's identity (trustlet ID 1)",
    expected=VBS_BLOCKS,
    expected_why="the Secure Kernel compares the requested trustlet ID with the policy's signed "
    "ApplicationId and refuses a mismatch (vbs-internals §3.5 step 4, §3.6; none known)",
    steps=a19_steps,
    goal_met=a19_goal,
    applicable=needs_vbs,
)


# -- A20 -------------------------------------------------------------------------------------------
#: How much of LsaIso's credential table the attacker asks for (its records start at +16).
A20_LENGTH = 0x100


def _read_remote(cpu: Cpu, pid: int, va: int, buffer: int, length: int) -> int:
    """A0 at CPL3 with SeDebugPrivilege: ReadProcessMemory → NtReadVirtualMemory."""
    return syscall(cpu, "NtReadVirtualMemory", pid, va, buffer, length)


def _debug_trustlet(cpu: Cpu, pid: int, va: int, buffer_pfn: int) -> list[int]:
    """K0: the debugger's secure calls, with the secure handles NT keeps for the trustlet."""
    nt = nt_of(cpu)
    assert nt.vsl is not None
    target = nt.lookup_process(cpu, pid)  # PsLookupProcessByProcessId: the list in RAM
    eprocess = target.eprocess if target is not None else 0
    handle = read_field(cpu, eprocess, EPROCESS.SecurePid) if eprocess else 0
    cookie = read_field(cpu, eprocess, EPROCESS.SecureThreadCookie) if eprocess else 0
    statuses = [
        nt.vsl.call(cpu, Service.DEBUG_PROCESS, handle)[0],
        nt.vsl.call(cpu, Service.GET_CONTEXT, cookie)[0],
        nt.vsl.call(cpu, Service.DEBUG_READ_WRITE_MEMORY, handle, va, buffer_pfn, A20_LENGTH, 0)[0],
    ]
    return statuses


def a20_steps(ctx: AttackContext) -> None:
    target = lsaiso_shadow(ctx)
    if target is None:
        return
    ctx.notes["secret"] = nt_owf(DEFAULT_LOGON.password)
    debugger = ctx.process(admin=True, name="windbg.exe")
    buffer = ctx.user_buffer(debugger)
    ctx.notes["a0_loot_gpa"] = process_gpa(ctx, debugger, buffer)
    ctx.notes["a0_status"] = ctx.user(
        _read_remote, target.pid, TABLE_VA, buffer, A20_LENGTH, process=debugger
    )
    _, loot_gpa = ctx.kernel_page()
    ctx.notes["loot_gpa"] = loot_gpa
    ctx.notes["k0_statuses"] = ctx.kernel(_debug_trustlet, target.pid, TABLE_VA, loot_gpa >> 12)


def a20_goal(ctx: AttackContext) -> bool:
    secret = ctx.notes.get("secret", b"")
    return loot_contains(ctx, secret) or loot_contains(ctx, secret, "a0_loot_gpa")


A20 = Scenario(
    id="A20",
    title="Read or debug LsaIso from VTL0 (ReadProcessMemory, DEBUG_* secure calls)",
    source="Microsoft, 'Isolated User Mode' (MS-IUM); WI7 part 1 ch. 3; Quarkslab",
    capability=Capability.K0,
    goal="bytes of LsaIso's private memory (a logon's NT OWF) reach the attacker",
    expected=VBS_BLOCKS,
    expected_why="the shadow process maps no private page of the trustlet, VTL0's SLAT has no "
    "access to them, and DEBUG_PROCESS / DEBUG_READ_WRITE_MEMORY are refused unless the signed "
    "Debug policy allows it — LsaIso's does not (vbs-internals §3.2, §6 A20, §7)",
    steps=a20_steps,
    goal_met=a20_goal,
    applicable=needs_credential_guard,
)

SCENARIOS = [A15, A15_LSAISO, A16, A17, A18, A19, A20]
