"""Seed statements: the four areas' boundaries stated as attacks (DESIGN.md "The four areas").

Each statement is a scenario with a goal checked from outside:
- "VTL0 kernel reads IUM user memory": K0 maps LsaIso's private page through its own PTEs.
- "IUM trustlet reads VTL0 kernel memory": a probe trustlet reads an NT kernel address.
- "IUM trustlet calls a disabled syscall": the probe calls NtSetValueKey from IUM.
- "VTL0 process calls a secure syscall": a standard user issues IumGetIdk's number.
- "K0 dumps lsass credentials": K0 attaches to lsass and copies its credential record.

The two IUM statements need code running in a trustlet.  The model's capabilities stop at K0 for
VTL0 and K1 for VTL1; there is none for "code inside a genuine trustlet".  The probe is therefore
a trustlet signed like Microsoft's own (the model PKI's IUM signer) that K0 starts through NT: it
stands for code execution gained inside a genuine trustlet, and what it can reach is the question.
"""

from __future__ import annotations

import functools
import os
import struct

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import host_lookup
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import (
    needs_credential_guard,
    needs_vbs,
    nt_of,
    trustlets,
)
from vbsim.attacks.context import AttackContext
from vbsim.attacks.goals import loot_contains
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.boot.trustlets import trustlet_image
from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.pagetable import PageTables
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.ium import iumbase
from vbsim.ium.lsaiso import TABLE_VA
from vbsim.nt import lsass
from vbsim.nt.layouts import EPROCESS, read_field
from vbsim.nt.lsass import nt_owf
from vbsim.nt.secure_process import create_secure_process, run_trustlet
from vbsim.nt.vad import region_at
from vbsim.ntstatus import NtStatus
from vbsim.sk.ium.process import HEAP_VA, PRIVATE_BASE
from vbsim.sk.ium.syscalls import SECURE_NUMBERS

B, S, N = Outcome.BLOCKED, Outcome.SUCCEEDED, Outcome.NOT_APPLICABLE
VBS_BLOCKS = {"vbs-off": N, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B}
#: An unused kernel VA where K0 maps its window (as A1 does).
WINDOW_VA = 0xFFFF_F8A0_0010_0000
LSAISO_ID = 1
#: The probe starts as trustlet 3 (vTPM provisioning, vbs-internals §3.2): an ID the SK knows that
#: no other trustlet of the model uses.
PROBE_ID = 3
PROBE_ENTRY = "attack.seed.probe"
PROBE_READ, PROBE_SET_VALUE = 1, 2
#: Where the probe keeps what it got (its private heap, clear of iumbase's scratch areas).
PROBE_OUT = HEAP_VA + 0x400
IUM_REGISTRY_KEY = r"HKLM\SOFTWARE\vbsim\WrittenFromIum"
IUM_REGISTRY_VALUE = 0x1F


# -- the probe trustlet --------------------------------------------------------------------------
@guest_code(PROBE_ENTRY)
def _probe(cpu: Cpu, message: int, length: int, reply: int) -> int:
    """Trustlet code at VTL1 CPL3: READ (u64 VA, u64 length) copies what it reads into its heap
    and its reply; SET_VALUE (u64 value, key bytes) calls NtSetValueKey with the key in its heap."""
    if length < 8:
        return 0
    op = cpu.read_u32(message)
    if op == PROBE_READ and length >= 24:
        va, size = struct.unpack("<QQ", cpu.read(message + 8, 16))
        data = cpu.read(va, min(size, 0x200))
        cpu.write(PROBE_OUT, data)
        cpu.write(reply, data)
        return len(data)
    if op == PROBE_SET_VALUE and length > 16:
        value = cpu.read_u64(message + 8)
        key = cpu.read(message + 16, min(length - 16, 0x200))
        cpu.write(PROBE_OUT, key)
        status = iumbase.nt_syscall(cpu, "NtSetValueKey", PROBE_OUT, len(key), value)
        cpu.write(reply, status.to_bytes(8, "little"))
        return 8
    return 0


@functools.lru_cache(maxsize=2)
def probe_image() -> bytes:
    return trustlet_image("IumProbe.exe", trustlet_id=PROBE_ID, entry=PROBE_ENTRY)


