"""The attacker's handle on a machine: only the architectural interface of its capability.

- U0 / A0: a VTL0 user process (standard user or administrator with SeDebugPrivilege and
  SeLoadDriverPrivilege) whose code runs at CPL3 and reaches the kernel through ``syscall``.
- K0: code running in VTL0 ring 0.  On an HVCI machine an attacker cannot bring new kernel code, so
  a K0 payload stands for what a kernel read/write primitive plus code reuse (ROP/JOP over signed
  code, which HVCI does not stop — vbs-internals §5.1, §6 A7) can do: touch any VTL0 virtual or
  physical address through NT's own page tables, edit PTEs, execute ``vmcall``, ``wrmsr``,
  ``mov cr``, call NT's ``Vsl*`` stubs with any arguments, program devices.  The vulnerable signed
  driver gives the same read/write primitive through ``NtDeviceIoControlFile`` (``rw_driver``).
- PHYS: a malicious DMA device on the bus (no driver needed).
- K1: code in VTL1 ring 0 — the Secure Kernel itself compromised.

Payload routines are guest code (the *steps* of a scenario, ``tests/architecture``): Python
callables that receive the processor's :class:`~vbsim.hw.cpu.Cpu` and nothing else of the
machine.  How each capability's code comes to run:

- K0 and K1 are **host-side entries**: the scenario *postulates* that the attacker already has
  code execution in that mode (a ROP chain in NT, a compromised Secure Kernel), as a debugger
  would resume a thread at a chosen address.  K0 runs where NT runs after boot (VTL0 CPL0) and
  changes no mode.  K1 makes VTL1 live with
  :meth:`~vbsim.hw.vp.VirtualProcessor.host_entry` — host-side, like a hardware debugger
  switching the processor's context, and traced as a ``vtl``/``host-entry`` switch so that
  invariant 7 (and any reader of the trace) sees where the postulate begins and ends.  Guest
  code itself changes mode only through gates.
- U0 and A0 run at CPL3 in a process NT created, entered the way NT enters user code
  (``nt.run_user``: ``sysret``-style entry, back by ``syscall`` or the exception gate).

Attackers allocate memory through NT like any driver (``NtKernel.alloc_kernel_page``), never
from the host's frame allocator.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vbsim.boot.chain import System, boot
from vbsim.boot.disk import Disk
from vbsim.hv.crash import GuestCrash
from vbsim.hw import code
from vbsim.hw.faults import GuestTermination
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.process import Process, ProcessView, Token, host_view
from vbsim.policy import Policy
from vbsim.trace import Trace

Payload = Callable[..., Any]

#: What a mode entry may hand a payload beside its Cpu: plain values (and tuples or lists of
#: them: a list is also how a payload hands a value back), never a host or platform object.
_PLAIN = (int, bytes, str, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return (
        isinstance(value, tuple | list) and depth < 4 and all(_plain(v, depth + 1) for v in value)
    )


def _guest_arguments(entry: str, payload: Payload, args: tuple[Any, ...]) -> None:
    """A TypeError unless each argument handed to guest code is a plain value (the one rule: a
    payload holds its ``Cpu`` and nothing else of the machine), and unless the payload's
    closure, defaults and bound arguments hold no host object (the context, the system, the
    machine, a processor ...: a ``lambda cpu: ram.read(...)`` over ``ram = machine.ram``)."""
    for index, value in enumerate(args):
        if not _plain(value):
            raise TypeError(
                f"AttackContext.{entry}: argument {index + 1} handed to guest code is a "
                f"{type(value).__module__}.{type(value).__qualname__}; a payload receives its "
                "Cpu and plain values only (int, bytes, str, bool, None, tuples/lists of them)"
            )
    from vbsim.hw.ram import GuestRam
    from vbsim.machine import Machine

    host = (AttackContext, System, Machine, GuestRam, VirtualProcessor, Policy, Trace)
    function = payload.func if isinstance(payload, functools.partial) else payload
    held = [*getattr(payload, "args", ()), *getattr(payload, "keywords", {}).values()]
    held += getattr(function, "__defaults__", None) or ()
    held += (getattr(function, "__kwdefaults__", None) or {}).values()
    for cell in getattr(function, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell holds nothing
            held.append(cell.cell_contents)
    for value in held:
        if isinstance(value, host):
            name = getattr(function, "__qualname__", repr(function))
            raise TypeError(
                f"AttackContext.{entry}: the payload {name} holds a {type(value).__qualname__} "
                "(closure, default or bound argument); guest code holds only its Cpu"
            )


_PAYLOADS: dict[Payload, str] = {}


def payload_routine(function: Payload, *, breakpoint: bool = False) -> str:
    """Register an attacker payload as guest code (once) and return its routine name.  With
    ``breakpoint``, the platform records each execution of it (``Trace.ran``): how a goal
    learns that the attacker's code ran, and in which mode."""
    name = _PAYLOADS.get(function)
    if name is None:
        # Short enough for a trace cell: the module's last component names the scenario file.
        name = f"attack.{function.__module__.rsplit('.', 1)[-1]}.{function.__qualname__}"
        code.register(name, function, breakpoint=breakpoint)
        _PAYLOADS[function] = name
    return name


