"""D8: IRP hook — a K0 write points a signed driver's device-control dispatch at attacker code.

Issue 10 part 3 ("other data-only rows a defender would ask about").  The I/O manager calls a
driver through its DRIVER_OBJECT: ``NtDeviceIoControlFile`` finds the object by name in the
``\\Driver`` directory and calls ``MajorFunction[IRP_MJ_DEVICE_CONTROL]``, read from the object
at each request (``vbsim.nt.drivers``, ``vbsim.nt.objdir``).  Overwriting that pointer is the
classic IRP hook (Hoglund & Butler, *Rootkits: Subverting the Windows Kernel*, 2005, ch. 4
"hooking a driver's IRP function table"; the technique EDR and anti-cheat drivers check for).

The attacker, with a kernel read/write primitive, puts its routine in memory it made
executable — executable pool from NT, or a page it maps itself with a PTE that has RW and no NX
(as A3-RWX) — looks the signed sample driver up in ``\\Driver`` and writes the routine's address
into the driver object.  Then a *standard user* asks the driver something, and NT, at CPL0,
calls whatever the object says.

Goal, judged by a breakpoint on the attacker's routine: it ran in VTL0 ring 0, called by NT for
the user's request.

Expected outcome: the pointer is data in ordinary nonpaged pool, which neither HVCI nor KDP
protects, so the write itself succeeds everywhere.  What HVCI decides is the call: without it
NT executes the attacker's page; with it, SLAT lets VTL0 execute only pages SKCI validated
(vbs-internals §5.1), so the routine never runs.  NT makes the call through
guard_dispatch_icall (kernel CFG, ``vbsim.nt.kcfg``): without HVCI that checks only that the
target is a kernel address, which the attacker's page is; with HVCI the page is in no image's
GuardCFFunctionTable (executable pool gets no bits), so NT bugchecks with
KERNEL_SECURITY_CHECK_FAILURE before it fetches the page — the same presets block it, now one
check earlier.  A hook that points at code already validated (a signed driver's or the kernel's
own routine) is not stopped by HVCI; kCFG stops it where that code is no valid call target:
catalogue row D9.  The model's expectation follows A3-RWX; the public record gives no
per-configuration outcome for IRP hooks as such.
"""

from __future__ import annotations

from vbsim.attacks.catalogue.a03_a14_memory_code_dma import (
    HVCI_BLOCKS,
    IOCTL_AT,
    NAME_AT,
    place_rwx,
)
from vbsim.attacks.catalogue.a15_a20_boot_and_trustlets import nt_of, runs
from vbsim.attacks.context import AttackContext, payload_routine
from vbsim.attacks.model import Capability, Scenario
from vbsim.hw.cpu import Cpu
from vbsim.nt import drivers, objdir
from vbsim.nt.syscalls import syscall
from vbsim.ntstatus import NtStatus

#: The victim: a signed driver any process may send requests to (model devices carry no ACL).
VICTIM = drivers.SAMPLE_DRIVER
#: An IOCTL the victim's own routine would answer (its echo), in the user's request.
IOCTL = 0x0022_2000
#: Unused kernel VA where the attacker maps its page when NT gives no executable pool.
WINDOW_VA = 0xFFFF_F8A2_0000_0000


def _hook_routine(cpu: Cpu, device: int, irp: int) -> int:
    """The attacker's dispatch routine: it answers the request itself, in the IRP's
    SystemBuffer."""
    _, buffer, length = drivers.irp_request(cpu, irp)
    cpu.write(buffer, b"hooked".ljust(length, b"\0"))
    return drivers.complete_request(cpu, irp, int(NtStatus.SUCCESS), length)


HOOK = payload_routine(_hook_routine, breakpoint=True)


def _hook(cpu: Cpu, name: str, window: int) -> str:
    """K0: the routine into executable memory of the attacker's making (as A3-RWX), then its
    address into ``name``'s DRIVER_OBJECT (found in ``\\Driver`` as ObReferenceObjectByName
    finds it)."""
    target, path = place_rwx(cpu, HOOK, window)
    driver_object = objdir.lookup(nt_of(cpu), cpu, name)
    if not driver_object:
        return "no-driver"
    cpu.write_u64(driver_object + drivers.DO_IOCONTROL, target)
    return path


def _request(cpu: Cpu, buffer: int, name: str) -> int:
    """A standard user's DeviceIoControl to the driver."""
    raw = name.encode()
    cpu.write(buffer + NAME_AT, raw)
    return syscall(
        cpu, "NtDeviceIoControlFile", buffer + NAME_AT, len(raw), IOCTL, buffer + IOCTL_AT
    )


def _load(cpu: Cpu, name: str) -> int:
    """The victim driver loads (signed: NT's code integrity, or SKCI under HVCI, admits it)."""
    return drivers.load_driver(nt_of(cpu), cpu, name)


def d8_steps(ctx: AttackContext) -> None:
    ctx.notes["load"] = NtStatus.name_of(ctx.kernel(_load, VICTIM))
    ctx.notes["path"] = ctx.kernel(_hook, VICTIM, WINDOW_VA)
    user = ctx.process(admin=False, name="d8.exe")
    status = ctx.user(_request, ctx.user_buffer(user), VICTIM, process=user)
    ctx.notes["request"] = NtStatus.name_of(status) if isinstance(status, int) else str(status)


D8 = Scenario(
    id="D8",
    title="IRP hook: point a signed driver's device-control dispatch at attacker code",
    source="Hoglund & Butler, Rootkits (2005) ch. 4 (IRP function-table hooks); Vergilius "
    "19041 _DRIVER_OBJECT.MajorFunction; vbs-internals §5.1 (HVCI: SLAT executes only "
    "validated pages)",
    capability=Capability.K0,
    goal="the attacker's routine runs in VTL0 ring 0, called by NT for a standard user's "
    "request to the hooked driver",
    expected=HVCI_BLOCKS,
    expected_why="the dispatch pointer is ordinary nonpaged pool (no HVCI, no KDP), so the "
    "write succeeds everywhere; without HVCI NT then executes the attacker's page, with HVCI "
    "SLAT refuses to execute a page SKCI did not validate (vbs-internals §5.1), and kernel CFG, "
    "fully on with HVCI only, refuses the call first: the page is no valid call target (McGarr "
    "2022). A hook to already-validated code is not stopped by HVCI; kCFG checks only that it is "
    "a valid target (row D9). The public record gives no per-configuration outcome: the "
    "model's, as A3-RWX",
    steps=d8_steps,
    goal_met=lambda ctx: (0, 0) in runs(ctx, HOOK),
)

SCENARIOS = [D8]
