"""The architectural CPU: everything guest code may hold, and nothing more.

DESIGN.md, "the one rule of execution": guest software (NT, the Secure Kernel, drivers, processes,
trustlets, attack payloads) runs *on* a virtual processor and holds only what an x86-64
instruction stream can do.  A :class:`Cpu` is that surface over one
:class:`~vbsim.hw.vp.VirtualProcessor`:

- loads, stores and calls through the current translation (paging over this VTL's SLAT);
- the shared general registers (RAX..R15 but RSP, XMM; vsm-spec §5.5), readable and writable;
- what the current mode may read of its private state (RIP, RFLAGS, CPL; CR0/CR2/CR3/CR4/CR8 at
  CPL0 only, as ``mov r64, crN`` is #GP at CPL3);
- the instructions: ``syscall``/``sysret``, the user-mode callback pair (``sysret`` into user
  code, whose return executes ``syscall`` back), ``vmcall`` (hypercalls, VTL call/return),
  ``wrmsr``/``rdmsr``, ``rdrand``, ``mov crN``, ``lidt``/``lgdt``, ``invlpg``, ``stac``/``clac``,
  ``in``/``out``, ``int n``, ``cpuid``-class identification (the VP index and the active VTL,
  which a guest reads from HvRegisterVpIndex and HvRegisterVsmVpStatus);
- exception delivery (a refused access becomes #PF/#GP or a secure intercept, as on hardware).

It holds no RAM, no SLAT, no hypervisor, no other VTL's bank and no other processor.  The one
non-architectural thing it offers is :meth:`kernel`: the code image whose per-processor block the
current VTL's GS base designates (what a real kernel finds by linkage: its symbol table; the
loader registers it with :meth:`vbsim.hw.ram.GuestRam.place_image`).  That
object may hold addresses, offsets and layouts, never the values a kernel decides from
(``tests/architecture`` checks both).

Instructions are bound methods of the processor, set once, so an instruction costs what it costs
on the processor itself; the shared general registers are stored in the Cpu's own slots (the
processor's ``rax`` ... are views of them), so a register access is an attribute access (the VTL
round trip and TLB-hit budgets in ``vbsim bench`` depend on both).  The processor itself sits in
the ``__vp__`` slot: Python machinery, not surface; guest code may not name it (tests/architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from vbsim.hw.regs import SHARED_GPRS, SharedGprs
from vbsim.hw.x86 import Vector

if TYPE_CHECKING:
    from vbsim.hw.vp import VirtualProcessor

#: The names a guest routine may use on its CPU (the architecture test reads this list).
SURFACE: frozenset[str] = frozenset(
    {
        # memory
        "read",
        "write",
        "read_u32",
        "write_u32",
        "read_u64",
        "write_u64",
        "call",
        # shared registers (RAX..R15 but RSP, vsm-spec §5.5), and XMM
        *SHARED_GPRS,
        "xmm",
        # what the current mode may read of its private state
        "rip",
        "rflags",
        "cpl",
        "vtl",
        "index",
        "interrupted_cpl",
        "read_cr",
        "actor",
        # instructions
        "syscall",
        "sysret",
        "user_call",
        "vmcall",
        "wrmsr",
        "rdmsr",
        "rdrand",
        "cpuid",
        "mov_to_cr",
        "lidt",
        "lgdt",
        "stac",
        "clac",
        "invlpg",
        "out",
        "inp",
        "hlt",
        "cli",
        "sti",
        "software_interrupt",
        "wrong_context",
        # the code image behind GS, and instrumentation
        "kernel",
        "emit",
        "tracing",
    }
)


#: The processor's instructions and helpers a Cpu binds once, at creation (see ``__init__``).
_BOUND: tuple[str, ...] = (
    "read",
    "write",
    "read_u32",
    "write_u32",
    "read_u64",
    "write_u64",
    "call",
    "syscall",
    "sysret",
    "vmcall",
    "wrmsr",
    "rdmsr",
    "rdrand",
    "cpuid",
    "mov_to_cr",
    "lidt",
    "lgdt",
    "stac",
    "clac",
    "invlpg",
    "out",
    "inp",
    "hlt",
    "cli",
    "sti",
    "emit",
    "wrong_context",
    "user_call",
)


class Cpu(SharedGprs):
    """Guest code's processor (see the module docstring for what it is and is not)."""

    # The processor sits in a dunder slot: ``dir(cpu)`` minus Python's own machinery is exactly
    # SURFACE (tests/architecture), and guest code may not touch dunders (its AST check).  The
    # shared general registers themselves (vsm-spec §5.5) live here, in slots, so that guest code
    # reads and writes them at the speed of an attribute; the processor's ``rax`` ... are views.
    __slots__ = ("__vp__", "index", *SHARED_GPRS, *_BOUND)

    if TYPE_CHECKING:
        __vp__: VirtualProcessor

        read: Callable[[int, int], bytes]
        write: Callable[[int, bytes | bytearray], None]
        read_u32: Callable[[int], int]
        write_u32: Callable[[int, int], None]
        read_u64: Callable[[int], int]
        write_u64: Callable[[int, int], None]
        call: Callable[..., Any]
        syscall: Callable[[], None]
        sysret: Callable[[], None]
        vmcall: Callable[[], None]
        wrmsr: Callable[[int, int], None]
        rdmsr: Callable[[int], int]
        rdrand: Callable[[], int]
        cpuid: Callable[[int], None]
        mov_to_cr: Callable[[int, int], None]
        lidt: Callable[[int, int], None]
        lgdt: Callable[[int, int], None]
        stac: Callable[[], None]
        clac: Callable[[], None]
        invlpg: Callable[[int], None]
        out: Callable[[int, int, int], None]
        inp: Callable[[int, int], int]
        hlt: Callable[[], None]
        cli: Callable[[], None]
        sti: Callable[[], None]
        emit: Callable[..., None]
        wrong_context: Callable[[str], NoReturn]
        user_call: Callable[..., Any]
        index: int

    def __init__(self, vp: VirtualProcessor) -> None:
        self.__vp__ = vp
        self.rax = self.rbx = self.rcx = self.rdx = self.rsi = self.rdi = self.rbp = 0
        self.r8 = self.r9 = self.r10 = self.r11 = self.r12 = self.r13 = self.r14 = self.r15 = 0
        self.index = vp.index
        for name in _BOUND:
            setattr(self, name, getattr(vp, name))

    @property
    def xmm(self) -> list[int]:
        """XMM0-15 as 128-bit integers (shared, vsm-spec §5.5)."""
        return self.__vp__.xmm

    # -- the current mode ---------------------------------------------------------------------
    @property
    def rip(self) -> int:
        return self.__vp__.p.rip

    @property
    def rflags(self) -> int:
        return self.__vp__.p.rflags

    @property
    def cpl(self) -> int:
        return self.__vp__.p.cpl

    @property
    def vtl(self) -> int:
        """The active VTL (HvRegisterVsmVpStatus.ActiveVtl, vsm-spec §4.4)."""
        return self.__vp__.vtl

    @property
    def interrupted_cpl(self) -> int:
        """The privilege level an exception interrupted (CS in its stack frame)."""
        return self.__vp__.interrupted_cpl

    @property
    def tracing(self) -> bool:
        """Whether the model records trace events (instrumentation, not architecture)."""
        return self.__vp__.trace.on

    @property
    def actor(self) -> str:
        """Who runs in the current VTL, for traces."""
        return self.__vp__.p.actor

    @actor.setter
    def actor(self, label: str) -> None:
        self.__vp__.p.actor = label

    def read_cr(self, cr: int) -> int:
        """``mov r64, crN``: CR0, CR2, CR3, CR4 or CR8; #UD for others, #GP(0) at CPL>0."""
        vp = self.__vp__
        if cr not in (0, 2, 3, 4, 8):
            vp.fault(Vector.UD)
            return 0
        if vp.p.cpl != 0:
            vp.fault(Vector.GP, 0)
            return 0
        return int(vp.cr2 if cr == 2 else getattr(vp.p, f"cr{cr}"))

    def software_interrupt(self, vector: int) -> None:
        """``int n``: through the IDT like any interrupt (the gate's DPL is 0 in the model, so
        at CPL3 it is #GP, SDM Vol. 3A §6.12.1.1)."""
        vp = self.__vp__
        if vp.p.cpl != 0:
            vp.fault(Vector.GP, (vector << 3) | 2)
            return
        vp.fault(vector & 0xFF)

    def kernel(self) -> object:
        """The code image whose processor block this VTL's GS base designates (its symbols).

        A GS-relative load at CPL3 reaches the user TEB, not the kernel: there the model raises
        #GP as kernel code run in the wrong context does (SDM Vol. 3A §6.15)."""
        vp = self.__vp__
        bank = vp.p
        image = vp.images.get((vp.vtl, bank.gs_base))
        if image is None or bank.cpl != 0:
            vp.wrong_context("kernel code without its kernel's GS")
        return image

    def __repr__(self) -> str:
        return f"<Cpu VP{self.index} VTL{self.vtl} CPL{self.cpl}>"
