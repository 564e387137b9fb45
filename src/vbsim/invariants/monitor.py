"""The isolation monitor: invariants checked on every event and after every attacker step.

Attach it to a booted VBS :class:`~vbsim.boot.chain.System`; it listens to the trace (every event,
as it is emitted) and inspects machine state host-side between steps — a debugger's view, which
a monitor may have and guest code never does.  It changes nothing the guest can observe except
the canaries it plants at attach time in VTL1 memory nobody reads (:mod:`vbsim.invariants.taint`).

The invariants (numbers as in the issue; each is a :data:`INVARIANTS` entry):

1. **taint** — no byte of VTL1-private memory reaches a VTL0 register, a VTL0-readable page or a
   DMA device's buffer.  Registers are checked whenever VTL0 gets the processor back (every VTL
   return to VTL0) and after every step; device buffers after every allowed device read.  RAM is
   checked *incrementally*: the monitor keeps a CRC per VTL0-readable page and rescans exactly
   the pages that can have been written since the last step.  Which pages those are is known
   without hooking the hardware model: every guest store either hits a VP's TLB *write* fast map
   (pages listed there before or after the step) or goes through a translation that emits an
   ``access`` event with its GPA (the trace is on while the monitor listens); the hypervisor's
   own stores go to the hypercall output page (``hypercall`` events, R8), the hypercall page
   (``msr``/``hypercall-page`` events) and the SynIC and VP-assist pages (all checked); DMA
   stores are ``dma`` events; pages VTL0 newly may read come from the SLAT diff (invariant 2).
   On top of that a budget of pages is rescanned round-robin each step, and :meth:`sweep`
   rescans every page ever populated.
2. **slat-ownership** — VTL0's SLAT rights change only inside a ModifyVtlProtectionMask issued
   by VTL1, exactly on the pages that call names, to the mask it names.
3. **hvci** — under HVCI no VTL0 page is W and KX at once (checked on every SLAT change), and
   every VTL0-KX page is one the SK's HVCI state holds as VALIDATED (checked after each step).
4. **ium-admission** — every event at VTL1 CPL3 happens in a trustlet the SK created right
   after an ``skci.admitted`` event, with CR3 on that trustlet's page tables; a secure call never
   creates a process without one; a secure system call is entered only from VTL1 CPL3, by an
   admitted trustlet.
5. **dma** — an allowed DMA transfer touches only pages VTL0 may write (device writes) or read
   (device reads) per its SLAT, and never writes a VTL1 page.
6. **sk-integrity** — after PHASE4_INIT the SK's static pages never change, its allocation pages
   change only inside secure calls that return STATUS_SUCCESS (:mod:`vbsim.invariants.skstate`).
7. **gates** — a VP's VTL changes only with a ``vtl`` switch event; its CPL rises (3 → 0) only at
   a gate: ``syscall`` entry, exception or interrupt delivery, a VTL entry, or the kernel's
   return from a user-mode run (the model ends one by returning from the routine, and the kernel's
   first act at CPL0 is then to reload CR3 — anything else first is an ungated raise).
8. **kdp** (beyond the issue's list) — a page static KDP protected keeps its contents for good; a
   secure-pool page changes only inside an accepted INITIALIZE_SECURE_POOL or
   COPY_PROTECTED_PAGE (vbs-internals §5.2: not even VTL0 ring 0 may change them).

A violation is recorded with the step, the step's label and the trace leading to it; by default
:meth:`end_step` raises :class:`InvariantViolation` with the first one.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vbsim.hv import abi, defs
from vbsim.hw.dma import DmaDevice
from vbsim.hw.faults import GuestTermination
from vbsim.hw.slat import KX, W
from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.invariants import skstate, taint
from vbsim.trace import Event

if TYPE_CHECKING:
    from vbsim.boot.chain import System
    from vbsim.hw.ram import GuestRam
    from vbsim.hw.slat import Slat
    from vbsim.hw.vp import VirtualProcessor
    from vbsim.machine import Machine
    from vbsim.nt.kernel import NtKernel
    from vbsim.sk.kernel import SecureKernel

INVARIANTS: dict[int, str] = {
    1: "taint",
    2: "slat-ownership",
    3: "hvci",
    4: "ium-admission",
    5: "dma",
    6: "sk-integrity",
    7: "gates",
    8: "kdp",
}
DESCRIPTIONS: dict[int, str] = {
    1: "no VTL1-private byte reaches a VTL0 register, VTL0-readable memory or a DMA buffer",
    2: "VTL0's SLAT changes only through ModifyVtlProtectionMask issued by VTL1",
    3: "under HVCI no VTL0 page is W+KX and only validated pages are KX",
    4: "only admitted images run in IUM; only IUM callers reach a secure system call",
    5: "DMA touches only pages VTL0 may access that way",
    6: "after PHASE4 SK memory changes only through accepted secure calls",
    7: "VTL and CPL change only through architectural gates",
    8: "KDP-protected pages keep their contents; the secure pool and the kernel CFG bitmap "
    "change only as the SK writes them",
}

_SUCCESS = "STATUS_SUCCESS"
_WKX = bytes(1 if b & W and b & KX else 0 for b in range(256))
_KX = bytes(1 if b & KX else 0 for b in range(256))
_VALIDATED = 2  # vbsim.sk.services.hvci.PageState.VALIDATED
_IS_VALIDATED = bytes(1 if b == _VALIDATED else 0 for b in range(256))
_CHUNK = 256
#: Services that write secure-pool pages (vbsim.sk.services.kdp).
_POOL_WRITERS = frozenset({"INITIALIZE_SECURE_POOL", "COPY_PROTECTED_PAGE"})
#: The one service after boot that writes the kernel CFG bitmap (sk.services.kcfg): a driver's
#: exports become valid call targets.
_KCFG_WRITERS = frozenset({"ENABLE_CFG_TARGET"})
_ROOT = 0x000F_FFFF_FFFF_F000
#: Which protected pages an accepted call may have written (``Monitor._kdp_refresh_pool``).
_POOL_WRITE = 0
_KCFG_WRITE = 1


def _positions(table: bytes, value: int) -> set[int]:
    """Indices of ``value`` in a one-byte-per-page table (bytes.find: fast on sparse tables)."""
    out: set[int] = set()
    needle = bytes([value])
    at = table.find(needle)
    while at >= 0:
        out.add(at)
        at = table.find(needle, at + 1)
    return out


def _describe(event: Event) -> str:
    detail = " ".join(f"{k}={_short(v)}" for k, v in event.detail.items())
    who = f"vp{event.vp} vtl{event.vtl} cpl{event.cpl}" if event.vp is not None else "-"
    head = f"#{event.seq} {event.kind}/{event.mechanism} {event.outcome}"
    return f"{head} [{who} {event.actor}] {detail}"


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return hex(value) if value > 255 else str(value)
    if isinstance(value, bytes | bytearray):
        return value[:16].hex() + ("…" if len(value) > 16 else "")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Violation:
    invariant: int
    step: int
    label: str
    message: str
    events: tuple[Event, ...] = ()

    @property
    def name(self) -> str:
        return INVARIANTS[self.invariant]

    def report(self, events: int = 30) -> str:
        lines = [
            f"invariant {self.invariant} ({self.name}) violated at step {self.step}"
            + (f" [{self.label}]" if self.label else ""),
            f"  {DESCRIPTIONS[self.invariant]}",
            f"  {self.message}",
        ]
        if self.events:
            lines.append(f"  the trace leading to it (last {min(events, len(self.events))}):")
            lines.extend("    " + _describe(e) for e in self.events[-events:])
        return "\n".join(lines)


class InvariantViolation(Exception):
    """An isolation invariant broke: the run stops here (``violation.report()`` says why)."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.report(events=12))
        self.violation = violation


