"""The live access matrix: the four areas probed against each other (DESIGN.md "the four areas").

Areas: VTL0 user (a process), VTL0 kernel (NT), VTL1 user (a trustlet), VTL1 kernel (the Secure
Kernel).  Each owns a data page holding a marker and a code page holding the probe routine
(``matrix.probe``).  Each area then tries, with the means it architecturally has, to

- **read** and **write** the other area's data page,
- **execute** the other area's code page,
- **call** into the other area through a gate (syscall, secure system call, secure call, normal
  call, sysret into user code, the hypercall page's VTL call/return).

The probes are guest code (:mod:`vbsim.attacks.probes`) and run in the prober's own mode: the
process at VTL0 CPL3 (scheduled by NT), the trustlet at VTL1 CPL3 (its thread resumed through the
SK), NT's ring 0, and the SK's ring 0 (entered through a real secure call: K1 code in the SK's
dispatcher, so that VTL0 waits in its secure-call loop and a normal call has someone to answer it).
Kernels map the target's GPA at a window in their own page tables and access it there; user code
uses the address at which the target lives (a kernel address, or one its own tables do not map)
and, for the other VTL's pages, also a mapping its own kernel built on purpose (*granted*: NT
writes a PTE for a VTL1 GPA into the process, the SK one for a VTL0 GPA into the trustlet), so a
cell shows what stops a user even when its kernel cooperates.

Each outcome is read from the machine, never declared:

- a probe counts only if it began in the prober's mode (its ``matrix/probe/begin`` event);
- a read only if the marker bytes reached the prober's own memory (its loot page, or the reply the
  trustlet wrote); a write only if the target page changed in RAM;
- an execute only if ``matrix.probe`` itself reported running in the prober's mode;
- a call only if the callee's dispatcher accepted it in the target's mode (its trace event) and
  the callee's answer came back to the prober;
- the mechanism is the deciding trace event: the first refusal of a blocked probe (``slat``,
  ``paging.us``, ``paging.p``, ``cpl:#UD``, an NTSTATUS from a dispatcher ...), or, for an
  allowed one, the translation that served the access (``paging``) or the gate that carried the
  call (``syscall``, ``secure-call``, ``normal-call``, ``sysret`` ...).

A refused probe ends the prober's flow (a fault, or NT's bugcheck for a kernel-mode #GP); the matrix
continues on the same machine, since a refusal changed nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vbsim.attacks import probes
from vbsim.attacks.context import AttackContext
from vbsim.attacks.probes import MARKER, POISON, PROBE_ANSWER
from vbsim.attacks.verdict import deciding_mechanism
from vbsim.boot.disk import Disk
from vbsim.boot.trustlets import trustlet_image
from vbsim.guest.address_space import DATA_BASE, DIRECT_MAP
from vbsim.hw import code
from vbsim.hw.cpu import Cpu
from vbsim.hw.faults import GuestTermination
from vbsim.hw.pagetable import PageTables, PhysAccess
from vbsim.hw.x86 import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK
from vbsim.image import data_dir
from vbsim.nt.secure_process import create_secure_process, run_trustlet
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset
from vbsim.sk.ium.process import HEAP_VA, SECTION_BASE
from vbsim.sk.kernel import Reply
from vbsim.sk.layouts import Dispatch
from vbsim.sk.sscn import Service
from vbsim.trace import Event

if TYPE_CHECKING:
    from vbsim.hw.ram import GuestRam
    from vbsim.hw.vp import VirtualProcessor
    from vbsim.machine import Machine
    from vbsim.nt.kernel import NtKernel
    from vbsim.nt.process import Process
    from vbsim.sk.kernel import SecureKernel

AREAS = ("VTL0 user", "VTL0 kernel", "VTL1 user", "VTL1 kernel")
OPS = ("read", "write", "execute", "call")
ACCESS_OPS = ("read", "write", "execute")
#: Each area's mode (VTL, CPL): DESIGN.md's table of the four areas.
MODES: dict[str, tuple[int, int]] = {
    "VTL0 user": (0, 3),
    "VTL0 kernel": (0, 0),
    "VTL1 user": (1, 3),
    "VTL1 kernel": (1, 0),
}
_OP = {"read": probes.OP_READ, "write": probes.OP_WRITE, "execute": probes.OP_EXECUTE}
PROBE_TRUSTLET_ID = 5  # an allow-listed ID (FsIso's, vbs-internals §3.2) for the probe trustlet
#: Where each kernel maps the page it probes (a free slot of its own kernel half; model choice).
KERNEL_WINDOW = DATA_BASE + (0x30 << 30)
#: Where the SK maps the VTL0 pages it grants the probe trustlet: the trustlet's secure-section
#: area (vbs-internals §4.4: pages a trustlet shares with VTL0 are mapped there), a slot far above
#: the sections a trustlet creates itself.
TRUSTLET_GRANT_VA = SECTION_BASE + 0x80_0000

#: The gate each prober tries towards each target (DESIGN.md: rings by syscall/sysret, VTLs by
#: VTL call/return; vbs-internals §2.1 the three cross-VTL paths).  Pairs not listed have no gate
#: between them (the same area, or two areas no instruction connects).
GATES: dict[tuple[str, str], int] = {
    ("VTL0 user", "VTL0 kernel"): probes.GATE_SYSCALL,
    ("VTL0 user", "VTL1 user"): probes.GATE_VTL_CALL,
    ("VTL0 user", "VTL1 kernel"): probes.GATE_SECURE_SYSCALL,
    ("VTL0 kernel", "VTL0 user"): probes.GATE_SYSRET,
    ("VTL0 kernel", "VTL1 kernel"): probes.GATE_SECURE_CALL,
    ("VTL1 user", "VTL0 kernel"): probes.GATE_VTL_RETURN,
    ("VTL1 user", "VTL1 kernel"): probes.GATE_SECURE_SYSCALL,
    ("VTL1 kernel", "VTL0 kernel"): probes.GATE_NORMAL_CALL,
    ("VTL1 kernel", "VTL1 user"): probes.GATE_SYSRET,
}
#: The callee's answer that tells the call went through: STATUS_SUCCESS from a dispatcher (and,
#: for IS_TRUSTLET_RUNNING, that the probe trustlet runs); the probe routine's own answer for an
#: entry into user code; HV_STATUS_SUCCESS in RAX for a VTL call/return.
_ANSWER: dict[int, int] = {
    probes.GATE_SYSCALL: int(NtStatus.SUCCESS),
    probes.GATE_SECURE_SYSCALL: int(NtStatus.SUCCESS),
    probes.GATE_VTL_CALL: 0,
    probes.GATE_VTL_RETURN: 0,
    probes.GATE_SYSRET: PROBE_ANSWER,
    probes.GATE_SECURE_CALL: int(NtStatus.SUCCESS),
    probes.GATE_NORMAL_CALL: int(NtStatus.SUCCESS),
}
#: Trace events by which a callee's dispatcher accepts a call, and the gate's name in the matrix.
_GATE_EVENTS: dict[tuple[str, str], str] = {
    ("syscall", "nt-dispatch"): "syscall",
    ("ium-syscall", "secure-service-table"): "secure-syscall",
    ("securecall", "dispatch"): "secure-call",
    ("normalcall", "nt-dispatch"): "normal-call",
    ("syscall", "sysret"): "sysret",
    # The hypervisor's VTL switches, stamped in the mode they land in; they count only when
    # they came from the prober's own mode (``from_vtl``/``from_cpl``): the SK's own VTL return
    # after a trustlet's refused call is not the trustlet's.  A sixth audit saw these cells
    # stay "blocked" by the table alone when the CPL3 check was removed.
    ("vtl", "vtl-call"): "vtl-call",
    ("vtl", "vtl-return"): "vtl-return",
}
_ACCEPTED = {"STATUS_SUCCESS", "entered", "serviced", "user-callback", "switched"}


@dataclass
class Cell:
    source: str
    target: str
    results: dict[str, str] = field(default_factory=dict)  # op -> "allowed" | "blocked" | "-"
    mechanisms: dict[str, str] = field(default_factory=dict)
    #: User rows, the other VTL's pages: through a mapping the prober's own kernel granted.
    granted: dict[str, str] = field(default_factory=dict)
    granted_mechanisms: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": self.source, "to": self.target}
        out.update(self.results)
        out["mechanism"] = dict(self.mechanisms)
        if self.granted:
            out["granted"] = dict(self.granted)
            out["granted_mechanism"] = dict(self.granted_mechanisms)
        return out


@dataclass
class Target:
    data_gpa: int  # the marker's GPA
    code_gpa: int  # the probe routine's GPA
    data_va: int  # where the owner itself sees its data
    code_va: int


def marker_of(area: str) -> bytes:
    """The marker planted in ``area``'s data page: MARKER's length, with the area in it, so a
    read counts only if it returned that area's bytes (a sixth audit read NT's own marker page
    for every target)."""
    tag = area.replace(" ", "").encode()
    return (MARKER[: len(MARKER) - len(tag) - 1] + b"@" + tag)[: len(MARKER)]


@dataclass
class Loot:
    """A page of the prober's own memory where its probe leaves what it obtained."""

    va: int  # as the prober sees it
    gpa: int


