"""x86-64 architectural numbers used by the platform model (no behaviour).

Source: Intel 64 and IA-32 Architectures Software Developer's Manual (SDM), Vol. 3A:
§2.5 (control registers), §2.2.1 (EFER), §4.5 (4-level paging entry formats, tables 4-15..4-20),
§4.6 (access rights, SMEP/SMAP), §4.7 (page-fault error code, figure 4-12), §6.3.1 (vectors).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1
#: Physical-address width the modelled processor reports (CPUID 0x80000008 EAX[7:0]).  A common
#: server value; entries with address bits at or above it set are reserved (SDM §4.5, "M").
MAXPHYADDR = 46
#: 4-level paging linear addresses are 48 bits and must be canonical (SDM §3.3.7.1).
LINEAR_ADDRESS_BITS = 48


class Pte(IntFlag):
    """Bits common to 4-level paging-structure entries (SDM Vol. 3A tables 4-15..4-20)."""

    P = 1 << 0  # present
    RW = 1 << 1  # read/write
    US = 1 << 2  # user/supervisor
    PWT = 1 << 3  # page-level write-through
    PCD = 1 << 4  # page-level cache disable
    A = 1 << 5  # accessed
    D = 1 << 6  # dirty (leaf entries only)
    PS = 1 << 7  # page size (PDPTE: 1 GiB, PDE: 2 MiB); PAT in a 4 KiB PTE
    G = 1 << 8  # global (leaf entries only, with CR4.PGE)
    NX = 1 << 63  # execute-disable (with EFER.NXE)


#: Bits 51:12 hold the next table's / page frame's physical address (SDM table 4-15 ff.).
PTE_ADDR_MASK = ((1 << MAXPHYADDR) - 1) & ~PAGE_MASK
#: Reserved physical-address bits: MAXPHYADDR..51 must be zero (SDM §4.5: "Reserved (must be 0)").
PTE_RSVD_ADDR_MASK = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)


class Cr0(IntFlag):
    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16  # supervisor writes honour R/W (SDM §2.5)
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31


class Cr4(IntFlag):
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23


class Efer(IntFlag):
    SCE = 1 << 0  # SYSCALL enable
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11


class Rflags(IntFlag):
    CF = 1 << 0
    FIXED1 = 1 << 1  # always 1
    ZF = 1 << 6
    TF = 1 << 8
    IF = 1 << 9
    DF = 1 << 10
    AC = 1 << 18  # alignment check / SMAP override at CPL0 (SDM §4.6)


class PfErr(IntFlag):
    """Page-fault error code (SDM Vol. 3A figure 4-12)."""

    P = 1 << 0  # 0: not-present page; 1: protection violation
    W = 1 << 1  # access was a write
    U = 1 << 2  # user-mode access
    RSVD = 1 << 3  # reserved bit set in a paging-structure entry
    I = 1 << 4  # noqa: E741  instruction fetch
    PK = 1 << 5
    SS = 1 << 6


class Vector(IntEnum):
    """Exception vectors (SDM Vol. 3A table 6-1)."""

    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18


class Msr(IntEnum):
    """Architectural MSRs (SDM Vol. 4, table 2-2)."""

    APIC_BASE = 0x1B
    SYSENTER_CS = 0x174
    SYSENTER_ESP = 0x175
    SYSENTER_EIP = 0x176
    MISC_ENABLE = 0x1A0
    PAT = 0x277
    EFER = 0xC000_0080
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SFMASK = 0xC000_0084
    FS_BASE = 0xC000_0100
    GS_BASE = 0xC000_0101
    KERNEL_GS_BASE = 0xC000_0102
    TSC_AUX = 0xC000_0103


class Access(IntEnum):
    """Kinds of memory access (the values of HV_INTERCEPT_ACCESS_TYPE: read, write, execute)."""

    READ = 0
    WRITE = 1
    EXECUTE = 2


#: Nominal instruction lengths reported in intercept headers for the model's "instructions".
#: ``mov r64, [m]`` with a 32-bit displacement is 7 bytes; vmcall is 3 (0F 01 C1); wrmsr 2
#: (0F 30); mov cr, r64 is 3 (0F 22 /r); syscall 2 (0F 05).
INSN_LEN_MOV = 7
INSN_LEN_VMCALL = 3
INSN_LEN_WRMSR = 2
INSN_LEN_MOV_CR = 3
INSN_LEN_LIDT = 3