@dataclass
class Stats:
    steps: int = 0
    checks: int = 0
    events: int = 0
    pages_scanned: int = 0


@dataclass
class _VpState:
    vtl: int
    cpl: int
    #: CPL last seen in each VTL (a VTL's CPL cannot rise while it is not running).
    cpl_in: dict[int, int] = field(default_factory=dict)
    #: the (VTL, CPL) each exception delivery interrupted, by nesting depth: its IRET returns there
    frames: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: the mode the last ``syscall`` entry came from
    syscall_from: tuple[int, int] = (0, 0)
    #: SKCI admitted a trustlet ID in the secure call running now
    admitted_id: int | None = None
    #: allocation-page digests when VTL1 was last entered on this VP (None: not in VTL1)
    segment: list[int] | None = None
    #: VTL1 was entered by a host-side ``host-entry`` (an attack context's K1 payload), not by
    #: a VTL call: no secure call is accepted until the VP leaves VTL1 again
    host_entered: bool = False
    #: the scratch pages' digests when that host entry began
    scratch_at_entry: list[int] | None = None


def tlb_write_pages(machine: Machine) -> set[int]:
    """GPA pages any VP can write through its TLB fast maps without a translation (no event)."""
    pages: set[int] = set()
    for vp in machine.vps:
        for tlb in vp.tlbs:
            fast = tlb.fast
            for index in (1, 4, 7):
                for base in fast[index].values():
                    pages.add(base >> PAGE_SHIFT)
    return pages