@dataclass(frozen=True)
class Outcome:
    result: str
    mechanism: str


class Prober:
    """A booted machine with the four areas' pages, probe code and granted mappings in place."""

    def __init__(self, preset_name: str) -> None:
        policy = preset(preset_name)
        self.ctx = AttackContext(policy, preset_name, Disk.install(policy))
        self.ctx.boot()
        system = self.ctx.booted
        assert system.nt is not None and system.machine is not None
        self.nt: NtKernel = system.nt
        self.machine: Machine = system.machine
        self.sk: SecureKernel | None = system.sk if system.vbs_running else None
        self.vbs = self.sk is not None
        self.targets: dict[str, Target] = {}
        #: (target, "data" | "code") → VA of the granted mapping in the user prober's tables.
        self.user_grants: dict[tuple[str, str], int] = {}
        self.trustlet_grants: dict[tuple[str, str], int] = {}
        self._setup_vtl0()
        if self.sk is not None:
            self._setup_vtl1(self.sk)

    @property
    def vp(self) -> VirtualProcessor:
        return self.machine.bsp

    # -- setup: the kernels allocate, a debugger plants markers and probe thunks ---------------
    def _setup_vtl0(self) -> None:
        nt, vp, ram = self.nt, self.vp, self.machine.ram
        # VTL0 user: a standard-user process with a data page, a loot page and its code.
        self.process: Process = self.ctx.process(admin=False, name="prober.exe")
        data = nt.allocate(vp.cpu, self.process, PAGE_SIZE)
        ram.write(data.pfns[0] << PAGE_SHIFT, marker_of("VTL0 user"))
        loot = nt.allocate(vp.cpu, self.process, PAGE_SIZE)
        self.user_loot = Loot(loot.base, loot.pfns[0] << PAGE_SHIFT)
        code = nt.map_code(
            vp.cpu, self.process, ["matrix.probe", "matrix.user_op", "matrix.user_call"]
        )
        self.user_op_va, self.user_call_va = code["matrix.user_op"], code["matrix.user_call"]
        probe_va = code["matrix.probe"]
        self.targets["VTL0 user"] = Target(
            data.pfns[0] << PAGE_SHIFT,
            _gpa(ram, self.process.tables.root, probe_va),
            data.base,
            probe_va,
        )
        # VTL0 kernel: a pool page with the marker; the probe routine in NT's boot-image code (a
        # page the loader placed, which HVCI validated: R|KX), as any NT routine is.
        data_va, data_gpa = nt.alloc_kernel_page(vp.cpu)
        ram.write(data_gpa, marker_of("VTL0 kernel"))
        loader = self.ctx.booted.nt_space  # a debugger plants the probe in NT's code pages
        assert loader is not None
        code_va = loader.install("matrix.probe")
        self.targets["VTL0 kernel"] = Target(
            data_gpa, _gpa(ram, nt.space.root, code_va), data_va, code_va
        )
        # K0's loot page and window (the window's tables from NT's own allocator).
        loot_va, loot_gpa = nt.alloc_kernel_page(vp.cpu)
        self.k0_loot = Loot(loot_va, loot_gpa)
        spares = tuple(nt.alloc_kernel_page(vp.cpu)[1] for _ in range(3))
        self._as_k0(probes.map_window, KERNEL_WINDOW, loot_gpa, DIRECT_MAP, spares)

    def _setup_vtl1(self, sk: SecureKernel) -> None:
        nt, vp, ram = self.nt, self.vp, self.machine.ram
        # VTL1 user: the probe trustlet (its image has the probe routine; its heap, the marker).
        status, trustlet = create_secure_process(
            nt, vp.cpu, "Prober.exe", PROBE_TRUSTLET_ID, image=_prober_image(str(data_dir()))
        )
        assert trustlet is not None, hex(status)
        self.trustlet = trustlet
        self.trustlet_root, probe_va = _trustlet_symbols(sk, ram, trustlet.secure_pid)
        heap_gpa = _gpa(ram, self.trustlet_root, HEAP_VA)
        ram.write(heap_gpa + 0x800, marker_of("VTL1 user"))
        self.targets["VTL1 user"] = Target(
            heap_gpa + 0x800, _gpa(ram, self.trustlet_root, probe_va), HEAP_VA + 0x800, probe_va
        )
        # VTL1 kernel: an SK data page with the marker; the probe routine in the SK's code.
        loader = self.ctx.booted.sk_space  # a debugger plants the probe in the SK's pages
        assert loader is not None
        # Its data, loot and window-table pages from the SK's own pool, allocated by the SK
        # (no host frames after boot); the SK reaches them through its direct map.
        pool: list[int] = []
        self._as_k1(probes.sk_pool_pages, 8, pool)
        assert len(pool) == 8, "the SK's pool is exhausted"
        direct = sk.space.phys_va(0)
        before = set(loader.frames)
        sk_data_gpa = pool[0] << PAGE_SHIFT
        ram.write(sk_data_gpa, marker_of("VTL1 kernel"))
        sk_code_va = loader.install("matrix.probe")
        self.targets["VTL1 kernel"] = Target(
            sk_data_gpa, _gpa(ram, sk.space.root, sk_code_va), direct + sk_data_gpa, sk_code_va
        )
        loot_gpa = pool[1] << PAGE_SHIFT
        self.k1_loot = Loot(direct + loot_gpa, loot_gpa)
        sk_spares = tuple(pfn << PAGE_SHIFT for pfn in pool[2:])
        # In the SK's own mode: its new pages leave VTL0, its window is built, and it grants the
        # trustlet mappings of VTL0's two pages.
        fresh = tuple(sorted(set(loader.frames) - before))
        if fresh:  # a new code page the debugger's install took
            self._as_k1(probes.sk_protect_own_pages, fresh)
        self._as_k1(probes.map_window, KERNEL_WINDOW, loot_gpa, direct, sk_spares[:3])
        grants = self.trustlet_grants
        for index, (key, gpa) in enumerate(self._pages("VTL0 user", "VTL0 kernel")):
            grants[key] = TRUSTLET_GRANT_VA + index * PAGE_SIZE + (gpa & PAGE_MASK)
        self._as_k1(
            probes.grant, self.trustlet_root, self._grant_list(grants), direct, sk_spares[3:]
        )
        # In NT's mode: NT writes PTEs for the two VTL1 pages into the process, on purpose.
        region = nt.allocate(vp.cpu, self.process, 4 * PAGE_SIZE)
        for index, (key, gpa) in enumerate(self._pages("VTL1 user", "VTL1 kernel")):
            self.user_grants[key] = region.base + index * PAGE_SIZE + (gpa & PAGE_MASK)
        spares = tuple(nt.alloc_kernel_page(vp.cpu)[1] for _ in range(3))
        self._as_k0(
            probes.grant,
            self.process.tables.root,
            self._grant_list(self.user_grants),
            DIRECT_MAP,
            spares,
        )

    def _pages(self, *areas: str) -> Iterator[tuple[tuple[str, str], int]]:
        for area in areas:
            target = self.targets[area]
            yield (area, "data"), target.data_gpa
            yield (area, "code"), target.code_gpa

    def _grant_list(self, grants: dict[tuple[str, str], int]) -> tuple[tuple[int, int], ...]:
        """(VA, GPA) pairs: what a kernel is asked to map."""
        out = []
        for (area, kind), va in grants.items():
            target = self.targets[area]
            out.append((va, target.data_gpa if kind == "data" else target.code_gpa))
        return tuple(out)

    # -- the modes a probe runs in -----------------------------------------------------------------
    def _as_k0(self, routine: Callable[..., Any], *args: Any) -> None:
        """Run ``routine`` as VTL0 ring-0 code on the boot processor (a K0 payload)."""
        vp = self.vp
        vp.actor = "prober (K0)"
        try:
            routine(vp.cpu, *args)
        finally:
            vp.actor = "nt"

    def _as_k1(self, routine: Callable[..., Any], *args: Any) -> None:
        """Run ``routine`` as VTL1 ring-0 code: K1 code hooks the SK's dispatch of the model's
        NULL service and NT makes that secure call, so the routine runs in the SK's own context
        (its stack, its CR3) while VTL0 waits in its secure-call loop — which is what lets a
        normal call from the routine reach NT and NT's answer come back."""
        sk, nt = self.sk, self.nt
        assert sk is not None and nt.vsl is not None
        ram = self.ctx.booted.machine
        assert ram is not None
        number = sk.table.number[Service.NULL]
        entry_gpa = sk.dispatch_gpa + number * Dispatch.ENTRY
        # K1 writes its routine's VA into the SK's dispatch table (in SK memory) and puts it back.
        original = ram.ram.read_u64(entry_gpa)
        _K1_WORK.append((routine, args))
        assert self.ctx.booted.sk_space is not None
        ram.ram.write_u64(entry_gpa, self.ctx.booted.sk_space.install(K1_HOOK))
        try:
            nt.vsl.call(self.vp.cpu, Service.NULL)
        finally:
            ram.ram.write_u64(entry_gpa, original)
            _K1_WORK.clear()

    # -- one probe ------------------------------------------------------------------------------
    def probe(self, source: str, target: str, op: str, granted: bool = False) -> Outcome:
        if target not in self.targets or source not in self.targets:
            return Outcome("-", "no VTL1")
        gate = GATES.get((source, target)) if op == "call" else None
        if op == "call" and gate is None:
            return Outcome("-", "no gate")
        ctx = self.ctx
        start = len(ctx.trace.events)
        before = self._ram(self.targets[target].data_gpa)
        self._clear_loot(source)
        reply = b""
        try:
            reply = self._run(source, target, op, gate, granted)
        except GuestTermination as stop:
            ctx.stops.append(stop)
        vp = self.vp
        if vp.vtl != 0:  # a flow that ended in VTL1 (the hypervisor resumes VTL0)
            vp.switch_vtl(0)
        events = ctx.trace.events[start:]
        outcome = self._judge(source, target, op, gate, events, before, reply)
        if op == "write" and self._ram(self.targets[target].data_gpa) != before:
            self.machine.ram.write(self.targets[target].data_gpa, before)  # the debugger again
        return outcome

    def _run(self, source: str, target: str, op: str, gate: int | None, granted: bool) -> bytes:
        """Run the probe in the prober's mode; the bytes a trustlet replied (its loot)."""
        t = self.targets[target]
        index = AREAS.index(target)
        gpa = t.code_gpa if op == "execute" else t.data_gpa
        kind = "code" if op == "execute" else "data"
        if source == "VTL0 user":
            loot = self.user_loot.va
            if gate is not None:
                self._run_user(self.user_call_va, gate, index, loot)
            else:
                va = self._user_address(target, kind, granted)
                self._run_user(self.user_op_va, _OP[op], index, va, loot)
            return b""
        if source == "VTL1 user":
            if gate is not None:
                message = probes.trustlet_message(probes.OP_CALL, index, gate)
            else:
                va = self._trustlet_address(target, kind, granted)
                message = probes.trustlet_message(_OP[op], index, va=va)
            return run_trustlet(self.nt, self.vp.cpu, self.trustlet, message).reply
        if source == "VTL0 kernel":
            loot = self.k0_loot.va
            if gate == probes.GATE_SYSRET:
                code_va = self.targets["VTL0 user"].code_va
                root = self.process.tables.root
                self._as_k0(probes.enter_user, index, root, code_va, loot)
            elif gate == probes.GATE_SECURE_CALL:
                self._as_k0(probes.secure_call, index, PROBE_TRUSTLET_ID, loot)
            else:
                self._as_k0(probes.kernel_op, _OP[op], index, gpa, KERNEL_WINDOW, DIRECT_MAP, loot)
            return b""
        assert self.sk is not None
        loot = self.k1_loot.va
        if gate == probes.GATE_SYSRET:
            code_va = self.targets["VTL1 user"].code_va
            self._as_k1(probes.enter_user, index, self.trustlet_root, code_va, loot)
        elif gate == probes.GATE_NORMAL_CALL:
            self._as_k1(probes.normal_call, index, loot)
        else:
            direct = self.sk.space.phys_va(0)
            self._as_k1(probes.kernel_op, _OP[op], index, gpa, KERNEL_WINDOW, direct, loot)
        return b""

    def _user_address(self, target: str, kind: str, granted: bool) -> int:
        """Where the process reaches the target: its own pages where they are, another area's at
        the address that area uses (a kernel VA: the direct map), or NT's granted mapping."""
        t = self.targets[target]
        if granted:
            return self.user_grants[(target, kind)]
        if target == "VTL0 user":
            return t.code_va if kind == "code" else t.data_va
        return DIRECT_MAP + (t.code_gpa if kind == "code" else t.data_gpa)

    def _trustlet_address(self, target: str, kind: str, granted: bool) -> int:
        t = self.targets[target]
        if granted:
            return self.trustlet_grants[(target, kind)]
        if target in ("VTL1 user", "VTL0 user"):  # its own VAs; the process's, not mapped here
            return t.code_va if kind == "code" else t.data_va
        return DIRECT_MAP + (t.code_gpa if kind == "code" else t.data_gpa)

    def _run_user(self, entry: int, *args: int) -> None:
        """NT schedules the prober process's thread at ``entry`` (CPL3)."""
        vp = self.vp
        vp.actor = "prober (U0)"
        run = self.nt.run_user(vp.cpu, self.process, entry, *args)
        vp.actor = "nt"
        if run.terminated is not None:
            self.ctx.stops.append(run.terminated)

    # -- reading the outcome ----------------------------------------------------------------------
    def _loot(self, source: str) -> Loot | None:
        """The prober's loot page (a trustlet's loot is the reply it writes)."""
        if source == "VTL0 user":
            return self.user_loot
        if source == "VTL0 kernel":
            return self.k0_loot
        return self.k1_loot if source == "VTL1 kernel" else None

    def _clear_loot(self, source: str) -> None:
        loot = self._loot(source)
        if loot is not None:
            self.machine.ram.write(loot.gpa, POISON.to_bytes(8, "little") * 4)

    def _obtained(self, source: str, reply: bytes) -> bytes:
        """What the prober's own memory holds after the probe."""
        loot = self._loot(source)
        if loot is None:
            return reply
        return self._ram(loot.gpa, 32)

    def _ram(self, gpa: int, length: int = len(MARKER)) -> bytes:
        return self.machine.ram.read(gpa, length)

    def _judge(
        self,
        source: str,
        target: str,
        op: str,
        gate: int | None,
        events: list[Event],
        before: bytes,
        reply: bytes,
    ) -> Outcome:
        began = _first(events, lambda e: e.kind == "matrix" and e.mechanism == "probe")
        if began is None or (events[began].vtl, events[began].cpl) != MODES[source]:
            # Never expected: the prober's code did not run, or not in its own mode.
            return Outcome("-", "prober not run in its mode")
        events = events[began:]
        obtained = self._obtained(source, reply)
        mode = MODES[source]
        allowed = False
        if op == "read":
            allowed = marker_of(target) in obtained
        elif op == "write":
            allowed = self._ram(self.targets[target].data_gpa) != before
        elif op == "execute":
            allowed = self._ran_in(events[0].seq, mode, self.targets[target].code_gpa)
        else:
            assert gate is not None
            gated = _gate_in(events, MODES[target], mode)
            allowed = self._answered(gate, obtained) and gated is not None
            if allowed and target.endswith("user"):
                allowed = self._ran_in(events[0].seq, MODES[target], self.targets[target].code_gpa)
        if not allowed:
            return Outcome("blocked", refusal(events))
        if op == "call":
            label = _gate_in(events, MODES[target], mode)
            return Outcome("allowed", label or "-")
        t = self.targets[target]
        page = (t.code_gpa if op == "execute" else t.data_gpa) >> PAGE_SHIFT
        served = _first(
            events,
            lambda e: (
                e.kind == "access"
                and e.outcome == "allowed"
                and int(e.detail.get("gpa") or 0) >> PAGE_SHIFT == page
            ),
        )
        # The processor's cached-translation path emits nothing (``VirtualProcessor.read``'s
        # fast map, for speed): an allowed access with no translation event for the page was
        # served by a translation the TLB already held.
        return Outcome("allowed", events[served].mechanism if served is not None else "tlb")

    def _ran_in(self, since: int, mode: tuple[int, int], code_gpa: int) -> bool:
        """``matrix.probe`` ran after event ``since``, in ``mode``, from the target's code page:
        the processor that fetched its code recorded its VTL, CPL and the GPA it fetched from
        (its breakpoint; the probe cannot forge one).  A copy of the routine elsewhere is not
        the target's code (a sixth audit had NT's probe run its own copy)."""
        page = code_gpa >> PAGE_SHIFT
        return any(
            e.routine == probes.PROBE_ROUTINE
            and e.seq > since
            and (e.vtl, e.cpl) == mode
            and e.gpa >= 0
            and e.gpa >> PAGE_SHIFT == page
            for e in self.ctx.trace.executions
        )

    @staticmethod
    def _answered(gate: int, obtained: bytes) -> bool:
        answer = int.from_bytes(obtained[:8], "little")
        second = int.from_bytes(obtained[8:16], "little")
        if answer != _ANSWER[gate]:
            return False
        if gate == probes.GATE_SECURE_CALL:
            return second == 1  # the SK says the probe trustlet runs
        if gate == probes.GATE_NORMAL_CALL:
            return second not in (0, POISON)  # NT offered a page
        return True


