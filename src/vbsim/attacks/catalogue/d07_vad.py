"""D7: VAD tampering — a K0 write to a process's VAD changes what NT then permits.

Issue 10 part 3 ("other data-only rows a defender would ask about ... VAD tampering").  A victim
process holds a secured range: a page it mapped so that nobody may change its protection (a
SEC_NO_CHANGE view, or MmSecureVirtualMemoryEx with MM_SECURE_NO_CHANGE, ntdoc / WDK: "no
protection changes are allowed for the supplied virtual address region"; anti-tamper and
anti-cheat software secure their code this way).  NT records that in the range's VAD:
``_MMVAD_SHORT.u.VadFlags.NoChange`` (Vergilius 19041), and NtProtectVirtualMemory refuses a
NoChange VAD with STATUS_INVALID_PAGE_PROTECTION (ReactOS ARM3 ``MiProtectVirtualMemory``, WRK
``MiCheckSecuredVad``).  So an administrator holding SeDebugPrivilege cannot make the page
writable, and therefore cannot patch it through NtWriteVirtualMemory.

The attacker with a kernel read/write primitive walks PsActiveProcessHead to the victim's
EPROCESS, searches its VadRoot tree for the VAD holding the address (BlackBone's ``BBFindVAD``:
``MiFindNodeOrParent`` over EPROCESS.VadRoot with the StartingVpn/EndingVpn(+High) keys) and
clears NoChange — the class of VAD edit BlackBone's ``BBProtectMemory`` and ``BBHideVAD`` make
(DarthTon/Blackbone, ``src/BlackBoneDrv``), and that memory-forensics work on anti-forensic VAD
manipulation describes.  No code is written, no PTE is touched by the attacker: NT itself then
changes the page's protection, because its decision reads the VAD in RAM.

Goal, judged host side: the refusal before (STATUS_INVALID_PAGE_PROTECTION), NT's consent after
(STATUS_SUCCESS), and the victim's secured page holding the attacker's bytes in RAM.

Expected outcome: the public record is silent on VAD tampering per VBS configuration.  The model
expects success everywhere because VADs are ordinary nonpaged pool, which neither HVCI (it
guards code, not data) nor KDP (only what a driver registers; MS-KDP blog 2020-07-08) protects
— the same reasoning as D1-D4.  That expectation is the model's, not a record match.
"""

from __future__ import annotations

from vbsim.attacks.catalogue.d01_d05_data_only import EVERYWHERE, find_eprocess
from vbsim.attacks.context import AttackContext
from vbsim.attacks.model import Capability, Scenario
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt.layouts import EPROCESS, MMVAD_FLAGS, MMVAD_SHORT, RTL_BALANCED_NODE
from vbsim.nt.process import Process, Token
from vbsim.nt.syscalls import PAGE_READWRITE, syscall
from vbsim.nt.vad import region_at
from vbsim.ntstatus import NtStatus

#: What the victim's secured page holds (its "code"), and the attacker's patch.
ORIGINAL = b"\x48\x8b\xc4 anti-tamper check: return 1 \xc3"
PATCH = b"\x31\xc0\xc3 patched: the check is gone     "
DATA_AT = 0x100


def _find_vad(vp: Cpu, eprocess: int, va: int) -> int:
    """K0 (BBFindVAD): the node of ``eprocess``'s VAD tree whose extent holds ``va``; 0 if none."""
    vpn = va >> PAGE_SHIFT
    node: int = vp.read_u64(eprocess + EPROCESS.VadRoot.offset)
    for _ in range(64):
        if not node:
            return 0
        start = vp.read_u32(node + MMVAD_SHORT.StartingVpn.offset)
        start |= vp.read(node + MMVAD_SHORT.StartingVpnHigh.offset, 1)[0] << 32
        end = vp.read_u32(node + MMVAD_SHORT.EndingVpn.offset)
        end |= vp.read(node + MMVAD_SHORT.EndingVpnHigh.offset, 1)[0] << 32
        if vpn < start:
            node = vp.read_u64(node + RTL_BALANCED_NODE.Left.offset)
        elif vpn > end:
            node = vp.read_u64(node + RTL_BALANCED_NODE.Right.offset)
        else:
            return node
    return 0