@dataclass
class AttackContext:
    policy: Policy
    preset: str
    disk: Disk
    trace: Trace = field(default_factory=lambda: Trace(record=True))
    system: System | None = None
    #: Flows of attacker execution that ended (faults, bugchecks), in order.
    stops: list[GuestTermination] = field(default_factory=list)
    #: Scenario scratch space (what the scenario planted, where the loot went ...).
    notes: dict[str, Any] = field(default_factory=dict)
    attack_start: int = 0

    # -- machine -----------------------------------------------------------------------------
    def boot(self) -> System:
        self.system = boot(self.policy, self.disk, self.trace)
        return self.system

    def reboot(self) -> System:
        """Shut down (the disk persists) and boot again."""
        if self.system is not None and self.system.nt is not None:
            from vbsim.boot.disk import VBS_REGISTRY_KEY

            value = self.hive().get(VBS_REGISTRY_KEY)
            if isinstance(value, int):
                self.disk.registry[VBS_REGISTRY_KEY] = value
        return self.boot()

    def hive(self) -> dict[str, int]:
        """The running system's SYSTEM hive as RAM holds it (host side)."""
        from vbsim.boot.chain import system_values

        return system_values(self.system) if self.system is not None else {}

    @property
    def booted(self) -> System:
        if self.system is None or not self.system.booted:
            raise AttackAborted("the machine is not running")
        return self.system

    @property
    def vp(self) -> VirtualProcessor:
        machine = self.booted.machine
        assert machine is not None
        return machine.bsp

    @property
    def crashes(self) -> list[GuestCrash]:
        """The crashes kernels reported to the hypervisor (vbsim.hv.crash), as it recorded them:
        which VP and VTL executed the CrashNotify.  Guest code cannot write these records, so
        a goal about a kernel stopping the machine reads them, not the flows' ends."""
        machine = self.system.machine if self.system is not None else None
        return list(machine.hv.crashes) if machine is not None and machine.hv is not None else []

    @property
    def bugchecked(self) -> bool:
        """A kernel stopped the machine: a crash the hypervisor recorded; on bare metal (no one
        to record it) a flow that ended in KeBugCheckEx."""
        machine = self.system.machine if self.system is not None else None
        if machine is not None and machine.hv is not None:
            return bool(machine.hv.crashes)
        from vbsim.hw.faults import Bugcheck

        return any(isinstance(stop, Bugcheck) for stop in self.stops)

    @contextlib.contextmanager
    def flow(self) -> Iterator[None]:
        """One flow of attacker execution; its end (a fault, a bugcheck) is recorded, not raised."""
        try:
            yield
        except GuestTermination as stop:
            self.stops.append(stop)

    # -- K0 ----------------------------------------------------------------------------------
    def kernel(self, payload: Payload, *args: Any) -> Any:
        """Run ``payload(cpu, *args)`` in VTL0 ring 0, in NT's address space (host-side entry:
        the attacker has code execution there).  No new code page is fetched: the payload stands
        for a chain over signed code (see the module docstring)."""
        _guest_arguments("kernel", payload, args)
        vp = self.vp
        if (vp.vtl, vp.cpl) != (0, 0):
            raise AttackAborted(f"VP{vp.index} is not running NT (VTL{vp.vtl} CPL{vp.cpl})")
        result = None
        vp.actor = "attacker (K0)"
        if vp.trace.on:
            vp.emit("attacker", "code-execution", "entered", capability="K0")
        # No mode change: the attacker runs where NT runs.
        with self.flow():
            result = payload(vp.cpu, *args)
        if vp.vtl == 0:
            vp.actor = "nt"
        return result

    def kernel_page(self) -> tuple[int, int]:
        """A VTL0 page the attacker controls (its loot buffer): (VA through the direct map, GPA),
        allocated as any driver allocates, from NT's pool."""
        nt = self.booted.nt
        assert nt is not None
        pages: list[tuple[int, int]] = []
        self.kernel(lambda cpu: pages.append(nt.alloc_kernel_page(cpu)))
        if not pages:
            raise AttackAborted("NT could not allocate a page for the attacker")
        return pages[0]

    # -- U0 / A0 -----------------------------------------------------------------------------
    def process(self, admin: bool, name: str = "attacker.exe") -> Process:
        nt = self.booted.nt
        assert nt is not None
        token = Token(
            "administrator" if admin else "user",
            admin=admin,
            debug_privilege=admin,
            load_driver=admin,
        )
        return nt.create_process(self.vp.cpu, name, token)

    def user(
        self, payload: Payload, *args: Any, admin: bool = False, process: Process | None = None
    ) -> Any:
        """Run ``payload(vp, *args)`` at CPL3 in a VTL0 process (admin or standard user)."""
        _guest_arguments("user", payload, args)
        nt = self.booted.nt
        assert nt is not None
        target = process or self.process(admin)
        name = payload_routine(payload)
        entry = nt.map_code(self.vp.cpu, target, [name])[name]
        self.vp.actor = "attacker (A0)" if self.is_admin(target) else "attacker (U0)"
        run = nt.run_user(self.vp.cpu, target, entry, *args)
        self.vp.actor = "nt"
        if run.terminated is not None:
            self.stops.append(run.terminated)
        return run.returned

    def view(self, process: Process) -> ProcessView:
        """Host view (goal checks, labels): ``process``'s EPROCESS and token as RAM holds them."""
        machine = self.booted.machine
        assert machine is not None
        return host_view(machine.ram, process.eprocess)

    def is_admin(self, process: Process) -> bool:
        return self.view(process).admin

    def user_buffer(self, process: Process, size: int = PAGE_SIZE) -> int:
        nt = self.booted.nt
        assert nt is not None
        return nt.allocate(self.vp.cpu, process, size).base

    # -- K1 -----------------------------------------------------------------------------------
    def secure_kernel(self, payload: Payload, *args: Any) -> Any:
        """Run ``payload(cpu, *args)`` as VTL1 ring-0 code (the SK compromised): a host-side
        entry into VTL1 at the CPL its bank holds (0 between secure calls), and back."""
        _guest_arguments("secure_kernel", payload, args)
        vp = self.vp
        if not vp.vtl_enabled(1):
            raise AttackAborted("VTL1 is not enabled: there is no Secure Kernel to compromise")
        result = None
        previous = vp.host_entry(1)
        vp.actor = "attacker (K1)"
        if vp.trace.on:
            vp.emit("attacker", "code-execution", "entered", capability="K1")
        try:
            with self.flow():
                result = payload(vp.cpu, *args)
        finally:
            vp.actor = "securekernel"
            vp.host_entry(previous)
        return result


class AttackAborted(Exception):
    """The scenario cannot go on (the machine did not boot, ...): judged by its goal anyway."""