def _run_probe(cpu: Cpu, message: bytes, loot_va: int, image: bytes) -> int:
    """K0: start the probe trustlet (``image``: its signed file, which the host's build
    produced) and run it once with ``message``, keep its reply in loot."""
    nt = nt_of(cpu)
    status, process = create_secure_process(nt, cpu, "IumProbe.exe", PROBE_ID, image=image)
    if process is None:
        return status
    run = run_trustlet(nt, cpu, process, message)
    cpu.write(loot_va, run.reply[:PAGE_SIZE])
    return run.status


def _probe_memory(ctx: AttackContext) -> bytes:
    """The probe's private pages, read from RAM (host side)."""
    machine = ctx.system.machine if ctx.system else None
    if machine is None:
        return b""
    return b"".join(
        machine.ram.read(pfn << PAGE_SHIFT, PAGE_SIZE)
        for p in trustlets(ctx, PROBE_ID, live=False)
        for pfn in p.host_private_pfns(machine.ram)
    )


def _probe_bytes(ctx: AttackContext, va: int, length: int) -> bytes:
    """``length`` bytes at ``va`` in the probe trustlet, through its page tables as RAM holds
    them (host side; b"" if the probe or the page is not there)."""
    machine = ctx.system.machine if ctx.system else None
    if machine is None:
        return b""
    for probe in trustlets(ctx, PROBE_ID, live=False):
        leaf = host_lookup(ctx, probe.host_root(machine.ram), va)
        if leaf is not None:
            gpa = (leaf & PTE_ADDR_MASK) | (va & (PAGE_SIZE - 1))
            return machine.ram.read(gpa, length)
    return b""


# -- VTL0 kernel reads IUM user memory -------------------------------------------------------
def _map_and_read(cpu: Cpu, root: int, target_gpa: int, loot_va: int) -> None:
    """K0: a PTE in NT's own tables for the target GPA, then a read through it."""
    tables = PageTables(nt_of(cpu).phys(cpu), root=root)
    tables.map(WINDOW_VA, target_gpa & ~0xFFF, int(Pte.NX))
    cpu.invlpg(WINDOW_VA)
    cpu.write(loot_va, cpu.read(WINDOW_VA + (target_gpa & 0xFFF), 0x100))


def kernel_reads_ium_steps(ctx: AttackContext) -> None:
    lsaiso = next(iter(trustlets(ctx, LSAISO_ID, live=False)), None)
    if lsaiso is None:
        return
    # LsaIso's credential table sits in its third private page (vbsim.ium.lsaiso.TABLE_VA).  NT
    # handed these pages to the SK itself (a normal call): knowing the GPA is not reading it.
    page = (TABLE_VA - PRIVATE_BASE) >> PAGE_SHIFT
    machine = ctx.booted.machine
    assert machine is not None
    target_gpa = (lsaiso.host_private_pfns(machine.ram)[page] << PAGE_SHIFT) | (TABLE_VA & 0xFFF)
    ctx.notes["secret"] = nt_owf(DEFAULT_LOGON.password)
    loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
    nt = ctx.booted.nt
    assert nt is not None
    ctx.kernel(_map_and_read, nt.space.root, target_gpa, loot_va)


KERNEL_READS_IUM = Scenario(
    id="SEED-K0-IUM",
    title="VTL0 kernel reads IUM user memory",
    source="DESIGN.md 'The four areas'; WI7-P2; MS-IUM (trustlet private pages)",
    capability=Capability.K0,
    goal="bytes of LsaIso's private heap (a logon's NT OWF) reach K0's buffer",
    expected=VBS_BLOCKS,
    expected_why="a trustlet's private pages have no access in VTL0's SLAT: a K0 read through "
    "its own PTEs is a SLAT violation, never data (vbs-internals §1.3, §7)",
    steps=kernel_reads_ium_steps,
    goal_met=lambda ctx: loot_contains(ctx, ctx.notes.get("secret", b"")),
    applicable=needs_credential_guard,
)


# -- IUM trustlet reads VTL0 kernel memory --------------------------------------------------------
def ium_reads_kernel_steps(ctx: AttackContext) -> None:
    marker = b"NT-KERNEL-SECRET" + os.urandom(16)
    ctx.notes["marker"] = marker
    target_va, _ = ctx.kernel_page()  # an NT kernel page (its direct-map VA) holding a secret
    ctx.kernel(lambda vp: vp.write(target_va, marker))
    loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
    message = struct.pack("<IIQQ", PROBE_READ, 0, target_va, len(marker))
    ctx.notes["status"] = ctx.kernel(_run_probe, message, loot_va, probe_image())


