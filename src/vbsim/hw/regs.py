"""Register state of a virtual processor, split as the TLFS splits it (vsm-spec §5.5).

*Private* state is saved and swapped on every VTL switch; each enabled VTL has its own
:class:`PrivateState` bank.  *Shared* state (RAX..R15 except RSP, CR2, DR0–DR3, DR6, XMM, XCR0)
lives on the processor itself and stays live across VTL call and return — which is why the
Secure Kernel clears it before returning (vbs-internals §2.2 step 5).

DR6 is shared or private depending on the processor (vsm-spec §5.5, VsmCapabilities.Dr6Shared);
the model reports Dr6Shared=1 and keeps DR6 shared, as on Intel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbsim.hw.x86 import Cr0, Cr4, Efer, Rflags

#: Names of the shared general-purpose registers (everything but RSP), in hvdef order.
SHARED_GPRS: tuple[str, ...] = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)


class SharedGprs:
    """The shared general registers as typed attributes, for the classes that offer them: the
    guest's :class:`~vbsim.hw.cpu.Cpu` (which stores them in slots) and the
    :class:`~vbsim.hw.vp.VirtualProcessor` (whose ``rax`` ... are views of its Cpu's).  Only
    annotations: no storage, no slots of its own."""

    __slots__ = ()

    rax: int
    rcx: int
    rdx: int
    rbx: int
    rbp: int
    rsi: int
    rdi: int
    r8: int
    r9: int
    r10: int
    r11: int
    r12: int
    r13: int
    r14: int
    r15: int


#: Shared registers other than GPRs and XMM.
#: IA32_MISC_ENABLE is shared: the TLFS lists the private MSRs (vsm.md "Private State", x64:
#: SYSENTER_*, STAR, LSTAR, CSTAR, SFMASK, EFER, PAT, KERNEL_GSBASE, FS.BASE, GS.BASE, TSC_AUX and
#: the local APIC) and IA32_MISC_ENABLE is not among them.
SHARED_OTHER: tuple[str, ...] = ("cr2", "dr0", "dr1", "dr2", "dr3", "dr6", "xcr0", "misc_enable")

#: Private registers (one copy per VTL).  Order: vsm-spec §5.5 table, left column.
PRIVATE_REGS: tuple[str, ...] = (
    "rip",
    "rsp",
    "rflags",
    "cr0",
    "cr3",
    "cr4",
    "cr8",
    "dr7",
    "efer",
    "star",
    "lstar",
    "cstar",
    "sfmask",
    "sysenter_cs",
    "sysenter_esp",
    "sysenter_eip",
    "pat",
    "kernel_gs_base",
    "fs_base",
    "gs_base",
    "tsc_aux",
    "apic_base",
    "idtr_base",
    "idtr_limit",
    "gdtr_base",
    "gdtr_limit",
    "tsc",
)

LONG_MODE_CR0 = int(Cr0.PE | Cr0.PG | Cr0.WP | Cr0.NE | Cr0.ET)
LONG_MODE_CR4 = int(Cr4.PAE | Cr4.PGE | Cr4.OSFXSR | Cr4.OSXMMEXCPT)
LONG_MODE_EFER = int(Efer.LME | Efer.LMA | Efer.NXE | Efer.SCE)


@dataclass(slots=True)
class Segment:
    """A segment register (vsm-spec §1.3 HV_X64_SEGMENT_REGISTER)."""

    base: int = 0
    limit: int = 0xFFFF_FFFF
    selector: int = 0
    attributes: int = 0


@dataclass(slots=True)
class PrivateState:
    """One VTL's private processor state."""

    rip: int = 0
    rsp: int = 0
    rflags: int = int(Rflags.FIXED1)
    cr0: int = LONG_MODE_CR0
    cr3: int = 0
    cr4: int = LONG_MODE_CR4
    cr8: int = 0
    dr7: int = 0x400
    efer: int = LONG_MODE_EFER
    star: int = 0
    lstar: int = 0
    cstar: int = 0
    sfmask: int = 0
    sysenter_cs: int = 0
    sysenter_esp: int = 0
    sysenter_eip: int = 0
    pat: int = 0x0007_0406_0007_0406  # power-on PAT (SDM Vol. 3A §11.12.4)
    kernel_gs_base: int = 0
    fs_base: int = 0
    gs_base: int = 0
    tsc_aux: int = 0
    apic_base: int = 0xFEE0_0900  # xAPIC enabled, BSP
    idtr_base: int = 0
    idtr_limit: int = 0
    gdtr_base: int = 0
    gdtr_limit: int = 0
    tsc: int = 0
    #: Current privilege level (CS.DPL in long mode): private, since CS is private.
    cpl: int = 0
    segments: dict[str, Segment] = field(
        default_factory=lambda: {n: Segment() for n in ("cs", "ds", "es", "fs", "gs", "ss")}
    )
    ldtr: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    #: Who is running in this VTL (a label for traces: "nt", "securekernel", "lsass" ...).
    actor: str = ""

    def copy(self) -> PrivateState:
        clone = PrivateState(**{n: getattr(self, n) for n in PRIVATE_REGS}, cpl=self.cpl)
        clone.segments = {
            k: Segment(s.base, s.limit, s.selector, s.attributes) for k, s in self.segments.items()
        }
        clone.ldtr = Segment(
            self.ldtr.base, self.ldtr.limit, self.ldtr.selector, self.ldtr.attributes
        )
        clone.tr = Segment(self.tr.base, self.tr.limit, self.tr.selector, self.tr.attributes)
        clone.actor = self.actor
        return clone