class Monitor:
    """The opt-in isolation monitor for one booted VBS system."""

    def __init__(
        self,
        system: System,
        *,
        budget: int = 16,
        history: int = 400,
        canaries: bool = True,
        stop: bool = True,
    ) -> None:
        if system.machine is None or system.sk is None or system.nt is None:
            raise ValueError("the monitor needs a booted system with VBS running")
        machine = system.machine
        if machine.slat is None or machine.hv is None:
            raise ValueError("the monitor needs a machine with a hypervisor (VBS running)")
        from vbsim.sk.kernel import Phase

        if system.sk.host_phase(machine.ram) is not Phase.PHASE4:
            raise ValueError("attach the monitor after boot (PHASE4_INIT)")
        self.system = system
        self.machine: Machine = machine
        self.sk: SecureKernel = system.sk
        self.ram: GuestRam = machine.ram
        from vbsim.sk.layouts import Config

        #: Whether HVCI runs, from the SK's configuration block as the loader wrote it at boot.
        self._hvci_on = bool(system.sk.host_config(machine.ram, Config.HVCI))
        self.slat: Slat = machine.slat
        self.budget = budget
        self.stop = stop
        self.stats = Stats()
        self.violations: list[Violation] = []
        self.step_number = 0
        self.label = "attach"
        self.dead = False
        self._history: deque[Event] = deque(maxlen=history)
        self._new: list[Violation] = []
        self._canaries = canaries
        # invariant 1
        self.secrets = taint.collect(
            self.sk,
            machine.ram,
            plant_canaries=canaries,
            seed=machine.entropy.derive("monitor.canaries"),
        )
        self._crc: dict[int, int] = {}
        self._written: set[int] = set()
        self._tlb_start: set[int] = set()
        self._populated: set[int] = set(range(machine.ram.frames._next))
        self._populated.update(_nt_pages(system.nt, machine.ram))
        self._rr: list[int] = []
        self._rr_at = 0
        self._dma_scan: list[tuple[int, int]] = []
        self._refresh_trustlets = False
        self.devices: dict[int, DmaDevice] = {}
        self._discover_devices()
        # invariants 2 and 3
        self._vtl0 = self._vtl0_rights()
        self._hvci_key: tuple[int, bytes] | None = None
        # invariant 4
        self.admitted: set[int] = set()
        self._admit_existing()
        # invariant 6
        assert system.sk_space is not None
        self.pages = skstate.classify(self.sk, system.sk_space)
        self._static = skstate.digests(self.ram, self.pages.static)
        self._tables = skstate.digests(self.ram, self.pages.tables, tables=True)
        self._tables_raw = skstate.digests(self.ram, self.pages.tables)
        self._alloc = skstate.digests(self.ram, self.pages.allocation)
        self._object_pages: dict[int, str] = {}
        self._objects: dict[int, int] = {}
        self._rebase_objects()
        # invariant 8
        self._kdp: dict[int, int] = {}
        self._kdp_refresh_pool()
        # invariant 7
        self._vps: list[_VpState] = []
        for vp in machine.vps:
            state = _VpState(vp.vtl, vp.cpl)
            for vtl, bank in enumerate(vp.banks):
                if bank is not None:
                    state.cpl_in[vtl] = bank.cpl
            self._vps.append(state)
        self._handlers: dict[str, Callable[[Event], None]] = {
            "access": self._on_access,
            "dma": self._on_dma,
            "hypercall": self._on_hypercall,
            "msr": self._on_msr,
            "slat": self._on_slat,
            "securecall": self._on_securecall,
            "ium": self._on_ium,
            "ium-syscall": self._on_ium_syscall,
        }
        self._baseline()
        system.trace.listen(self._on_event)
        self._attached = True
        self._tlb_start = tlb_write_pages(machine)
        self._raise_new()

    @classmethod
    def attach(cls, system: System, **options: Any) -> Monitor:
        return cls(system, **options)

    def detach(self) -> None:
        if self._attached:
            self.system.trace.unlisten(self._on_event)
            self._attached = False

    def watch_device(self, device: DmaDevice) -> None:
        self.devices[device.device_id] = device

    # -- steps ------------------------------------------------------------------------------
    def begin_step(self, label: str = "") -> None:
        self.step_number += 1
        self.label = label
        self._tlb_start = tlb_write_pages(self.machine)

    def end_step(self, terminated: GuestTermination | None = None) -> None:
        """Check everything after a step; raise :class:`InvariantViolation` on a violation (with
        ``stop``).  After a termination (bugcheck ...) the machine is dead: its processors' modes
        mean nothing any more, but memory, SLAT and SK state are still checked."""
        self.stats.steps += 1
        if terminated is not None:
            self.dead = True
        try:
            if not self.dead:
                self._check_modes()
            self._check_slat_unchanged()
            self._check_hvci()
            self._check_sk()
            self._check_kdp()
            self._check_taint()
        finally:
            self._written.clear()
        self._raise_new()

    @contextlib.contextmanager
    def step(self, label: str = "") -> Iterator[None]:
        """``with monitor.step("..."):`` around one attacker step; a GuestTermination passes
        through after the checks (an InvariantViolation replaces it); any other exception passes
        through unchecked."""
        self.begin_step(label)
        try:
            yield
        except GuestTermination as stop:
            self.end_step(stop)
            raise
        # (any other exception escapes unchecked: it is a bug of the model, reported as such)
        self.end_step()

    def sweep(self) -> None:
        """Rescan every page ever populated (a full taint check); raises like :meth:`end_step`."""
        self._scan(self._populated, force=True)
        for index in range(len(self.machine.vps)):
            self._check_registers(index)
        self._raise_new()

    def _raise_new(self) -> None:
        if self._new:
            first = self._new[0]
            self._new = []
            if self.stop:
                raise InvariantViolation(first)

    def _violate(self, invariant: int, message: str) -> None:
        violation = Violation(
            invariant, self.step_number, self.label, message, tuple(self._history)
        )
        self.violations.append(violation)
        self._new.append(violation)

    # -- the listener ---------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self._history.append(event)
        self.stats.events += 1
        if event.vp is not None and event.vtl is not None and event.cpl is not None:
            self._gates(event)
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    # invariant 7 (and 4: who runs at VTL1 CPL3)
    def _gates(self, event: Event) -> None:
        assert event.vp is not None and event.vtl is not None and event.cpl is not None
        if event.vp >= len(self._vps):
            return
        state = self._vps[event.vp]
        vtl, cpl = event.vtl, event.cpl
        kind = event.kind
        if kind == "vtl" and event.outcome == "switched":
            self.stats.checks += 1
            source = event.detail.get("from_vtl")
            if source != state.vtl:
                self._violate(
                    7, f"VP{event.vp} switched from VTL{source} but was in VTL{state.vtl}"
                )
            last = state.cpl_in.get(vtl)
            if last is not None and cpl < last:
                self._violate(7, f"VP{event.vp} VTL{vtl} resumed at CPL{cpl}, left at CPL{last}")
            state.cpl_in[state.vtl] = state.cpl
            state.vtl, state.cpl = vtl, cpl
            state.cpl_in[vtl] = cpl
            if vtl == 1 and source == 0:
                state.host_entered = event.mechanism == "host-entry"
                if state.host_entered:
                    state.scratch_at_entry = skstate.digests(self.ram, self.pages.scratch)
            elif vtl != 1:
                if state.host_entered:
                    self._check_host_entry(state)
                state.host_entered = False
            if vtl == 1:
                state.segment = skstate.digests(self.ram, self.pages.allocation)
            elif source == 1:
                self._close_segment(state, "while VTL1 ran outside any accepted secure call")
            if vtl == 0:
                self._check_registers(event.vp)
            return
        if vtl != state.vtl:
            self.stats.checks += 1
            self._violate(
                7, f"VP{event.vp} is in VTL{vtl} without a VTL switch (was VTL{state.vtl})"
            )
            state.vtl = vtl
        gate = self._gate(event, state)
        if gate is None and cpl != state.cpl:
            # No gate explains it: a privilege level changed by fiat (DESIGN.md, the one rule).
            self.stats.checks += 1
            self._violate(
                7,
                f"VP{event.vp} VTL{vtl} went from CPL{state.cpl} to CPL{cpl} without a gate "
                f"(first act at CPL{cpl}: {kind}/{event.mechanism})",
            )
        state.cpl = cpl if gate is None else gate
        state.cpl_in[vtl] = state.cpl
        if vtl == 1 and cpl == 3:
            self._check_ium_runner(event.vp, f"{kind}/{event.mechanism}")

    def _gate(self, event: Event, state: _VpState) -> int | None:
        """The CPL a gate event leaves the VP at, having checked the gate's own rule; None if
        ``event`` is no gate.  The gates (SDM Vol. 2B SYSCALL/SYSRET, Vol. 3A §6.12 and IRET):

        - ``syscall``/``lstar`` (a system call, or the return of a user-mode callback):
          CPL3 → CPL0, emitted after the change;
        - ``syscall``/``sysret`` (a system-call return, or the entry of a user-mode callback):
          CPL0 → CPL3, emitted after the change;
        - ``exception``/``interrupt`` delivered through the IDT: emitted in the interrupted mode,
          the handler runs at CPL0; ``iret`` returns to the mode that delivery interrupted.
        VTL switches are gates of their own (the ``vtl`` branch of :meth:`_gates`): VTL call,
        return and entry by the hypervisor, and the explicitly host-side ``host-entry`` (an
        attack context or the fuzzer's harness postulating code execution in a VTL)."""
        kind, mechanism = event.kind, event.mechanism
        assert event.cpl is not None and event.vtl is not None
        if kind == "syscall" and mechanism in ("lstar", "sysret"):
            before, after = (3, 0) if mechanism == "lstar" else (0, 3)
            if mechanism == "lstar":
                state.syscall_from = (event.vtl, state.cpl)
            self.stats.checks += 1
            if state.cpl != before or event.cpl != after:
                self._violate(
                    7,
                    f"VP{event.vp} VTL{event.vtl} {mechanism} ({event.outcome}) from CPL"
                    f"{state.cpl} to CPL{event.cpl}: the gate goes from CPL{before} to {after}",
                )
            return event.cpl
        depth = event.detail.get("depth")
        if kind in ("exception", "interrupt") and mechanism == "idt":
            self.stats.checks += 1
            if event.cpl != state.cpl:
                self._violate(
                    7,
                    f"VP{event.vp} VTL{event.vtl} took vector {event.detail.get('vector')} at "
                    f"CPL{event.cpl}, but the last gate left it at CPL{state.cpl}",
                )
            if isinstance(depth, int):
                for deeper in [d for d in state.frames if d >= depth]:
                    del state.frames[deeper]
                state.frames[depth] = (event.vtl, event.cpl)
            return 0
        if kind == "transitional" and mechanism == "set-cpl":
            # Not a gate: kernel code that still sets its CPL by fiat (VirtualProcessor.set_cpl;
            # issue 10: NT's run_user and the SK's trustlet entry, being moved onto
            # sysret/syscall).  Named in the trace; delete this branch when they are gone.
            self.stats.checks += 1
            return event.cpl
        if kind == "iret":
            self.stats.checks += 1
            frame = state.frames.pop(depth, None) if isinstance(depth, int) else None
            if frame is not None and frame != (event.vtl, event.cpl):
                self._violate(
                    7,
                    f"VP{event.vp} IRET to VTL{event.vtl} CPL{event.cpl}, but the delivery "
                    f"interrupted VTL{frame[0]} CPL{frame[1]}",
                )
            return event.cpl
        return None

    def _check_ium_runner(self, vp_index: int, what: str) -> None:
        from vbsim.sk.ium import process as ium

        self.stats.checks += 1
        current = ium.host_process_at(
            self.sk, self.ram, self.sk.host_current_object(self.ram, vp_index)
        )
        if current is None:
            self._violate(4, f"VP{vp_index} runs VTL1 CPL3 code outside any trustlet ({what})")
        elif current.host_handle(self.ram) not in self.admitted:
            self._violate(
                4,
                f"VP{vp_index} runs VTL1 CPL3 code in trustlet {current.host_handle(self.ram):#x} "
                f"(ID {current.host_trustlet_id(self.ram)}) that SKCI never admitted ({what})",
            )
        elif self.machine.vps[vp_index].p.cr3 & _ROOT != current.host_root(self.ram):
            self._violate(
                4,
                f"VP{vp_index} runs VTL1 CPL3 code outside the address space of the trustlet "
                f"{current.host_handle(self.ram):#x} the SK says is running ({what})",
            )

    # invariant 1: where stores may have gone
    def _on_access(self, event: Event) -> None:
        if event.outcome == "allowed" and event.detail.get("access") == "write":
            gpa = event.detail.get("gpa")
            if isinstance(gpa, int):
                self._written.add(gpa >> PAGE_SHIFT)

    def _on_hypercall(self, event: Event) -> None:
        if event.mechanism == "hypercall" and event.vp is not None:
            vp = self.machine.vps[event.vp]
            self._written.add((vp.r8 & 0xFFFF_FFFF_FFFF_FFFF) >> PAGE_SHIFT)

    def _on_msr(self, event: Event) -> None:
        if event.mechanism == "hypercall-page":
            value = event.detail.get("value")
            if isinstance(value, int):
                self._written.add(defs.HYPERCALL_MSR_GPFN.extract(value))

    # invariant 5 (and 1 for device buffers)
    def _on_dma(self, event: Event) -> None:
        if event.outcome != "allowed":
            return
        detail = event.detail
        device_id, iova, gpa, length = (
            detail.get("device_id"),
            detail.get("iova"),
            detail.get("gpa"),
            detail.get("length"),
        )
        if not isinstance(device_id, int) or not isinstance(length, int) or length <= 0:
            return
        writing = detail.get("direction") == "to-memory"
        need = 2 if writing else 1
        pages: list[int] = []
        if detail.get("mode") == "domain" and isinstance(iova, int):
            record = self.machine.iommu.devices.get(device_id)
            domain = record.domain if record is not None else None
            first, last = iova >> PAGE_SHIFT, (iova + length - 1) >> PAGE_SHIFT
            for page in range(first, last + 1):
                entry = domain.mappings.get(page) if domain is not None else None
                if entry is not None:
                    pages.append(entry[0])
        elif isinstance(gpa, int):
            first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
            pages.extend(range(first, last + 1))
        self.stats.checks += 1
        vtl1 = self.sk.host_own_pages(self.ram)  # the SK's bitmap as it stands in VTL1 RAM
        for gpn in pages:
            rights = self.slat.rights(0, gpn)
            if not rights & need or (writing and gpn in vtl1):
                self._violate(
                    5,
                    f"device {detail.get('device')} {'wrote' if writing else 'read'} GPA "
                    f"{gpn << PAGE_SHIFT:#x} (VTL0 rights {rights:#x}"
                    + (", a VTL1 page" if gpn in vtl1 else "")
                    + ")",
                )
                break
        if writing:
            self._written.update(pages)
        else:
            self._dma_scan.append((device_id, length))

    # invariants 2 and 3
    def _vtl0_rights(self) -> bytes:
        table = self.slat.effective[0]
        return bytes(table) if table is not None else b""

    def _on_slat(self, event: Event) -> None:
        if event.mechanism != "modify-vtl-protection-mask":
            return
        self.stats.checks += 1
        current = self._vtl0_rights()
        if current == self._vtl0:
            return
        changed = _diff(self._vtl0, current)
        if event.vtl != 1 or event.vp is None:
            self._violate(
                2,
                f"VTL{event.vtl} changed VTL0's SLAT on {len(changed)} page(s), first GPA "
                f"{changed[0] << PAGE_SHIFT:#x}",
            )
        else:
            named, mask = self._protection_input(self.machine.vps[event.vp])
            wrong = [g for g in changed if g not in named or current[g] != mask]
            if wrong:
                gpn = wrong[0]
                self._violate(
                    2,
                    f"VTL0 rights of GPA {gpn << PAGE_SHIFT:#x} became {current[gpn]:#x}: not a "
                    f"page/mask this ModifyVtlProtectionMask named (mask {mask:#x})",
                )
        if self._hvci_on:
            self.stats.checks += 1
            for gpn in changed:
                if _WKX[current[gpn]]:
                    self._violate(3, f"VTL0 page GPA {gpn << PAGE_SHIFT:#x} is now W+KX")
                    break
        readable = [g for g in changed if current[g] & 1 and not self._vtl0[g] & 1]
        self._written.update(readable)  # newly readable: scan what VTL0 now sees
        self._vtl0 = current

    def _protection_input(self, vp: VirtualProcessor) -> tuple[set[int], int]:
        """The GPNs and mask of the ModifyVtlProtectionMask being handled on ``vp`` (decoded
        from its registers and input page as the dispatcher did)."""
        call = abi.decode_input(vp.rcx)
        size = 16 + 8 * call.rep_count
        if call.fast:
            raw = (
                vp.rdx.to_bytes(8, "little")
                + vp.r8.to_bytes(8, "little")
                + b"".join((x & ((1 << 128) - 1)).to_bytes(16, "little") for x in vp.xmm[:6])
            )[:size]
        else:
            raw = self.ram.read(vp.rdx, size)
        if len(raw) < 16:
            return set(), -1
        _, flags, _ = defs.MODIFY_VTL_PROTECTION_MASK_HEADER.unpack(raw[:16])
        gpns = {
            int.from_bytes(raw[16 + 8 * i : 24 + 8 * i], "little")
            for i in range(call.rep_start, call.rep_count)
        }
        return gpns, flags & 0xF

    def _check_slat_unchanged(self) -> None:
        self.stats.checks += 1
        current = self._vtl0_rights()
        if current != self._vtl0:
            changed = _diff(self._vtl0, current)
            self._violate(
                2,
                f"VTL0's SLAT changed outside any VTL1 ModifyVtlProtectionMask: "
                f"{len(changed)} page(s), first GPA {changed[0] << PAGE_SHIFT:#x}",
            )
            self._written.update(g for g in changed if current[g] & 1)
            self._vtl0 = current

    def _check_hvci(self) -> None:
        if not self._hvci_on:
            return
        from vbsim.sk.services.hvci import Hvci

        state = self.sk.hvci
        table = self.slat.effective[0]
        if not isinstance(state, Hvci) or table is None:
            return
        # The page-state table as it stands in VTL1 memory (not a Python copy of it).
        states = self.ram.read(state.states_gpa, state.pages)
        key = (self.slat.generation, states)
        if key == self._hvci_key:
            return
        self._hvci_key = key
        self.stats.checks += 1
        both = table.translate(_WKX).find(1)
        if both >= 0:
            self._violate(3, f"VTL0 page GPA {both << PAGE_SHIFT:#x} is W+KX")
        kx = int.from_bytes(table.translate(_KX), "little")
        validated = int.from_bytes(states.translate(_IS_VALIDATED), "little")
        stray = kx & ~validated
        if stray:
            gpn = ((stray & -stray).bit_length() - 1) // 8
            self._violate(
                3,
                f"VTL0 page GPA {gpn << PAGE_SHIFT:#x} is kernel-executable but HVCI state is "
                f"{states[gpn]} (not VALIDATED)",
            )

    # invariant 4
    def _admit_existing(self) -> None:
        """Trustlets that exist at attach: admitted if the recorded boot trace shows their
        admission (or, with no recorded trace, taken as admitted at boot)."""
        from vbsim.sk.ium import process as ium

        events = self.system.trace.events
        admitted_ids: list[int] = []
        handles: set[int] = set()
        for event in events:
            if event.kind == "ium" and event.mechanism == "skci.admitted":
                tid = event.detail.get("trustlet_id")
                if isinstance(tid, int):
                    admitted_ids.append(tid)
            elif event.kind == "ium" and event.mechanism == "create-process":
                handle, tid = event.detail.get("handle"), event.detail.get("trustlet_id")
                if isinstance(handle, int) and tid in admitted_ids:
                    handles.add(handle)
        for handle, process in self.sk.host_processes(self.ram).items():
            if not isinstance(process, ium.SecureProcess):
                continue
            if not events or handle in handles:
                self.admitted.add(handle)
            else:
                self._violate(
                    4,
                    f"trustlet {handle:#x} (ID {process.host_trustlet_id(self.ram)}) has no "
                    "admission",
                )

    def _from_the_sk(self, event: Event) -> bool:
        """``event`` is the Secure Kernel's own report: stamped VTL1 CPL0 by the processor, on
        a VP that entered VTL1 by a VTL call (not a K1 payload's host entry).  Guest code can
        emit events too, but the processor stamps them with the mode that emitted them, so a
        VTL0 payload cannot claim an accepted secure call or an SKCI admission (a sixth audit
        silenced invariants 4 and 6 with such claims)."""
        if event.vp is None or event.vp >= len(self._vps):
            return False
        return event.vtl == 1 and event.cpl == 0 and not self._vps[event.vp].host_entered

    def _on_ium(self, event: Event) -> None:
        if not self._from_the_sk(event):
            return
        assert event.vp is not None
        state = self._vps[event.vp]
        if event.mechanism == "skci.admitted":
            tid = event.detail.get("trustlet_id")
            state.admitted_id = tid if isinstance(tid, int) else None
        elif event.mechanism == "create-process" and event.outcome == "created":
            self.stats.checks += 1
            handle, tid = event.detail.get("handle"), event.detail.get("trustlet_id")
            if (
                isinstance(handle, int)
                and state.admitted_id is not None
                and tid == state.admitted_id
            ):
                self.admitted.add(handle)
            else:
                self._violate(
                    4, f"secure process {handle} (ID {tid}) created without SKCI admission"
                )
            state.admitted_id = None
            self._refresh_trustlets = True
        elif event.mechanism == "resume-thread":
            self._refresh_trustlets = True

    def _on_ium_syscall(self, event: Event) -> None:
        if event.vp is None or event.vp >= len(self._vps):
            return
        self.stats.checks += 1
        state = self._vps[event.vp]
        if state.syscall_from != (1, 3):
            vtl, cpl = state.syscall_from
            self._violate(
                4, f"a secure system call was entered from VTL{vtl} CPL{cpl}, not from IUM"
            )
        self._check_ium_runner(event.vp, f"ium-syscall {event.detail.get('service')}")

    # invariant 6: allocation pages change only in a VTL1 run that ends an accepted secure call
    def _on_securecall(self, event: Event) -> None:
        if event.mechanism != "dispatch" or not self._from_the_sk(event):
            return
        assert event.vp is not None
        state = self._vps[event.vp]
        if event.outcome == "entered":
            state.admitted_id = None
            return
        # A secure call's final status (a service, a resumed service, a resumed thread ...).
        if event.outcome == _SUCCESS:
            code = event.detail.get("code")
            service = self.sk.table.service.get(code) if isinstance(code, int) else None
            now = skstate.digests(self.ram, self.pages.allocation)
            if state.segment is not None and service is not None:
                # SK state with an owner (HVCI's tables) changes only in its owner's services.
                for index, (old, new) in enumerate(zip(state.segment, now, strict=True)):
                    page = self.pages.allocation[index]
                    owners = self.pages.writers.get(page)
                    if old != new and owners is not None and service.value not in owners:
                        self._violate(
                            6,
                            f"SK page GPA {page << PAGE_SHIFT:#x} "
                            f"({self.pages.labels.get(page, '?')}) changed in accepted secure "
                            f"call {service.value}, which does not own it",
                        )
                        break
            state.segment = now
            self._alloc = state.segment
            self._rebase_objects()
            if service is not None and service.value in _POOL_WRITERS:
                self._kdp_refresh_pool(_POOL_WRITE)
            elif service is not None and service.value in _KCFG_WRITERS:
                self._kdp_refresh_pool(_KCFG_WRITE)
        else:
            self._close_segment(
                state,
                f"by secure call {event.detail.get('code')} that was refused ({event.outcome})",
            )

    def _close_segment(self, state: _VpState, how: str) -> None:
        """Allocation pages may have changed since VTL1 was entered (or since an accepted call
        ended) only if an accepted secure call ended in between: check, and start afresh."""
        if state.segment is None:
            return
        self.stats.checks += 1
        now = skstate.digests(self.ram, self.pages.allocation)
        if now != state.segment:
            self._sk_page_changed(self.pages.allocation, state.segment, now, how)
        state.segment = now
        self._alloc = now

    def _check_host_entry(self, state: _VpState) -> None:
        """Code a host entry ran in VTL1 (a K1 payload) is no secure call: whatever SK state it
        changed is a violation, judged as it leaves VTL1 — the secure process objects, the
        static pages (so a change undone later in the same step is still seen), and the
        scratch pages the SK itself rewrites only inside its calls (a sixth audit's K1 payload
        hooked the dispatch table and restored it within one step)."""
        how = "while code entered from the host ran in VTL1"
        self._check_objects(how)
        self.stats.checks += 1
        static = skstate.digests(self.ram, self.pages.static)
        if static != self._static:
            self._sk_page_changed(self.pages.static, self._static, static, how, "data")
            self._static = static
        scratch = skstate.digests(self.ram, self.pages.scratch)
        before = state.scratch_at_entry
        if before is not None and scratch != before:
            self._sk_page_changed(self.pages.scratch, before, scratch, how, "scratch")
        state.scratch_at_entry = None

    def _sk_page_changed(
        self, pages: list[int], before: list[int], now: list[int], how: str, unnamed: str = "?"
    ) -> None:
        """Invariant 6's report of the first page of ``pages`` whose digest differs."""
        page = pages[_first_difference(before, now)]
        label = self.pages.labels.get(page, unnamed)
        self._violate(6, f"SK page GPA {page << PAGE_SHIFT:#x} ({label}) changed {how}")

    def _rebase_objects(self) -> None:
        """The secure process objects' pages as an accepted secure call left them."""
        self._object_pages = skstate.object_pages(self.sk, self.ram)
        self._objects = skstate.object_digests(self.ram, self._object_pages)

    def _check_objects(self, how: str) -> None:
        """A secure process object, its frame list or a mailbox frame changed since the last
        accepted secure call ended: flag it, and take the new state as the baseline."""
        self.stats.checks += 1
        now = skstate.object_digests(self.ram, self._object_pages)
        if now != self._objects:
            page = next(g for g, d in now.items() if self._objects.get(g) != d)
            self._violate(
                6,
                f"SK page GPA {page << PAGE_SHIFT:#x} ({self._object_pages[page]}) changed {how}",
            )
        self._rebase_objects()

    # invariant 8
    def _kdp_sets(self) -> tuple[set[int], set[int], set[int]]:
        """KDP's static and secure-pool pages and the kCFG bitmap's, from the owner table as it
        stands in VTL1 memory."""
        from vbsim.sk.services import kdp

        state = self.sk.kdp
        if not isinstance(state, kdp.KdpState):
            return set(), set(), set()
        from vbsim.sk.layouts import Kdp

        table = self.ram.read(state.owners_gpa, state.pages)
        return (
            _positions(table, Kdp.STATIC),
            _positions(table, Kdp.POOL),
            _positions(table, Kdp.KCFG),
        )

    def _kdp_refresh_pool(self, written: int = _POOL_WRITE) -> None:
        """Take new digests of the pages an accepted call may write (``written``: the secure
        pool, or the kCFG bitmap), and first digests of pages protected since."""
        static, pool, kcfg = self._kdp_sets()
        for kind, pages in ((_POOL_WRITE, pool), (_KCFG_WRITE, kcfg)):
            for gpn in pages:
                if kind == written:
                    self._kdp[gpn] = skstate.digest(self.ram, gpn)
                else:
                    self._kdp.setdefault(gpn, skstate.digest(self.ram, gpn))
        for gpn in static:
            self._kdp.setdefault(gpn, skstate.digest(self.ram, gpn))

    def _check_kdp(self) -> None:
        static, pool, kcfg = self._kdp_sets()
        if not static and not pool and not kcfg:
            return
        self.stats.checks += 1
        for gpn in sorted(static | pool | kcfg):
            now = skstate.digest(self.ram, gpn)
            before = self._kdp.setdefault(gpn, now)
            if now != before:
                if gpn in static:
                    what = "static KDP page"
                    how = ""
                elif gpn in pool:
                    what, how = "secure-pool page", " outside an accepted secure-pool call"
                else:
                    what, how = "kernel CFG bitmap page", " outside an accepted ENABLE_CFG_TARGET"
                self._violate(8, f"{what} GPA {gpn << PAGE_SHIFT:#x} changed{how}")
                self._kdp[gpn] = now
                break

    # -- end-of-step checks -----------------------------------------------------------------
    def _check_modes(self) -> None:
        self.stats.checks += 1
        for vp, state in zip(self.machine.vps, self._vps, strict=True):
            if (vp.vtl, vp.cpl) != (state.vtl, state.cpl):
                self._violate(
                    7,
                    f"VP{vp.index} is at VTL{vp.vtl} CPL{vp.cpl} after the step; the last gate "
                    f"left it at VTL{state.vtl} CPL{state.cpl}",
                )
                state.vtl, state.cpl = vp.vtl, vp.cpl

    def _check_sk(self) -> None:
        self.stats.checks += 1
        pages = self.pages
        now = skstate.digests(self.ram, pages.static)
        if now != self._static:
            self._sk_page_changed(pages.static, self._static, now, "after PHASE4_INIT", "data")
            self._static = now
        raw = skstate.digests(self.ram, pages.tables)
        if raw != self._tables_raw:  # something changed: Accessed/Dirty bits only?
            self._tables_raw = raw
            tables = skstate.digests(self.ram, pages.tables, tables=True)
            if tables != self._tables:
                page = pages.tables[_first_difference(self._tables, tables)]
                self._violate(
                    6, f"SK page table GPA {page << PAGE_SHIFT:#x} changed (beyond Accessed/Dirty)"
                )
                self._tables = tables
        if any(
            state.segment is not None and vp.vtl == 1
            for state, vp in zip(self._vps, self.machine.vps, strict=True)
        ):
            return  # VTL1 still runs on a VP (a dead machine): judged when it returns
        alloc = skstate.digests(self.ram, pages.allocation)
        if alloc != self._alloc:
            how = "outside any accepted secure call"
            self._sk_page_changed(pages.allocation, self._alloc, alloc, how)
            self._alloc = alloc
        self._check_objects("outside any accepted secure call")

    def _check_taint(self) -> None:
        self.stats.checks += 1
        if self._refresh_trustlets:
            self._refresh_trustlets = False
            taint.add_trustlets(self.sk, self.ram, self.secrets, self._canaries, credentials=False)
        for index in range(len(self.machine.vps)):
            self._check_registers(index)
        limit = self.ram.pages
        candidates = {
            pfn
            for pfn in self._written | self._tlb_start | tlb_write_pages(self.machine)
            if 0 <= pfn < limit
        }
        candidates.update(pfn for pfn in self._synic_pages() if pfn < limit)
        self._populated.update(candidates)
        self._scan(candidates)
        self._scan(self._round_robin())
        for device_id, length in self._dma_scan:
            device = self._device(device_id)
            if device is not None:
                found = self.secrets.find_in(device.buffer, 0, min(length, len(device.buffer)))
                if found:
                    self._violate(1, f"{found} in the buffer of DMA device {device.name}")
        self._dma_scan.clear()

    def _check_registers(self, vp_index: int) -> None:
        vp = self.machine.vps[vp_index]
        if vp.vtl != 0:
            return  # VTL1's registers while VTL1 runs: checked when it returns to VTL0
        self.stats.checks += 1
        found = self.secrets.find_in_registers(vp)
        if found:
            self._violate(1, f"a VTL1 secret in a register VTL0 sees: {found}")

    def _synic_pages(self) -> set[int]:
        hv = self.machine.hv
        assert hv is not None
        pages: set[int] = set()
        for states in hv.states:
            for st in states:
                if st.vp_assist_msr & 1:
                    pages.add(defs.VP_ASSIST_GPFN.extract(st.vp_assist_msr))
                if defs.SIMP_ENABLE.extract(st.synic.simp):
                    pages.add(defs.SIMP_GPFN.extract(st.synic.simp))
        return pages

    def _round_robin(self) -> list[int]:
        if self.budget <= 0:
            return []
        if len(self._rr) != len(self._populated):
            self._rr = sorted(self._populated)
            self._rr_at %= max(1, len(self._rr))
        if not self._rr:
            return []
        out = self._rr[self._rr_at : self._rr_at + self.budget]
        self._rr_at = (self._rr_at + self.budget) % len(self._rr)
        return out

    def _scan(self, pages: set[int] | list[int], force: bool = False) -> None:
        table = self.slat.effective[0]
        limit = self.ram.pages
        crc = self._crc
        found_any = False
        for pfn in pages:
            if not 0 <= pfn < limit or (table is not None and not table[pfn] & 1):
                continue
            value = taint.page_crc(self.ram, pfn)
            if not force and crc.get(pfn) == value:
                continue
            crc[pfn] = value
            self.stats.pages_scanned += 1
            base = pfn << PAGE_SHIFT
            name, gpa = self.secrets.find_in_ram(self.ram, base, base + 4096)
            if name and not found_any:
                found_any = True
                self._violate(1, f"{name} found at GPA {gpa:#x}, a page VTL0 may read")

    def _baseline(self) -> None:
        self._scan(self._populated)
        for index in range(len(self.machine.vps)):
            self._check_registers(index)

    # -- devices ----------------------------------------------------------------------------
    def _discover_devices(self) -> None:
        for device, _ in self.machine.bus.ports.values():
            if isinstance(device, DmaDevice):
                self.devices[device.device_id] = device

    def _device(self, device_id: int) -> DmaDevice | None:
        if device_id not in self.devices:
            self._discover_devices()
        return self.devices.get(device_id)