def ium_reads_kernel_goal(ctx: AttackContext) -> bool:
    """The marker is where the probe keeps what it read (PROBE_OUT in its heap), not merely
    somewhere in its pages: the message K0 sends is copied into them too (a third audit put the
    marker in the message)."""
    marker = ctx.notes.get("marker", b"")
    return bool(marker) and _probe_bytes(ctx, PROBE_OUT, len(marker)) == marker


IUM_READS_KERNEL = Scenario(
    id="SEED-IUM-K0",
    title="IUM trustlet reads VTL0 kernel memory",
    source="DESIGN.md 'The four areas'; WI7-P1-ch3 (trustlets reach only themselves)",
    capability=Capability.K0,
    goal="bytes of an NT kernel page reach the trustlet",
    expected=VBS_BLOCKS,
    expected_why="a trustlet runs on the Secure Kernel's page tables for its process: NT's "
    "kernel addresses are not user pages there (paging), and VTL1 ring 3 reaches the kernel only "
    "through system calls (vbs-internals §0, §3)",
    steps=ium_reads_kernel_steps,
    goal_met=ium_reads_kernel_goal,
    applicable=needs_vbs,
)


# -- IUM trustlet calls a disabled syscall --------------------------------------------------------
def ium_disabled_syscall_steps(ctx: AttackContext) -> None:
    ctx.notes["mark"] = ctx.trace.now
    key = IUM_REGISTRY_KEY.encode()
    message = struct.pack("<IIQ", PROBE_SET_VALUE, 0, IUM_REGISTRY_VALUE) + key
    loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
    ctx.notes["status"] = ctx.kernel(_run_probe, message, loot_va, probe_image())


def ium_disabled_syscall_goal(ctx: AttackContext) -> bool:
    """The value is in the hive, and the Secure Kernel forwarded the trustlet's NtSetValueKey
    to NT: its IUM filter's decision, an event stamped VTL1 by the processor (K0 writing the
    value through NT itself, as a third audit did, is not the trustlet's call)."""
    nt = ctx.system.nt if ctx.system else None
    if nt is None or ctx.hive().get(IUM_REGISTRY_KEY) != IUM_REGISTRY_VALUE:
        return False
    return _vtl1_event(ctx, "ium.syscall-filter", "NtSetValueKey", "forwarded")


IUM_DISABLED_SYSCALL = Scenario(
    id="SEED-IUM-SYSCALL",
    title="IUM trustlet calls a disabled NT system call (NtSetValueKey)",
    source="WI7-P2 (IUM system-call filter); vbs-internals §4.1 'Not available'",
    capability=Capability.K0,
    goal="the registry value the trustlet asked for is written",
    expected=VBS_BLOCKS,
    expected_why="the Secure Kernel's IUM filter answers registry services with "
    "STATUS_INVALID_SYSTEM_SERVICE; they never reach NT (vbs-internals §2.6, §4.1)",
    steps=ium_disabled_syscall_steps,
    goal_met=ium_disabled_syscall_goal,
    applicable=needs_vbs,
)


# -- VTL0 process calls a secure syscall ----------------------------------------------------------
FILL = b"\xaa" * 64


def _secure_syscall_from_vtl0(cpu: Cpu, buffer: int) -> int:
    """A standard user at VTL0 CPL3: IumGetIdk's number (bit 27 set), as iumdll would issue it."""
    cpu.write(buffer, FILL)
    cpu.rax = SECURE_NUMBERS["IumGetIdk"]
    cpu.r10, cpu.rdx, cpu.r8, cpu.r9 = 0, buffer, 32, 0
    cpu.syscall()
    return cpu.rax


def vtl0_secure_syscall_steps(ctx: AttackContext) -> None:
    process = ctx.process(admin=False, name="user.exe")
    buffer = ctx.user_buffer(process)
    ctx.notes["process"], ctx.notes["buffer"] = process, buffer
    ctx.notes["mark"] = ctx.trace.now
    status = ctx.user(_secure_syscall_from_vtl0, buffer, process=process)
    ctx.notes["status"] = NtStatus.name_of(status) if isinstance(status, int) else status