def _unsecure(vp: Cpu, head: int, pid: int, va: int) -> int:
    """K0: clear VadFlags.NoChange in the victim's VAD for ``va``; the node's VA (0: not found)."""
    eprocess = find_eprocess(vp, head, pid)
    node = _find_vad(vp, eprocess, va) if eprocess else 0
    if node:
        flags = node + MMVAD_SHORT.LongFlags.offset
        vp.write_u32(flags, vp.read_u32(flags) & ~MMVAD_FLAGS.NO_CHANGE)
    return node


def _patch(vp: Cpu, pid: int, va: int, buffer: int) -> tuple[int, int]:
    """A0: VirtualProtectEx(victim, page, PAGE_READWRITE), then WriteProcessMemory the patch."""
    protected = syscall(vp, "NtProtectVirtualMemory", pid, va, PAGE_SIZE, PAGE_READWRITE)
    if protected != NtStatus.SUCCESS:
        return protected, 0
    vp.write(buffer + DATA_AT, PATCH)
    written = syscall(vp, "NtWriteVirtualMemory", pid, va, buffer + DATA_AT, len(PATCH))
    return protected, written


def _status(value: object) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return NtStatus.name_of(value[0])
    return str(value)


def d7_steps(ctx: AttackContext) -> None:
    nt, machine = ctx.booted.nt, ctx.booted.machine
    assert nt is not None and machine is not None
    cpu = ctx.vp.cpu
    # The victim: a standard user's process whose page is secured (NoChange VAD), its "code".
    victim = nt.create_process(cpu, "anticheat.exe", Token("user"))
    secured = nt.allocate(cpu, victim, PAGE_SIZE, writable=True, secured=True)
    machine.ram.write(secured.pfns[0] << PAGE_SHIFT, ORIGINAL)  # the loader's image bytes
    admin = ctx.process(admin=True, name="d7.exe")
    buffer = ctx.user_buffer(admin)
    args = (victim.pid, secured.base, buffer)
    ctx.notes.update(victim=victim, va=secured.base)
    ctx.notes["before"] = _status(ctx.user(_patch, *args, process=admin))
    ctx.notes["node"] = ctx.kernel(_unsecure, nt.process_head, victim.pid, secured.base)
    ctx.notes["after"] = _status(ctx.user(_patch, *args, process=admin))


def d7_goal(ctx: AttackContext) -> bool:
    """NT refused the protection change while the VAD said NoChange, permitted it after the K0
    write, and the victim's secured page now holds the attacker's bytes in RAM."""
    victim, va = ctx.notes.get("victim"), ctx.notes.get("va")
    machine = ctx.system.machine if ctx.system else None
    if not isinstance(victim, Process) or not isinstance(va, int) or machine is None:
        return False
    if (ctx.notes.get("before"), ctx.notes.get("after")) != (
        "STATUS_INVALID_PAGE_PROTECTION",
        "STATUS_SUCCESS",
    ):
        return False
    region = region_at(machine.ram, victim, va)
    if region is None or not region.pfns:
        return False
    return machine.ram.read(region.pfns[0] << PAGE_SHIFT, len(PATCH)) == PATCH


D7 = Scenario(
    id="D7",
    title="VAD tampering: clear a secured VAD's NoChange flag, then make the page writable",
    source="Vergilius 19041 _MMVAD_SHORT / _MMVAD_FLAGS (NoChange bit 3); ReactOS ARM3 "
    "MiProtectVirtualMemory and WRK MiCheckSecuredVad (NoChange → STATUS_INVALID_PAGE_"
    "PROTECTION); MmSecureVirtualMemoryEx MM_SECURE_NO_CHANGE (WDK); BlackBone BBFindVAD / "
    "BBProtectMemory / BBHideVAD (VAD edits from a driver)",
    capability=Capability.K0,
    goal="an administrator changes the protection of, and patches, a page whose VAD is "
    "NoChange, after a K0 write to that VAD in RAM",
    expected=EVERYWHERE,
    expected_why="no public source gives VAD tampering's outcome per VBS configuration: the "
    "expectation is the model's (VADs are ordinary nonpaged pool; HVCI guards code and KDP only "
    "registered sections, as for D1-D4), not a record match",
    steps=d7_steps,
    goal_met=d7_goal,
)

SCENARIOS = [D7]