def _diff(old: bytes, new: bytes) -> list[int]:
    """Indices where two equal-length byte strings differ (chunked: fast when few differ)."""
    if len(old) != len(new):
        return list(range(max(len(old), len(new))))
    out: list[int] = []
    for start in range(0, len(new), _CHUNK):
        a, b = old[start : start + _CHUNK], new[start : start + _CHUNK]
        if a != b:
            out.extend(start + i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return out


def _first_difference(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return index
    return 0


def _nt_pages(nt: NtKernel, ram: GuestRam) -> list[int]:
    """The pages of NT's region NT has handed out (its pool, processes' pages, the attacker's
    footholds), from NT's PFN database in RAM: scanned for secrets like the loader's pages."""
    from vbsim.guest.address_space import DIRECT_MAP
    from vbsim.nt import pfn as mm
    from vbsim.nt.layouts import MMLISTS

    first = ram.frames.limit or ram.pages
    fresh = mm.host_next_fresh(ram, nt.variables["MmFreePageListHead"].gpa)
    entries = mm.host_entries(ram, nt.pfn_database - DIRECT_MAP, min(fresh, ram.pages))
    active = int(MMLISTS.ActiveAndValid)
    return [p for p in range(first, len(entries)) if mm.host_location(entries[p]) == active]
