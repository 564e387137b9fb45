"""The virtual processor: guest code's only way to memory, devices and other privilege levels.

Guest software is Python that runs *on* a VP (DESIGN.md, "the one rule of execution").  The
methods here are its instructions: loads and stores through the current view (paging over SLAT
over RAM), instruction fetch (a thunk in RAM, see :mod:`vbsim.hw.code`), ``syscall``/``sysret``,
``vmcall``, ``wrmsr``/``rdmsr``, ``mov cr``, ``lidt``/``lgdt``, ``invlpg``, port I/O.  The VP — not
the caller — holds the current VTL and CPL.

What happens when an access is refused is architectural:
- a paging refusal is a #PF with CR2 and the error code, delivered through the current VTL's IDT;
- a non-canonical address is a #GP(0);
- a SLAT refusal is not a fault in this VTL at all: the hypervisor (``exits``) turns it into a
  secure intercept for the higher VTL, whose handler decides (vsm-spec §6);
- when the delivered handler returns (IRET), the faulting instruction runs again, as on hardware;
  a handler that cannot fix the cause ends the flow by raising a
  :class:`~vbsim.hw.faults.GuestTermination` (thread exit, bugcheck).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from mmap import mmap
from operator import attrgetter
from typing import Any, NoReturn, Protocol

from vbsim.hw import code
from vbsim.hw.bus import Bus
from vbsim.hw.cpu import Cpu
from vbsim.hw.entropy import Entropy
from vbsim.hw.faults import GuestHang, TripleFault
from vbsim.hw.paging import PagingLayer, canonical, check_rights, error_code
from vbsim.hw.ram import GuestRam
from vbsim.hw.regs import SHARED_GPRS, PrivateState, SharedGprs
from vbsim.hw.slat import Slat
from vbsim.hw.tlb import Tlb
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import (
    LINEAR_ADDRESS_BITS,
    MAXPHYADDR,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    Access,
    Cr4,
    Efer,
    Msr,
    Rflags,
    Vector,
)
from vbsim.trace import Trace

#: The thunk decoder's tables (vbsim.hw.code), read directly on the call fast path.
_THUNKS = code._registry
_ARITY = code._arity
_THUNK_SIZE = code.THUNK_SIZE
_THUNK_LAST = PAGE_SIZE - code.THUNK_SIZE

#: Little-endian loads and stores straight on the RAM mapping (no intermediate bytes object): the
#: TLB-hit paths of read_u64/read_u32/write_u64/write_u32.
_U64_FROM: Callable[[mmap, int], tuple[int]] = struct.Struct("<Q").unpack_from
_U64_INTO: Callable[[mmap, int, int], None] = struct.Struct("<Q").pack_into
_U32_FROM: Callable[[mmap, int], tuple[int]] = struct.Struct("<I").unpack_from
_U32_INTO: Callable[[mmap, int, int], None] = struct.Struct("<I").pack_into

#: How often one instruction may fault and be retried before the model calls it a livelock.
MAX_RETRIES = 8
#: Exception-delivery nesting that becomes a triple fault (fault, #DF, then shutdown).
MAX_DELIVERY_DEPTH = 3
#: Synthetic (hypervisor) MSR range (vsm-spec §4: 0x40000000 ...).
HV_MSR_BASE = 0x4000_0000
HV_MSR_LIMIT = 0x4000_1000

#: IA32_X2APIC_ICR (SDM Vol. 4 table 2-2; Vol. 3A §10.12.9).
X2APIC_ICR = 0x830
#: ICR bits the model requires to be zero: 11 (logical destination mode, not modelled), 12
#: (delivery status, read-only), 16-17 and 20-31 (reserved in x2APIC mode, SDM §10.12.9).
_ICR_RESERVED = 0x0000_0000_FFF3_1800

_ARCH_MSR_FIELDS: dict[int, str] = {
    Msr.APIC_BASE: "apic_base",
    Msr.SYSENTER_CS: "sysenter_cs",
    Msr.SYSENTER_ESP: "sysenter_esp",
    Msr.SYSENTER_EIP: "sysenter_eip",
    Msr.MISC_ENABLE: "misc_enable",
    Msr.PAT: "pat",
    Msr.EFER: "efer",
    Msr.STAR: "star",
    Msr.LSTAR: "lstar",
    Msr.CSTAR: "cstar",
    Msr.SFMASK: "sfmask",
    Msr.FS_BASE: "fs_base",
    Msr.GS_BASE: "gs_base",
    Msr.KERNEL_GS_BASE: "kernel_gs_base",
    Msr.TSC_AUX: "tsc_aux",
}
#: EFER bits software may set (SCE, LME, LMA is read-only but tolerated, NXE); others are reserved.
_SMAP = int(Cr4.SMAP)
_READ, _WRITE = Access.READ, Access.WRITE
_RFLAGS_FIXED1 = int(Rflags.FIXED1)
#: Canonical 48-bit addresses: [0, 2^47) and [2^64 - 2^47, 2^64) (paging.canonical).
_CANON_LO_END = 1 << (LINEAR_ADDRESS_BITS - 1)
_CANON_HI = (1 << 64) - _CANON_LO_END
_CANON_END = 1 << 64
_SCE = int(Efer.SCE)
_AC = int(Rflags.AC)
_IF = int(Rflags.IF)
#: Long-mode code segment attributes, DPL 3: type 0xB, S, P, L (vsm-spec §1.3 bit layout).
_CS_USER_ATTRIBUTES = 0xB | (1 << 4) | (3 << 5) | (1 << 7) | (1 << 13)
_EFER_WRITABLE = int(Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE)
_CR4_RESERVED = ~((1 << 25) - 1) | (1 << 15) | (1 << 19)
_CR0_RESERVED = ~0xE005_003F & 0xFFFF_FFFF
_CR0_NW, _CR0_CD, _CR0_PG = 1 << 29, 1 << 30, 1 << 31
#: CR3 bits at or above MAXPHYADDR (bit 63 is the PCID no-flush hint, unused without PCIDE).
_CR3_RESERVED = ((1 << 63) - 1) & ~((1 << MAXPHYADDR) - 1)
#: MSRs that hold linear addresses: a non-canonical value is #GP(0) (SDM Vol. 2B WRMSR).
_ADDRESS_MSRS = frozenset(
    {
        Msr.LSTAR,
        Msr.CSTAR,
        Msr.KERNEL_GS_BASE,
        Msr.FS_BASE,
        Msr.GS_BASE,
        Msr.SYSENTER_EIP,
        Msr.SYSENTER_ESP,
    }
)


class Exits(Protocol):
    """What the processor asks of whatever runs beneath the guest (a hypervisor, or nothing)."""

    def vmcall(self, vp: VirtualProcessor) -> None: ...

    def memory_violation(self, vp: VirtualProcessor, verdict: Verdict, gva: int | None) -> bool:
        """A SLAT refusal.  Returns True if a higher VTL completed the instruction for the guest
        (emulated or skipped it); False if it should run again."""
        ...

    def intercept_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> bool:
        """A higher VTL may intercept an architectural MSR access (``value`` None: a read).
        Returns True if it was intercepted (and resolved by the higher VTL)."""
        ...

    def intercept_register(self, vp: VirtualProcessor, name: str, value: int) -> bool:
        """Writes to CR0/CR4/XCR0/IDTR/GDTR/LDTR/TR that a higher VTL may intercept."""
        ...

    def intercept_io(
        self, vp: VirtualProcessor, port: int, size: int, value: int | None
    ) -> bool: ...

    def synthetic_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> int | None:
        """Hypervisor MSRs.  Returns the value read (or 0 for a write); None means #GP."""
        ...

    def cpuid_exit(self, vp: VirtualProcessor, leaf: int) -> tuple[int, int, int, int]:
        """CPUID leaf ``leaf``: EAX, EBX, ECX, EDX."""
        ...

    def hlt_exit(self, vp: VirtualProcessor) -> None:
        """The VP executed HLT (it is halted now): HLT exiting."""
        ...