def _first(events: list[Event], test: Callable[[Event], bool]) -> int | None:
    for index, event in enumerate(events):
        if test(event):
            return index
    return None


def _gate_in(
    events: list[Event], mode: tuple[int, int], source: tuple[int, int] | None = None
) -> str | None:
    """The gate by which a dispatcher in ``mode`` accepted the call, or None; a bare VTL switch
    into ``mode`` (one that came from ``source``, the prober's mode) only where no dispatcher
    in ``mode`` accepted it (a secure call's VTL call precedes the SK's dispatch)."""
    switched = None
    for event in events:
        label = _GATE_EVENTS.get((event.kind, event.mechanism))
        if label is None or (event.vtl, event.cpl) != mode or event.outcome not in _ACCEPTED:
            continue
        if event.kind != "vtl":
            return label
        origin = (event.detail.get("from_vtl"), event.detail.get("from_cpl"))
        if switched is None and source is not None and origin == source:
            switched = label
    return switched


def refusal(events: list[Event]) -> str:
    """The first refusal in ``events`` (``attacks.verdict``'s rules), numbers in hex; a bugcheck
    only if nothing refused before it."""
    for event in events:
        if event.kind == "bugcheck":
            continue
        if (
            event.kind in ("syscall", "ium-syscall")
            and event.outcome.startswith("STATUS_")
            and event.outcome != "STATUS_SUCCESS"
        ):
            service = event.detail.get("service", "?")
            if service == "?":
                service = f"0x{int(event.detail.get('number', 0)):08X}"
            return f"{event.mechanism}:{service}={event.outcome}"
        mechanism = deciding_mechanism([event])
        if mechanism != "-":
            return mechanism
    return deciding_mechanism([e for e in events if e.kind == "bugcheck"])