def vtl0_secure_syscall_goal(ctx: AttackContext) -> bool:
    """The secure service ran: it wrote its output (an identity key) over the caller's buffer."""
    process, buffer = ctx.notes.get("process"), ctx.notes.get("buffer")
    machine = ctx.system.machine if ctx.system else None
    if machine is None or process is None or buffer is None:
        return False
    region = region_at(machine.ram, process, buffer)
    if region is None:
        return False
    offset = buffer - region.base
    pfn = region.pfns[offset // PAGE_SIZE]
    data = machine.ram.read((pfn << PAGE_SHIFT) + offset % PAGE_SIZE, len(FILL))
    # The buffer changed and the Secure Kernel's secure service table served IumGetIdk (an
    # event the processor stamps VTL1): the caller overwriting its own buffer is neither.
    served = _vtl1_event(ctx, "secure-service-table", "IumGetIdk", "STATUS_SUCCESS")
    return data != FILL and served


def _vtl1_event(ctx: AttackContext, mechanism: str, service: str, outcome: str) -> bool:
    """An ``ium-syscall`` event of ``mechanism`` for ``service`` with ``outcome``, recorded at
    VTL1 after the step's mark (the processor stamps each event with its VTL)."""
    mark = ctx.notes.get("mark")
    if not isinstance(mark, int):
        return False
    return any(
        e.seq > mark
        and e.vtl == 1
        and e.kind == "ium-syscall"
        and e.mechanism == mechanism
        and e.detail.get("service") == service
        and e.outcome == outcome
        for e in ctx.trace.events
    )


VTL0_SECURE_SYSCALL = Scenario(
    id="SEED-U0-SECURE-SYSCALL",
    title="VTL0 process calls a secure system call (IumGetIdk)",
    source="vbs-internals §2.6 (secure system calls are IUM → SK only)",
    capability=Capability.U0,
    goal="the secure service runs for a VTL0 caller (its output lands in the caller's buffer)",
    expected=VBS_BLOCKS,
    expected_why="a VTL0 syscall enters NT's LSTAR entry, not the Secure Kernel's; NT has no "
    "service at that number and returns STATUS_INVALID_SYSTEM_SERVICE (vbs-internals §2.6)",
    steps=vtl0_secure_syscall_steps,
    goal_met=vtl0_secure_syscall_goal,
    applicable=needs_vbs,
)


# -- K0 dumps lsass credentials -------------------------------------------------------------------
def _attach_and_copy(cpu: Cpu, eprocess: int, va: int, length: int, loot_va: int) -> None:
    """K0: KeStackAttachProcess(lsass) — CR3 from its KPROCESS.DirectoryTableBase, read
    from RAM — then copy the record with SMAP lifted."""
    saved = cpu.read_cr(3)
    cpu.mov_to_cr(3, read_field(cpu, eprocess, EPROCESS.DirectoryTableBase))
    try:
        cpu.stac()
        data = cpu.read(va, length)
        cpu.clac()
    finally:
        cpu.mov_to_cr(3, saved)
    cpu.write(loot_va, data)


def k0_dumps_lsass_steps(ctx: AttackContext) -> None:
    nt = ctx.booted.nt
    assert nt is not None
    pid, va, length = lsass.credential_region(nt)  # what symbols tell mimikatz
    loot_va, ctx.notes["loot_gpa"] = ctx.kernel_page()
    ctx.notes["secret"] = nt_owf(DEFAULT_LOGON.password)
    ctx.kernel(_attach_and_copy, ctx.booted.process(pid).eprocess, va, length, loot_va)


K0_DUMPS_LSASS = Scenario(
    id="SEED-K0-LSASS",
    title="K0 dumps lsass credentials (sekurlsa::logonpasswords)",
    source="vbs-internals §5.3 ('What mimikatz sees in lsass'); ipurple-CG",
    capability=Capability.K0,
    goal="the logon's NT OWF reaches K0's buffer",
    expected={"vbs-off": S, "vbs": B, "vbs-hvci": B, "hardened": B, "legacy-2019": B},
    expected_why="without Credential Guard lsass holds the OWF in clear in VTL0; with it lsass "
    "holds only LsaIso's encrypted '[LSA Isolated Data]' blob (vbs-internals §5.3)",
    steps=k0_dumps_lsass_steps,
    goal_met=lambda ctx: loot_contains(ctx, ctx.notes.get("secret", b"")),
)

SCENARIOS = [
    KERNEL_READS_IUM,
    IUM_READS_KERNEL,
    IUM_DISABLED_SYSCALL,
    VTL0_SECURE_SYSCALL,
    K0_DUMPS_LSASS,
]