class NoHypervisor:
    """Bare metal: no hypercalls (#UD), no SLAT, no secure intercepts, no synthetic MSRs."""

    def vmcall(self, vp: VirtualProcessor) -> None:
        vp.fault(Vector.UD)

    def memory_violation(self, vp: VirtualProcessor, verdict: Verdict, gva: int | None) -> bool:
        raise AssertionError("SLAT refusal on a machine without SLAT")  # pragma: no cover

    def intercept_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> bool:
        return False

    def intercept_register(self, vp: VirtualProcessor, name: str, value: int) -> bool:
        return False

    def intercept_io(self, vp: VirtualProcessor, port: int, size: int, value: int | None) -> bool:
        return False

    def synthetic_msr(self, vp: VirtualProcessor, msr: int, value: int | None) -> int | None:
        return None

    def cpuid_exit(self, vp: VirtualProcessor, leaf: int) -> tuple[int, int, int, int]:
        """Bare metal: CPUID.01h:ECX bit 31 (hypervisor present) is clear and the hypervisor
        leaves do not exist.  [model] Every leaf reads as zero: the processor's own feature
        leaves are not modelled (a real CPU returns its highest basic leaf's data for an
        out-of-range leaf, Intel SDM Vol. 2A CPUID, which no guest here asks)."""
        return 0, 0, 0, 0

    def hlt_exit(self, vp: VirtualProcessor) -> None:
        """Bare metal: the processor itself stops; nobody is told."""


def _shared(name: str) -> property:
    """A shared general register, stored in the VP's :class:`Cpu` (where guest code reaches it
    at slot speed); reading it here is a C-level attribute chain."""

    def put(vp: VirtualProcessor, value: int) -> None:
        setattr(vp.cpu, name, value)

    return property(attrgetter(f"cpu.{name}"), put, doc=f"{name.upper()} (shared, vsm-spec §5.5)")