# -- host-side lookups (a debugger's view of page tables and the SK's process object) ---------
def _gpa(ram: Any, root: int, va: int) -> int:
    leaf = PageTables(PhysAccess.direct(ram, "host"), root=root).lookup(va)
    assert leaf is not None, hex(va)
    return (leaf & PTE_ADDR_MASK) | (va & PAGE_MASK)


#: The routine K1's dispatch-table hook runs next (set by ``Prober._as_k1``, host side).
_K1_WORK: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
K1_HOOK = "matrix.k1-hook"


@code.guest_code(K1_HOOK)
def _k1_hook(cpu: Cpu, args: object) -> Reply:
    """K1 code in the SK's dispatch of the NULL service: runs the pending probe in the SK's own
    context (its stack, its CR3) while VTL0 waits in its secure-call loop, which is what lets a
    normal call from the probe reach NT and NT's answer come back."""
    routine, routine_args = _K1_WORK[-1]
    saved = cpu.actor
    cpu.actor = "prober (K1)"
    try:
        routine(cpu, *routine_args)
    finally:
        cpu.actor = saved
    return Reply()


def _trustlet_symbols(sk: SecureKernel, ram: GuestRam, secure_pid: int) -> tuple[int, int]:
    """The trustlet's page-table root and its probe routine's VA, from the SK's process object
    (what K1 code knows; read here host-side, as a debugger would)."""
    secure = sk.host_processes(ram)[secure_pid]
    return secure.host_root(ram), secure.routines["matrix.probe"]


@functools.lru_cache(maxsize=4)
def _prober_image(pki_dir: str) -> bytes:
    """The probe trustlet, signed once per PKI (signing is the slow part)."""
    return trustlet_image(
        "Prober.exe",
        trustlet_id=PROBE_TRUSTLET_ID,
        entry="matrix.trustlet_op",
        routines=("matrix.probe",),
    )


def matrix_json(cells: list[Cell]) -> dict[str, Any]:
    return {"areas": list(AREAS), "cells": [cell.to_json() for cell in cells]}


def access_matrix(preset_name: str = "vbs") -> list[Cell]:
    prober = Prober(preset_name)
    cells = []
    try:
        for source in AREAS:
            for target in AREAS:
                cell = Cell(source, target)
                for op in OPS:
                    outcome = prober.probe(source, target, op)
                    cell.results[op] = outcome.result
                    cell.mechanisms[op] = outcome.mechanism
                if _grants_apply(prober, source, target):
                    for op in ACCESS_OPS:
                        outcome = prober.probe(source, target, op, granted=True)
                        cell.granted[op] = outcome.result
                        cell.granted_mechanisms[op] = outcome.mechanism
                cells.append(cell)
    finally:
        prober.machine.close()
    return cells


def _grants_apply(prober: Prober, source: str, target: str) -> bool:
    """User rows probe the other VTL's pages through a mapping their kernel granted."""
    return (
        prober.vbs
        and source.endswith("user")
        and source in prober.targets
        and target in prober.targets
        and MODES[source][0] != MODES[target][0]
    )