class VirtualProcessor(SharedGprs):
    """One VP with a private register bank per enabled VTL and one shared bank."""

    def __init__(
        self,
        index: int,
        ram: GuestRam,
        slat: Slat | None,
        trace: Trace,
        bus: Bus | None = None,
        vtls: int = 2,
    ) -> None:
        self.index = index
        self.ram = ram
        self.mm = ram.mm
        #: The loader's image registry (GuestRam.images, never rebound): Cpu.kernel's lookup.
        self.images = ram.images
        self.slat = slat
        self.trace = trace
        self.bus = bus if bus is not None else Bus()
        self.exits: Exits = NoHypervisor()
        #: What guest code running on this VP holds (vbsim.hw.cpu): the architectural surface.
        #: It also stores the shared general registers (vsm-spec §5.5), zeroed at reset.
        self.cpu = Cpu(self)
        # Shared state (vsm-spec §5.5, right column).
        self.cr2 = self.dr0 = self.dr1 = self.dr2 = self.dr3 = 0
        self.dr6 = 0xFFFF_0FF0
        self.xcr0 = 1
        self.misc_enable = 1  # fast-strings enabled; shared, not private (hw.regs.SHARED_OTHER)
        self.xmm: list[int] = [0] * 16
        # Private state: one bank per enabled VTL; VTL0 always exists.
        self.banks: list[PrivateState | None] = [None] * vtls
        self.layers: list[PagingLayer | None] = [None] * vtls
        self.tlbs: list[Tlb] = [Tlb() for _ in range(vtls)]
        self.mbec: list[bool] = [False] * vtls
        self.vtl = 0
        self.started = index == 0  # the BSP runs from reset; APs wait for a start request
        self.enable_vtl(0, PrivateState())
        self.p: PrivateState = self._bank(0)
        self.layer: PagingLayer = self._layer(0)
        self._delivering = 0
        #: The platform's interrupt fabric (set by the machine): (source, vector, shorthand,
        #: destination) for an ICR write.  None: no APIC bus (a single-processor test rig).
        self.interrupt_fabric: Callable[[int, int, int, int], None] | None = None
        #: The package's random-number generator (the machine shares one among its VPs).
        self.entropy = Entropy()
        #: The CPL at which the exception being delivered interrupted (from the stack frame).
        self.interrupted_cpl = 0
        #: The activity state (Intel SDM Vol. 3C 24.4.2 "Guest Non-Register State": active or
        #: HLT): set by ``hlt``, cleared by the interrupt that resumes the processor.
        self.halted = False
        #: Fixed interrupts a halted processor with RFLAGS.IF = 0 holds (SDM Vol. 2A HLT: only
        #: NMI, SMI, INIT or reset resume it then); the host's view, no guest code reads it.
        self.held_interrupts: list[int] = []
        self._reselect()

    # -- banks and modes ----------------------------------------------------------------------
    def _bank(self, vtl: int) -> PrivateState:
        bank = self.banks[vtl]
        if bank is None:
            raise AssertionError(f"VTL{vtl} is not enabled on VP{self.index}")
        return bank

    def _layer(self, vtl: int) -> PagingLayer:
        layer = self.layers[vtl]
        if layer is None:
            raise AssertionError(f"VTL{vtl} is not enabled on VP{self.index}")
        return layer

    def enable_vtl(self, vtl: int, state: PrivateState) -> None:
        old = self.layers[vtl]
        self.banks[vtl] = state
        layer = self.layers[vtl] = PagingLayer(self.ram, self.slat, vtl, state, self.mbec[vtl])
        # HVPT: HLAT is VMCS state (vbsim.hw.hlat), not part of the register bank being loaded.
        if old is not None:
            layer.hlat = old.hlat

    def vtl_enabled(self, vtl: int) -> bool:
        return 0 <= vtl < len(self.banks) and self.banks[vtl] is not None

    def switch_vtl(self, vtl: int) -> None:
        """Make ``vtl``'s private bank live (the hypervisor's half of a VTL switch)."""
        bank = self.banks[vtl]
        layer = self.layers[vtl]
        if bank is None or layer is None:
            raise AssertionError(f"VTL{vtl} is not enabled on VP{self.index}")
        self.vtl = vtl
        self.p = bank
        self.layer = layer
        tlb = self._tlb = self.tlbs[vtl]
        fast = tlb.fast
        if bank.cpl == 3:
            self._r, self._w, self._x = fast[3], fast[4], fast[5]
        elif bank.rflags & _AC:
            self._r, self._w, self._x = fast[6], fast[7], fast[8]
        else:
            self._r, self._w, self._x = fast[0], fast[1], fast[2]

    def host_entry(self, vtl: int) -> int:
        """Host side only (attack contexts, the fuzzer's harness): make ``vtl`` live, as a
        hardware debugger switches a processor's context, and trace it as a ``host-entry`` VTL
        switch so that invariant 7 can tell it from a gate.  Guest code has no way to reach it
        (it is not on the :class:`~vbsim.hw.cpu.Cpu`).  Returns the VTL that was live."""
        previous = self.vtl
        self.switch_vtl(vtl)
        if self.trace.on:
            self.emit("vtl", "host-entry", "switched", from_vtl=previous, to_vtl=vtl)
        return previous

    def set_cpl(self, cpl: int) -> None:
        """Set CPL by fiat: the hypervisor's register interface (SetVpRegisters) and, until issue
        10's kernel rewrites land, kernel code that enters user mode without a gate (NT's
        ``run_user``, the SK's trustlet entry).  A change is traced as ``transitional/set-cpl``
        so that invariant 7 names it; the processor's own gates use :meth:`_set_cpl`."""
        before = self.p.cpl
        self._set_cpl(cpl)
        if before != cpl and self.trace.on:
            self.emit("transitional", "set-cpl", "changed", from_cpl=before)

    def _set_cpl(self, cpl: int) -> None:
        self.p.cpl = cpl
        fast = self._tlb.fast
        if cpl == 3:
            self._r, self._w, self._x = fast[3], fast[4], fast[5]
        elif self.p.rflags & _AC:
            self._r, self._w, self._x = fast[6], fast[7], fast[8]
        else:
            self._r, self._w, self._x = fast[0], fast[1], fast[2]

    @property
    def cpl(self) -> int:
        return self.p.cpl

    @property
    def actor(self) -> str:
        """The label of the software running in the current VTL (private, like CS)."""
        return self.p.actor

    @actor.setter
    def actor(self, label: str) -> None:
        self.p.actor = label

    def set_mbec(self, vtl: int, enabled: bool) -> None:
        self.mbec[vtl] = enabled
        layer = self.layers[vtl]
        if layer is not None:
            layer.mbec = enabled
        self.tlbs[vtl].flush_all()

    def _reselect(self) -> None:
        tlb = self.tlbs[self.vtl]
        self._tlb = tlb
        self._r, self._w, self._x = tlb.maps_for(self.p.cpl, bool(self.p.rflags & _AC))

    def flush_tlb(self, vtl: int | None = None, keep_global: bool = False) -> None:
        for index, tlb in enumerate(self.tlbs):
            if vtl is None or index == vtl:
                tlb.flush_all(keep_global)

    def emit(self, kind: str, mechanism: str, outcome: str, **detail: Any) -> None:
        """Trace an event attributed to this VP's current mode (callers check ``trace.on``)."""
        bank = self.p
        self.trace.emit(
            kind,
            mechanism,
            outcome,
            vp=self.index,
            vtl=self.vtl,
            cpl=bank.cpl,
            actor=bank.actor,
            **detail,
        )

    # -- translation ----------------------------------------------------------------------------
    def translate(self, va: int, access: Access) -> int | None:
        """GPA for ``va``, delivering whatever the refusal calls for; None if a higher VTL
        completed the instruction in the guest's place (nothing to read or write)."""
        vpn = va >> PAGE_SHIFT
        verdict = self._check(va, vpn, access)
        if verdict.ok and not self.trace.on:
            return verdict.address
        for _ in range(MAX_RETRIES):
            if verdict.ok:
                if self.trace.on:
                    self.emit(
                        "access",
                        verdict.mechanism,
                        "allowed",
                        va=va,
                        gpa=verdict.address,
                        access=access.name.lower(),
                    )
                return verdict.address
            if self._refused(verdict, va):
                return None
            verdict = self._check(va, vpn, access)
        raise GuestHang(f"{access.name.lower()} of 0x{va:x} refused {MAX_RETRIES} times")

    def _check(self, va: int, vpn: int, access: Access) -> Verdict:
        layer = self.layer
        state = self.p
        tlb = self._tlb
        leaf = tlb.entries.get(vpn)
        if leaf is None or (access is _WRITE and not leaf.dirty):
            verdict, leaf = layer.walk(va, access)
            if leaf is None:
                return verdict
        else:
            mechanism = check_rights(leaf, access, state)
            if mechanism:
                user_mode = state.cpl == 3
                code_ = error_code(True, access, user_mode, state)
                return Verdict(False, va, mechanism, access, fault=code_)
            gpa = leaf.gpa_page | (va & PAGE_MASK)
            refusal = layer.slat_check(gpa, access, leaf.user)
            if refusal is not None:
                return refusal
            verdict = Verdict(True, gpa, "tlb", access)
        # Tlb.mode and Tlb.fill, inlined (the TLB-miss path).
        mode = 3 if state.cpl == 3 else (6 if state.rflags & _AC else 0)
        tlb.entries[vpn] = leaf
        if leaf.size_shift > 12:
            tlb.large[vpn] = leaf.size_shift
        if verdict.address < self.ram.size and (mode != 0 or not (leaf.user and state.cr4 & _SMAP)):
            tlb.fast[mode + access][vpn] = leaf.gpa_page
        return verdict

    def _refused(self, verdict: Verdict, va: int) -> bool:
        """Deliver the consequence of a refusal; True if the instruction was completed."""
        mechanism = verdict.mechanism
        if self.trace.on:
            self.emit(
                "access",
                mechanism,
                "denied",
                va=va,
                gpa=verdict.gpa,
                access=verdict.access.name.lower(),
                error_code=verdict.fault,
            )
        if mechanism in ("slat", "slat.walk"):
            return self.exits.memory_violation(self, verdict, va)
        if mechanism == "canonical":
            self.fault(Vector.GP, 0)
            return False
        self.cr2 = va
        self.fault(Vector.PF, verdict.fault)
        return False

    # -- loads and stores -----------------------------------------------------------------------
    def read(self, va: int, length: int) -> bytes:
        offset = va & PAGE_MASK
        if offset + length <= PAGE_SIZE:  # one page: try the TLB's fast map first
            base = self._r.get(va >> PAGE_SHIFT)
            if base is not None:
                return self.mm[base | offset : (base | offset) + length]
        out = bytearray()
        while length > 0:
            chunk = min(length, PAGE_SIZE - (va & PAGE_MASK))
            gpa = self.translate(va, Access.READ)
            if gpa is None:
                out += bytes(chunk)  # completed by a higher VTL: no data reaches the guest
            elif gpa + chunk <= self.ram.size:
                out += self.mm[gpa : gpa + chunk]
            else:
                out += self._mmio_read(gpa, chunk)
            va = (va + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            length -= chunk
        return bytes(out)

    def write(self, va: int, data: bytes | bytearray) -> None:
        offset = va & PAGE_MASK
        if offset + len(data) <= PAGE_SIZE:  # one page: try the TLB's fast map first
            base = self._w.get(va >> PAGE_SHIFT)
            if base is not None:
                self.mm[base | offset : (base | offset) + len(data)] = data
                return
        view = bytes(data)
        # Translate every page first: a store that faults on its second page leaves the first
        # one unchanged, as a faulting instruction must.
        pieces: list[tuple[int | None, int, int]] = []
        done = 0
        while done < len(view):
            chunk = min(len(view) - done, PAGE_SIZE - (va & PAGE_MASK))
            pieces.append((self.translate(va, Access.WRITE), done, chunk))
            va = (va + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            done += chunk
        for gpa, start, chunk in pieces:
            if gpa is None:
                continue
            if gpa + chunk <= self.ram.size:
                self.mm[gpa : gpa + chunk] = view[start : start + chunk]
            else:
                self._mmio_write(gpa, view[start : start + chunk])

    def read_u64(self, va: int) -> int:
        base = self._r.get(va >> PAGE_SHIFT)
        if va & PAGE_MASK <= PAGE_SIZE - 8:
            if base is None:
                gpa = self.translate(va, _READ)
                if gpa is None:
                    return 0
                if gpa + 8 > self.ram.size:
                    return int.from_bytes(self._mmio_read(gpa, 8), "little")
                return _U64_FROM(self.mm, gpa)[0]
            return _U64_FROM(self.mm, base | (va & PAGE_MASK))[0]
        return int.from_bytes(self.read(va, 8), "little")

    def write_u64(self, va: int, value: int) -> None:
        base = self._w.get(va >> PAGE_SHIFT)
        if base is not None and va & PAGE_MASK <= PAGE_SIZE - 8:
            _U64_INTO(self.mm, base | (va & PAGE_MASK), value & 0xFFFF_FFFF_FFFF_FFFF)
            return
        self.write(va, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def read_u32(self, va: int) -> int:
        base = self._r.get(va >> PAGE_SHIFT)
        if base is not None and va & PAGE_MASK <= PAGE_SIZE - 4:
            return _U32_FROM(self.mm, base | (va & PAGE_MASK))[0]
        return int.from_bytes(self.read(va, 4), "little")

    def write_u32(self, va: int, value: int) -> None:
        base = self._w.get(va >> PAGE_SHIFT)
        if base is not None and va & PAGE_MASK <= PAGE_SIZE - 4:
            _U32_INTO(self.mm, base | (va & PAGE_MASK), value & 0xFFFF_FFFF)
            return
        self.write(va, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def _mmio_read(self, gpa: int, length: int) -> bytes:
        data = self.bus.mmio_read(gpa, length)
        if data is None:
            if self.trace.on:
                self.emit("mmio", "bus.unclaimed", "floating", gpa=gpa, length=length)
            return b"\xff" * length
        return data

    def _mmio_write(self, gpa: int, data: bytes) -> None:
        if not self.bus.mmio_write(gpa, data) and self.trace.on:
            self.emit("mmio", "bus.unclaimed", "dropped", gpa=gpa, length=len(data))

    # -- instruction fetch and control transfer ---------------------------------------------
    def fetch(self, va: int) -> code.GuestRoutine | None:
        """Fetch the thunk at ``va`` (execute checks on every page it spans) and decode it; None
        after a refusal that a higher VTL completed.  Undecodable bytes raise #UD."""
        for _ in range(MAX_RETRIES):
            raw = self._fetch_bytes(va)
            if raw is None:
                return None
            entry = code.decode_thunk(raw)
            if entry is not None:
                if code.has_breakpoint(raw):
                    bank = self.p
                    # Where the fetched bytes were: the execute translation of ``va`` (the
                    # breakpoint path is off the fast one; no A/D update, no event).
                    gpa = self._fetched_gpa(va)
                    self.trace.executed(entry[0], va, self.index, self.vtl, bank.cpl, gpa)
                    if self.trace.on:
                        self.emit("breakpoint", "debugger", "hit", routine=entry[0], va=va)
                return entry[1]
            if self.trace.on:
                self.emit("fetch", "decode", "invalid-opcode", va=va)
            self.fault(Vector.UD)
        raise GuestHang(f"fetch at 0x{va:x} faulted {MAX_RETRIES} times")

    def _fetched_gpa(self, va: int) -> int:
        """The GPA ``va`` was just fetched from (the execute map, else a quiet walk); -1 if
        neither says."""
        base = self._x.get(va >> PAGE_SHIFT)
        if base is not None:
            return base + (va & PAGE_MASK)
        layer = self.layers[self.vtl]
        if layer is None:
            return va  # paging off: the address is physical
        verdict, _ = layer.walk(va, Access.EXECUTE, update_ad=False)
        return verdict.address if verdict.ok else -1

    def _fetch_bytes(self, va: int) -> bytes | None:
        offset = va & PAGE_MASK
        size = code.THUNK_SIZE
        if offset <= PAGE_SIZE - size:
            base = self._x.get(va >> PAGE_SHIFT)
            if base is None:
                translated = self.translate(va, Access.EXECUTE)
                if translated is None:
                    return None
                base = translated & ~PAGE_MASK
            if base + offset + size > self.ram.size:
                return b""
            return self.mm[base + offset : base + offset + size]
        # The thunk straddles two pages: both must be executable (SDM: each byte is fetched).
        first = self.translate(va, Access.EXECUTE)
        if first is None:
            return None
        second_va = (va + PAGE_SIZE - offset) & 0xFFFF_FFFF_FFFF_FFFF
        second = self.translate(second_va, Access.EXECUTE)
        if second is None:
            return None
        head = PAGE_SIZE - offset
        if first + head > self.ram.size or second + size - head > self.ram.size:
            return b""
        return self.mm[first : first + head] + self.mm[second : second + size - head]

    def call(self, va: int, *args: Any) -> Any:
        """``call va``: fetch and run the routine at ``va``; ``ret`` restores RIP."""
        bank = self.p
        return_rip = bank.rip
        # Fast path, the same fetch as :meth:`fetch`: the execute map of this mode holds the page
        # (every paging and SLAT execute check passed for it) and the thunk lies inside it.  The
        # map only holds pages wholly in RAM (the size is a page multiple, hw.ram), so the slice
        # is the thunk's bytes; they are decoded from RAM on every call, as before.
        offset = va & PAGE_MASK
        base = self._x.get(va >> PAGE_SHIFT)
        if base is not None and offset <= _THUNK_LAST:
            start = base | offset
            entry = _THUNKS.get(self.mm[start : start + _THUNK_SIZE])
            if entry is not None:
                routine = entry[1]
                arity = _ARITY.get(routine)
                if arity is not None and arity != len(args):
                    args = code.fit_arguments(routine, args)
                bank.rip = va
                # (no argument unpacking for the usual shapes: LSTAR and VTL entries take none,
                # secure-call services one, system services four)
                n = len(args)
                if n == 0:
                    result = routine(self.cpu)
                elif n == 1:
                    result = routine(self.cpu, args[0])
                elif n == 4:
                    result = routine(self.cpu, args[0], args[1], args[2], args[3])
                else:
                    result = routine(self.cpu, *args)
                bank.rip = return_rip
                return result
        fetched = self.fetch(va)
        if fetched is None:
            return None
        bank.rip = va
        result = fetched(self.cpu, *code.fit_arguments(fetched, args))
        bank.rip = return_rip
        return result

    # -- exceptions -----------------------------------------------------------------------------
    def fault(self, vector: int, error_code_: int | None = None) -> None:
        """Deliver an exception through the current VTL's IDT and run its handler at CPL0.

        Returning from here is the handler's IRET: the caller re-executes the instruction."""
        if self._delivering >= MAX_DELIVERY_DEPTH:
            raise TripleFault(self.vtl, f"vector {int(vector)} during exception delivery")
        handler = self._idt_handler(vector)
        if self.trace.on:
            # An unusable gate is no delivery (no mode change): traced apart, so that a reader
            # of gates (invariant 7) does not take it for one; the #DF that follows is (a fault
            # during delivery is a #DF, SDM Vol. 3A §6.15 "Interrupt 8").
            self.emit(
                "exception" if vector < 32 else "interrupt",
                "idt" if handler is not None else "idt-gate",
                "delivered" if handler is not None else "unusable",
                vector=int(vector),
                error_code=error_code_,
                cr2=self.cr2 if vector == Vector.PF else None,
                depth=self._delivering,
            )
        if handler is None:
            if vector == Vector.DF:
                raise TripleFault(self.vtl, "no usable #DF handler")
            self.fault(Vector.DF, 0)
            return
        bank = self.p
        saved_cpl, saved_rip, saved_flags = bank.cpl, bank.rip, bank.rflags
        # What the interrupt stack frame tells a handler: the interrupted privilege level (CS).
        saved_interrupted = self.interrupted_cpl
        self.interrupted_cpl = saved_cpl
        self._delivering += 1
        try:
            if bank.cpl != 0:
                self._set_cpl(0)
            bank.rflags &= ~int(Rflags.IF | Rflags.TF)
            self.call(handler, int(vector), error_code_ or 0)
        finally:
            self._delivering -= 1
            self.interrupted_cpl = saved_interrupted
        if self.p is bank:  # IRET
            bank.rip, bank.rflags = saved_rip, saved_flags
            self._set_cpl(saved_cpl)
            if self.trace.on:
                # The return gate, traced like the entry so that invariant 7 can pair them: the
                # nesting depth names which delivery this IRET ends.
                self.emit("iret", "iret", "returned", vector=int(vector), depth=self._delivering)
            if self.held_interrupts and saved_flags & _IF:
                self._deliver_held()  # IRET restored IF: the next held interrupt is taken

    def _idt_handler(self, vector: int) -> int | None:
        """Read the 16-byte interrupt gate (SDM Vol. 3A §6.14.1) with a supervisor implicit
        access; None if the IDT limit, the gate or its translation is unusable."""
        bank = self.p
        offset = int(vector) * 16
        if offset + 15 > bank.idtr_limit:
            return None
        gate_va = (bank.idtr_base + offset) & 0xFFFF_FFFF_FFFF_FFFF
        verdict, _ = self.layer.walk(gate_va, Access.READ, implicit=True)
        if not verdict.ok or verdict.address + 16 > self.ram.size:
            return None
        gate = self.mm[verdict.address : verdict.address + 16]
        if not gate[5] & 0x80:  # P bit of the type/attributes byte
            return None
        low = int.from_bytes(gate[0:2], "little")
        mid = int.from_bytes(gate[6:8], "little")
        high = int.from_bytes(gate[8:12], "little")
        return low | (mid << 16) | (high << 32)

    # -- privileged instructions -------------------------------------------------------------
    def _require_cpl0(self) -> bool:
        if self.p.cpl != 0:
            self.fault(Vector.GP, 0)
            return False
        return True

    def vmcall(self) -> None:
        """``vmcall``: hypercall with RCX = input value, RDX/R8 = parameters, result in RAX."""
        if self.p.cpl != 0:
            # vsm-spec §1.1: a hypercall from CPL>0 raises #UD.
            if self.trace.on:
                self.emit("hypercall", "cpl", "invalid-opcode", code=self.rcx & 0xFFFF)
            self.fault(Vector.UD)
            return
        self.exits.vmcall(self)

    def wrmsr(self, msr: int, value: int) -> None:
        if not self._require_cpl0():
            return
        value &= 0xFFFF_FFFF_FFFF_FFFF
        if msr == X2APIC_ICR:
            self._send_ipi(value)
            return
        if HV_MSR_BASE <= msr < HV_MSR_LIMIT:
            if self.exits.synthetic_msr(self, msr, value) is None:
                self.fault(Vector.GP, 0)
            return
        name = _ARCH_MSR_FIELDS.get(msr)
        if (
            name is None
            or (msr == Msr.EFER and value & ~_EFER_WRITABLE)
            or (msr in _ADDRESS_MSRS and not canonical(value))
        ):
            self.fault(Vector.GP, 0)
            return
        if self.exits.intercept_msr(self, msr, value):
            return
        self.apply_msr(msr, value)

    def _send_ipi(self, icr: int) -> None:
        """x2APIC ICR write (SDM Vol. 3A §10.12.9): vector 7:0, delivery mode 10:8, destination
        shorthand 19:18, destination x2APIC ID 63:32.  The model's APIC IDs are VP indices and
        only fixed delivery (mode 000) is modelled; other modes and reserved bits are #GP, as a
        write of an unsupported ICR value is (SDM §10.12.9: reserved bits must be 0)."""
        vector, mode = icr & 0xFF, (icr >> 8) & 0x7
        shorthand, destination = (icr >> 18) & 0x3, icr >> 32
        if mode != 0 or vector < 16 or icr & _ICR_RESERVED or self.interrupt_fabric is None:
            self.fault(Vector.GP, 0)
            return
        if self.trace.on:
            self.emit("interrupt", "x2apic.icr", "sent", vector=vector, destination=destination)
        self.interrupt_fabric(self.index, vector, shorthand, destination)

    def deliver_interrupt(self, vector: int) -> None:
        """A fixed interrupt from the APIC arrives: taken through this VP's current IDT.

        A processor halted by ``hlt`` resumes for it if RFLAGS.IF is 1, and after the handler's
        IRET is back in its idle loop's ``hlt`` (halted again); with IF = 0 it stays halted and
        the interrupt is held (Intel SDM Vol. 2A, HLT).  A running processor takes it at once if
        IF is 1; with IF = 0 the interrupt stays pending (SDM Vol. 3A 6.8.1, "masking maskable
        hardware interrupts") until an instruction sets IF again: STI, an IRET or SYSRET whose
        restored RFLAGS has it (:meth:`_deliver_held`).  [model] One pending list per processor
        (a real APIC per VTL keeps its own IRR, TLFS "virtual interrupts and VTLs"); the model's
        IPIs are NT's, to VTL0."""
        if self.halted:
            if not self.p.rflags & _IF:
                self.held_interrupts.append(vector)
                if self.trace.on:
                    self.emit("interrupt", "hlt", "held", vector=vector)
                return
            self.halted = False
            if self.trace.on:
                self.emit("interrupt", "hlt", "resumed", vector=vector)
            try:
                self.fault(vector)
            finally:
                self.halted = True  # the idle loop's next instruction is ``hlt`` again
            return
        if not self.p.rflags & _IF:
            self.held_interrupts.append(vector)
            if self.trace.on:
                self.emit("interrupt", "rflags.if", "held", vector=vector)
            return
        self.fault(vector)

    def _deliver_held(self) -> None:
        """Take the interrupts held while IF was 0, oldest first, now that it is 1 (the
        handler's IRET re-enables them one at a time, as the interrupt gate clears IF)."""
        while self.held_interrupts and self.p.rflags & _IF and not self.halted:
            vector = self.held_interrupts.pop(0)
            if self.trace.on:
                self.emit("interrupt", "rflags.if", "released", vector=vector)
            self.fault(vector)

    def hlt(self) -> None:
        """``HLT`` (Intel SDM Vol. 2A): ring 0 only (#GP(0) elsewhere); the processor stops
        until an interrupt (:meth:`deliver_interrupt`).  Under Hyper-V a guest's HLT exits to
        the hypervisor, which deschedules the VP (SDM Vol. 3C 25.1.3, "HLT exiting")."""
        if not self._require_cpl0():
            return
        self.halted = True
        if self.trace.on:
            self.emit("cpu", "hlt", "entered", interrupts=bool(self.p.rflags & _IF))
        self.exits.hlt_exit(self)

    def cli(self) -> None:
        """``CLI``: clear RFLAGS.IF.  At CPL3 with IOPL 0 (Windows' IOPL) it is #GP(0) (SDM
        Vol. 2A, CLI; the model has no IOPL or VME)."""
        if self._require_cpl0():
            self.p.rflags &= ~_IF

    def sti(self) -> None:
        """``STI``: set RFLAGS.IF (ring 0 only, as :meth:`cli`); a held interrupt is taken
        next ([model] at once: the SDM's one-instruction STI shadow is not modelled)."""
        if self._require_cpl0():
            self.p.rflags |= _IF
            if self.held_interrupts:
                self._deliver_held()

    def apply_msr(self, msr: int, value: int) -> None:
        """Architectural effect of a permitted MSR write (also used by a higher VTL's emulation)."""
        name = _ARCH_MSR_FIELDS[msr]
        setattr(self if msr == Msr.MISC_ENABLE else self.p, name, value)
        if msr == Msr.EFER:
            self._tlb.flush_all()
            self._reselect()
        if self.trace.on:
            self.emit("msr", "wrmsr", "written", msr=msr, value=value)

    def cpuid(self, leaf: int) -> None:
        """``CPUID`` with EAX = ``leaf``: the answer in EAX, EBX, ECX, EDX (the shared
        registers), at any CPL.  Under a hypervisor CPUID always exits to it (Intel SDM Vol. 3C
        25.1.2, "instructions that cause VM exits unconditionally")."""
        self.rax, self.rbx, self.rcx, self.rdx = self.exits.cpuid_exit(self, leaf & 0xFFFF_FFFF)

    def rdrand(self) -> int:
        """``RDRAND r64``: the next value of the platform's generator, at any CPL (Intel SDM
        Vol. 2B, RDRAND; CF=1 always: the model's generator is never exhausted)."""
        return self.entropy.u64()

    def rdmsr(self, msr: int) -> int:
        if not self._require_cpl0():
            return 0
        if HV_MSR_BASE <= msr < HV_MSR_LIMIT:
            value = self.exits.synthetic_msr(self, msr, None)
            if value is None:
                self.fault(Vector.GP, 0)
                return 0
            return value
        name = _ARCH_MSR_FIELDS.get(msr)
        if name is None:
            self.fault(Vector.GP, 0)
            return 0
        if self.exits.intercept_msr(self, msr, None):
            return self.rax & 0xFFFF_FFFF | (self.rdx & 0xFFFF_FFFF) << 32
        return int(getattr(self if msr == Msr.MISC_ENABLE else self.p, name))

    def mov_to_cr(self, cr: int, value: int) -> None:
        """``mov crN, r64`` (SDM Vol. 2B "MOV—Move to/from Control Registers", Vol. 3A §2.5,
        §4.10.4.1): the 64-bit-mode checks, then a higher VTL's intercept, then the effect."""
        if cr not in (0, 2, 3, 4, 8):
            self.fault(Vector.UD)
            return
        if not self._require_cpl0():
            return
        value &= 0xFFFF_FFFF_FFFF_FFFF
        bank = self.p
        if cr == 2:
            self.cr2 = value
            return
        if cr == 3:
            if value & _CR3_RESERVED:
                self.fault(Vector.GP, 0)
                return
            bank.cr3 = value & ~(1 << 63)  # bit 63 is an instruction hint, not part of CR3
            self._tlb.flush_all(keep_global=bool(bank.cr4 & Cr4.PGE))
            self._reselect()
            if self.trace.on:
                self.emit("cr", "mov-cr3", "written", value=value)
            return
        if cr == 8:
            if value & ~0xF:
                self.fault(Vector.GP, 0)
                return
            bank.cr8 = value
            return
        if cr == 0:
            long_mode = bool(bank.efer & Efer.LMA)
            if (
                value >> 32
                or (value & _CR0_NW and not value & _CR0_CD)
                or (long_mode and not value & _CR0_PG)
            ):
                self.fault(Vector.GP, 0)
                return
            value &= ~_CR0_RESERVED  # reserved bits of CR0[31:0] are ignored, not faulted
        elif value & _CR4_RESERVED or (bank.efer & Efer.LMA and not value & Cr4.PAE):
            self.fault(Vector.GP, 0)
            return
        if self.exits.intercept_register(self, f"cr{cr}", value):
            return
        self.apply_cr(cr, value)

    def apply_cr(self, cr: int, value: int) -> None:
        setattr(self.p, f"cr{cr}", value)
        self._tlb.flush_all()
        self._reselect()
        if self.trace.on:
            self.emit("cr", f"mov-cr{cr}", "written", value=value)

    def lidt(self, base: int, limit: int) -> None:
        self._load_table("idtr", base, limit)

    def lgdt(self, base: int, limit: int) -> None:
        self._load_table("gdtr", base, limit)

    def _load_table(self, name: str, base: int, limit: int) -> None:
        if not self._require_cpl0():
            return
        base &= 0xFFFF_FFFF_FFFF_FFFF
        limit &= 0xFFFF
        # The value a higher VTL sees is HV_X64_TABLE_REGISTER as a register value: limit in
        # bits 63:48, base in 127:64 (the layout Get/SetVpRegisters use).
        if self.exits.intercept_register(self, name, (limit << 48) | (base << 64)):
            return
        setattr(self.p, f"{name}_base", base)
        setattr(self.p, f"{name}_limit", limit)
        if self.trace.on:
            self.emit("table", f"l{name[:3]}", "loaded", base=base, limit=limit)

    def stac(self) -> None:
        """Set RFLAGS.AC: supervisor accesses to user pages allowed under SMAP (SDM §4.6)."""
        bank = self.p
        if bank.cpl != 0:
            self.fault(Vector.GP, 0)
            return
        bank.rflags |= _AC
        fast = self._tlb.fast
        self._r, self._w, self._x = fast[6], fast[7], fast[8]

    def clac(self) -> None:
        bank = self.p
        if bank.cpl != 0:
            self.fault(Vector.GP, 0)
            return
        bank.rflags &= ~_AC
        fast = self._tlb.fast
        self._r, self._w, self._x = fast[0], fast[1], fast[2]

    def invlpg(self, va: int) -> None:
        if self.p.cpl != 0:
            self.fault(Vector.GP, 0)
            return
        self._tlb.flush_page(va >> PAGE_SHIFT)

    def out(self, port: int, size: int, value: int) -> None:
        if not self._require_cpl0():  # IOPL 0 and no I/O bitmap: ring 0 only
            return
        port &= 0xFFFF
        value &= (1 << (8 * size)) - 1
        if self.exits.intercept_io(self, port, size, value):
            return
        if not self.bus.port_write(port, size, value) and self.trace.on:
            self.emit("io", "bus.unclaimed", "dropped", port=port, value=value)

    def inp(self, port: int, size: int) -> int:
        if not self._require_cpl0():
            return 0
        port &= 0xFFFF
        if self.exits.intercept_io(self, port, size, None):
            return self.rax & ((1 << (8 * size)) - 1)
        value = self.bus.port_read(port, size)
        return ((1 << (8 * size)) - 1) if value is None else value

    # -- system calls ------------------------------------------------------------------------
    def syscall(self) -> None:
        """``syscall`` (SDM Vol. 2B): RCX ← RIP, R11 ← RFLAGS, RFLAGS &= ~SFMASK, CPL 0, RIP ←
        LSTAR; then the kernel's entry runs and ends with ``sysret``."""
        bank = self.p
        if not bank.efer & _SCE or bank.cpl != 3:
            # SCE clear: #UD.  From CPL0 the model refuses too (Windows never does it).
            self.fault(Vector.UD)
            return
        cpu = self.cpu
        cpu.rcx = bank.rip
        cpu.r11 = bank.rflags
        flags = bank.rflags = bank.rflags & ~bank.sfmask
        # CPL 0 (_set_cpl, inlined): the supervisor fast maps, the AC ones if SFMASK kept AC.
        bank.cpl = 0
        fast = self._tlb.fast
        if flags & _AC:
            self._r, self._w, self._x = fast[6], fast[7], fast[8]
        else:
            self._r, self._w, self._x = fast[0], fast[1], fast[2]
        if self.trace.on:
            self.emit("syscall", "lstar", "entered", number=cpu.rax, lstar=bank.lstar)
        self.call(bank.lstar)
        if self.p is bank and bank.cpl != 3:
            # The kernel entry returned without sysret: its thread cannot go back to user mode.
            raise GuestHang("kernel system-call entry returned without sysret")

    def sysret(self) -> None:
        bank = self.p
        cpu = self.cpu
        rip = cpu.rcx
        # (paging.canonical, inlined: the return half of every system call)
        if bank.cpl != 0 or not (0 <= rip < _CANON_LO_END or _CANON_HI <= rip < _CANON_END):
            # A non-canonical return address faults at CPL0 (Intel; the CVE-2012-0217 setting).
            self.fault(Vector.GP, 0)
            return
        bank.rip = rip
        bank.rflags = (cpu.r11 & ~0x10000) | _RFLAGS_FIXED1  # RF cleared
        # CPL 3 (_set_cpl, inlined): the user fast maps.
        bank.cpl = 3
        fast = self._tlb.fast
        self._r, self._w, self._x = fast[3], fast[4], fast[5]
        if self.trace.on:
            self.emit("syscall", "sysret", "returned", status=self.rax)
        if self.held_interrupts and bank.rflags & _IF:
            self._deliver_held()

    def user_call(self, entry: int, *args: Any) -> Any:
        """Run user code at ``entry`` and come back: KeUserModeCallback's two gates.

        The way in is ``sysret`` (CPL0 → 3, RIP ← ``entry``, CS ← the user selector); the way
        back, when the user routine returns into its ``ret`` stub, is ``syscall`` (CPL3 → 0 with
        RFLAGS masked by SFMASK), which the kernel's callback-return service completes by
        resuming here (the NtCallbackReturn pattern).  A user thread that a fault handler ended
        comes back already at CPL0, through the exception gate.  Both gates are traced."""
        bank = self.p
        if bank.cpl != 0 or not canonical(entry):
            self.fault(Vector.GP, 0)
            return None
        saved_rip, saved_flags = bank.rip, bank.rflags
        cs = bank.segments["cs"]
        saved_cs = (cs.selector, cs.attributes)
        # STAR[63:48] + 16 with RPL 3 is the 64-bit user CS (SDM Vol. 2B SYSRET); DPL 3 code.
        cs.selector = (((bank.star >> 48) + 16) | 3) & 0xFFFF
        cs.attributes = _CS_USER_ATTRIBUTES
        bank.rip = entry
        bank.rflags = (saved_flags | int(Rflags.IF)) & ~_AC
        self._set_cpl(3)
        if self.trace.on:
            self.emit("syscall", "sysret", "user-callback", entry=entry)
        try:
            if self.held_interrupts:  # user mode runs with IF set: held interrupts are taken
                self._deliver_held()
            return self.call(entry, *args)
        finally:
            if self.p is bank and bank.cpl == 3:
                bank.rflags = saved_flags & ~bank.sfmask
                self._set_cpl(0)
                if self.trace.on:
                    self.emit("syscall", "lstar", "callback-return")
            if self.p is bank:
                cs.selector, cs.attributes = saved_cs
                bank.rip, bank.rflags = saved_rip, saved_flags

    def wrong_context(self, why: str) -> NoReturn:
        """Kernel code run outside its kernel (another kernel's GS base, or CPL3): its first
        GS-relative load or privileged instruction raises #GP (SDM Vol. 3 §6.15), delivered to
        the current VTL's kernel.  Should that handler return, the instruction would fault again
        forever, so this flow ends."""
        self.fault(Vector.GP, 0)
        raise GuestHang(f"{why}: the #GP handler returned into the faulting instruction")

    # -- helpers for register access by name (hypervisor register interface) ------------------
    def shared_gprs(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SHARED_GPRS}


# The shared general registers (vsm-spec §5.5) as views of the VP's Cpu, one per name.
for _name in SHARED_GPRS:
    setattr(VirtualProcessor, _name, _shared(_name))
del _name


RoutineFactory = Callable[["VirtualProcessor"], None]
