"""Hyper-V TLFS numbers and wire layouts for the VSM model (the Python analogue of OpenVMM's
``hvdef`` crate).

This module is *data only*: ``IntEnum``/``IntFlag`` definitions, integer constants, little-endian
``struct.Struct`` wire layouts and :class:`BitField` descriptors whose only behaviour is trivial
bit extraction and insertion.  Policy (who may do what, which status to return) lives elsewhere.

Every group cites the section of ``/work/shared/reference/vsm-spec.md`` it comes from, in the
form ``vsm-spec §N [source tag]``.  Where the reference marks a CONFLICT or an unverified value,
the comment next to the definition says which choice is made here and why.  Bit numbers count
from the least significant bit (bit 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag, unique
from typing import Final

_U64_MASK: Final = 0xFFFF_FFFF_FFFF_FFFF


# ---------------------------------------------------------------------------------------------
# Bitfield descriptor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BitField:
    """A contiguous field of ``width`` bits starting at bit ``shift`` of an integer register."""

    shift: int
    width: int

    def __post_init__(self) -> None:
        if self.shift < 0 or self.width < 1:
            raise ValueError(f"invalid BitField(shift={self.shift}, width={self.width})")

    @property
    def mask(self) -> int:
        """The field's mask, already shifted into position."""
        return ((1 << self.width) - 1) << self.shift

    def extract(self, value: int) -> int:
        """Return the field's value (right-aligned) from ``value``."""
        return (value >> self.shift) & ((1 << self.width) - 1)

    def insert(self, value: int, field_value: int) -> int:
        """Return ``value`` with this field replaced by ``field_value``.

        Raises ``ValueError`` if ``field_value`` does not fit in ``width`` bits (no silent
        truncation: a too-wide value is a bug in the caller).
        """
        if field_value < 0 or field_value >> self.width:
            raise ValueError(f"value {field_value:#x} does not fit in {self.width} bit(s)")
        return (value & ~self.mask) | (field_value << self.shift)


def _bits(high: int, low: int) -> int:
    """Mask with bits ``high``..``low`` (inclusive) set."""
    return ((1 << (high - low + 1)) - 1) << low


# ---------------------------------------------------------------------------------------------
# General constants
# vsm-spec §1.1 [hvdef, Linux]
# ---------------------------------------------------------------------------------------------

HV_PARTITION_ID_SELF: Final = 0xFFFF_FFFF_FFFF_FFFF
HV_VP_INDEX_SELF: Final = 0xFFFF_FFFE
HV_ANY_VP: Final = 0xFFFF_FFFF
HV_PAGE_SIZE: Final = 4096
HV_PAGE_SHIFT: Final = 12

# VTL numbers.  vbs-internals §0 [TLFS]: up to 16 VTLs are architected, 2 are implemented
# (VTL0 and VTL1).  The TLFS HV_VTL type is a plain u8 (vsm-spec §1.3).
VTL0: Final = 0
VTL1: Final = 1
MAX_VTL_ARCHITECTED: Final = 15
VTLS_IMPLEMENTED: Final = 2


# ---------------------------------------------------------------------------------------------
# Hypercall input / result values
# vsm-spec §1.1 [TLFS hypercall-interface, hvdef `hypercall::Control`]
# ---------------------------------------------------------------------------------------------

# Hypercall input value (x64: RCX).
INPUT_CALL_CODE: Final = BitField(0, 16)
INPUT_FAST: Final = BitField(16, 1)
INPUT_VARHEAD_SIZE: Final = BitField(17, 10)  # in QWORDs
INPUT_IS_NESTED: Final = BitField(31, 1)
INPUT_REP_COUNT: Final = BitField(32, 12)
INPUT_REP_START: Final = BitField(48, 12)
INPUT_RSVD_MASK: Final = _bits(30, 27) | _bits(47, 44) | _bits(63, 60)  # 0xF000_F000_7800_0000

# Hypercall result value (x64: RAX).  Bits 31:16 and 63:44 are reserved.
RESULT_STATUS: Final = BitField(0, 16)
RESULT_REPS_COMPLETE: Final = BitField(32, 12)  # absolute count, not relative to rep start
RESULT_RSVD_MASK: Final = _bits(31, 16) | _bits(63, 44)

# HV_INPUT_VTL (1 byte).  vsm-spec §1.1 [TLFS datatypes/hv_input_vtl, hvdef `HvInputVtl`]
INPUT_VTL_TARGET: Final = BitField(0, 4)
INPUT_VTL_USE_TARGET: Final = BitField(4, 1)
INPUT_VTL_RSVD_MASK: Final = 0xE0  # OpenVMM rejects non-zero with INVALID_PARAMETER

# VTL call / VTL return control input (passed in RCX, moved to RAX by the stub).
# vsm-spec §1.3 [TLFS vsm.md, hv1]: all bits of a VTL-call control are reserved; for a VTL
# return, bit 0 is "fast return" and bits 63:1 are RsvdZ.
VTL_CALL_CONTROL_RSVD_MASK: Final = _U64_MASK
VTL_RETURN_FAST: Final = BitField(0, 1)
VTL_RETURN_CONTROL_RSVD_MASK: Final = _bits(63, 1)


# ---------------------------------------------------------------------------------------------
# Hypercall call codes
# vsm-spec §1.2 [TLFS pages; hvdef `HypercallCode`; Linux `HVCALL_*`]
# DISABLE_PARTITION_VTL / DISABLE_VP_VTL: vbs-internals §0 [TLFS].
# ---------------------------------------------------------------------------------------------


@unique
class HvCallCode(IntEnum):
    FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002
    FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003
    SEND_SYNTHETIC_CLUSTER_IPI = 0x000B
    MODIFY_VTL_PROTECTION_MASK = 0x000C
    ENABLE_PARTITION_VTL = 0x000D
    DISABLE_PARTITION_VTL = 0x000E
    ENABLE_VP_VTL = 0x000F
    DISABLE_VP_VTL = 0x0010
    VTL_CALL = 0x0011
    VTL_RETURN = 0x0012
    FLUSH_VIRTUAL_ADDRESS_SPACE_EX = 0x0013
    FLUSH_VIRTUAL_ADDRESS_LIST_EX = 0x0014
    SEND_SYNTHETIC_CLUSTER_IPI_EX = 0x0015
    INSTALL_INTERCEPT = 0x004D
    GET_VP_REGISTERS = 0x0050
    SET_VP_REGISTERS = 0x0051
    TRANSLATE_VIRTUAL_ADDRESS = 0x0052
    POST_MESSAGE = 0x005C
    SIGNAL_EVENT = 0x005D
    ASSERT_VIRTUAL_INTERRUPT = 0x0094
    START_VIRTUAL_PROCESSOR = 0x0099
    GET_VP_INDEX_FROM_APIC_ID = 0x009A
    TRANSLATE_VIRTUAL_ADDRESS_EX = 0x00AC
    FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE = 0x00AF
    FLUSH_GUEST_PHYSICAL_ADDRESS_LIST = 0x00B0
    SIGNAL_EVENT_DIRECT = 0x00C0
    POST_MESSAGE_DIRECT = 0x00C1
    CHECK_SPARSE_GPA_PAGE_VTL_ACCESS = 0x00D4
    ACCEPT_GPA_PAGES = 0x00D9
    MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY = 0x00DB
    QUERY_SPARSE_GPA_PAGE_HOST_VISIBILITY = 0x011C
    VBS_VM_CALL_REPORT = 0xC001  # hvdef `vbs.rs`


# Calls marked "rep" in the Kind column of vsm-spec §1.2 (the 0xAF/0xB0 and Disable* kinds are
# not given by the reference, so they are left out).
REP_HYPERCALLS: Final = frozenset(
    {
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST,
        HvCallCode.MODIFY_VTL_PROTECTION_MASK,
        HvCallCode.FLUSH_VIRTUAL_ADDRESS_LIST_EX,
        HvCallCode.GET_VP_REGISTERS,
        HvCallCode.SET_VP_REGISTERS,
        HvCallCode.GET_VP_INDEX_FROM_APIC_ID,
        HvCallCode.CHECK_SPARSE_GPA_PAGE_VTL_ACCESS,
        HvCallCode.ACCEPT_GPA_PAGES,
        HvCallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY,
        HvCallCode.QUERY_SPARSE_GPA_PAGE_HOST_VISIBILITY,
    }
)


# Partition privilege mask (reported in CPUID 0x40000003 EAX:EBX).
# vsm-spec §1.2 [TLFS datatypes/hv_partition_privilege_mask; hvdef `HvPartitionPrivilege`]
class HvPartitionPrivilege(IntFlag):
    ACCESS_SYNIC_REGS = 1 << 2
    ACCESS_HYPERCALL_MSRS = 1 << 5  # TLFS hv_partition_privilege_mask: GUEST_OS_ID, HYPERCALL
    ACCESS_VP_INDEX = 1 << 6  # TLFS hv_partition_privilege_mask: HV_X64_MSR_VP_INDEX
    ACCESS_VSM = 1 << 48
    ACCESS_VP_REGISTERS = 1 << 49
    ENABLE_EXTENDED_HYPERCALLS = 1 << 52
    START_VIRTUAL_PROCESSOR = 1 << 53  # hvdef
    ISOLATION = 1 << 54  # hvdef


# ---------------------------------------------------------------------------------------------
# HV_STATUS codes
# vsm-spec §2 [hvdef `HvError` (authoritative list); Linux `hvgdk_mini.h`; TLFS names only]
# ---------------------------------------------------------------------------------------------


@unique
class HvStatus(IntEnum):
    SUCCESS = 0x0000
    INVALID_HYPERCALL_CODE = 0x0002
    INVALID_HYPERCALL_INPUT = 0x0003
    INVALID_ALIGNMENT = 0x0004
    INVALID_PARAMETER = 0x0005
    ACCESS_DENIED = 0x0006
    INVALID_PARTITION_STATE = 0x0007
    OPERATION_DENIED = 0x0008
    UNKNOWN_PROPERTY = 0x0009
    PROPERTY_VALUE_OUT_OF_RANGE = 0x000A
    INSUFFICIENT_MEMORY = 0x000B
    PARTITION_TOO_DEEP = 0x000C
    INVALID_PARTITION_ID = 0x000D
    INVALID_VP_INDEX = 0x000E
    NOT_FOUND = 0x0010
    INVALID_PORT_ID = 0x0011
    INVALID_CONNECTION_ID = 0x0012
    INSUFFICIENT_BUFFERS = 0x0013
    NOT_ACKNOWLEDGED = 0x0014
    INVALID_VP_STATE = 0x0015
    ACKNOWLEDGED = 0x0016
    INVALID_SAVE_RESTORE_STATE = 0x0017
    INVALID_SYNIC_STATE = 0x0018
    OBJECT_IN_USE = 0x0019
    INVALID_PROXIMITY_DOMAIN_INFO = 0x001A
    NO_DATA = 0x001B
    INACTIVE = 0x001C
    NO_RESOURCES = 0x001D
    FEATURE_UNAVAILABLE = 0x001E
    PARTIAL_PACKET = 0x001F
    PROCESSOR_FEATURE_NOT_SUPPORTED = 0x0020
    PROCESSOR_CACHE_LINE_FLUSH_SIZE_INCOMPATIBLE = 0x0030
    INSUFFICIENT_BUFFER = 0x0033
    INCOMPATIBLE_PROCESSOR = 0x0037
    INSUFFICIENT_DEVICE_DOMAINS = 0x0038
    CPUID_FEATURE_VALIDATION_ERROR = 0x003C
    CPUID_XSAVE_FEATURE_VALIDATION_ERROR = 0x003D
    PROCESSOR_STARTUP_TIMEOUT = 0x003E
    SMX_ENABLED = 0x003F
    INVALID_LP_INDEX = 0x0041
    INVALID_REGISTER_VALUE = 0x0050
    INVALID_VTL_STATE = 0x0051
    NX_NOT_DETECTED = 0x0055
    INVALID_DEVICE_ID = 0x0057
    INVALID_DEVICE_STATE = 0x0058
    PENDING_PAGE_REQUESTS = 0x0059
    PAGE_REQUEST_INVALID = 0x0060
    KEY_ALREADY_EXISTS = 0x0065
    DEVICE_ALREADY_IN_DOMAIN = 0x0066
    INVALID_CPU_GROUP_ID = 0x006F
    INVALID_CPU_GROUP_STATE = 0x0070
    OPERATION_FAILED = 0x0071
    NOT_ALLOWED_WITH_NESTED_VIRT_ACTIVE = 0x0072
    INSUFFICIENT_ROOT_MEMORY = 0x0073
    EVENT_BUFFER_ALREADY_FREED = 0x0074
    TIMEOUT = 0x0078  # Linux spells it TIME_OUT
    CALL_PENDING = 0x0079  # Linux only
    VTL_ALREADY_ENABLED = 0x0086
    UNKNOWN_REGISTER_NAME = 0x0087


# ---------------------------------------------------------------------------------------------
# HV_MAP_GPA_FLAGS (u32) and derived masks
# vsm-spec §3.1 [TLFS datatypes/hv_map_gpa_flags; hvdef `HvMapGpaFlags`; Linux]
# ---------------------------------------------------------------------------------------------


class HvMapGpaFlags(IntFlag):
    READABLE = 0x1
    WRITABLE = 0x2
    KERNEL_EXECUTABLE = 0x4  # KMX / "KX"
    USER_EXECUTABLE = 0x8  # UMX / "UX"
    SUPERVISOR_SHADOW_STACK = 0x10  # hvdef
    PAGING_WRITABILITY = 0x20  # hvdef; HLAT-related, semantics unverified (vsm-spec §3.1)
    VERIFY_PAGING_WRITABILITY = 0x40  # hvdef
    ADJUSTABLE = 0x8000  # not allowed for VTL protections (OpenHCL)
    # Bits 17:16 are a 2-bit fill selector used by the map-GPA hypercalls, not by VTL masks:
    # 1 = NO_ACCESS, 2 = ZEROED, 3 = ONES.  ONES is therefore the composite 0x30000.
    NO_ACCESS = 0x10000
    ZEROED = 0x20000
    ONES = 0x30000
    NOT_CACHED = 0x200000
    LARGE_PAGE = 0x80000000


# Plain ints (not HvMapGpaFlags) so that ``~`` and mixed arithmetic behave like C masks.
HV_MAP_GPA_PERMISSIONS_NONE: Final = 0x0
HV_MAP_GPA_PERMISSIONS_ALL: Final = 0xF
HV_MAP_GPA_EXECUTABLE: Final = 0xC
HV_MAP_GPA_PERMISSIONS_MASK: Final = 0xF


# ---------------------------------------------------------------------------------------------
# Register names for Get/SetVpRegisters
# vsm-spec §4 [TLFS datatypes/hv_register_name + vsm.md; hvdef `HvX64RegisterName`]
# ---------------------------------------------------------------------------------------------


@unique
class HvRegisterName(IntEnum):
    # The VP's activity (suspend) state.  Not in the public TLFS: OpenVMM hvdef
    # ``HvAllArchRegisterName::InternalActivityState`` = 0x00000004 (what OpenHCL reads of VTL0).
    INTERNAL_ACTIVITY_STATE = 0x00000004

    # Pending events / interrupt state.  vsm-spec §4
    PENDING_INTERRUPTION = 0x00010002
    INTERRUPT_STATE = 0x00010003
    PENDING_EVENT0 = 0x00010004
    PENDING_EVENT1 = 0x00010005
    PENDING_EVENT2 = 0x00010008  # TLFS
    PENDING_EVENT3 = 0x00010009  # TLFS

    # x64 general-purpose registers.  vsm-spec §4 x64 table
    RAX = 0x00020000
    RCX = 0x00020001
    RDX = 0x00020002
    RBX = 0x00020003
    RSP = 0x00020004
    RBP = 0x00020005
    RSI = 0x00020006
    RDI = 0x00020007
    R8 = 0x00020008
    R9 = 0x00020009
    R10 = 0x0002000A
    R11 = 0x0002000B
    R12 = 0x0002000C
    R13 = 0x0002000D
    R14 = 0x0002000E
    R15 = 0x0002000F
    RIP = 0x00020010
    RFLAGS = 0x00020011

    # Vector registers.
    XMM0 = 0x00030000
    XMM1 = 0x00030001
    XMM2 = 0x00030002
    XMM3 = 0x00030003
    XMM4 = 0x00030004
    XMM5 = 0x00030005
    XMM6 = 0x00030006
    XMM7 = 0x00030007
    XMM8 = 0x00030008
    XMM9 = 0x00030009
    XMM10 = 0x0003000A
    XMM11 = 0x0003000B
    XMM12 = 0x0003000C
    XMM13 = 0x0003000D
    XMM14 = 0x0003000E
    XMM15 = 0x0003000F

    # Control registers.
    CR0 = 0x00040000
    CR2 = 0x00040001
    CR3 = 0x00040002
    CR4 = 0x00040003
    CR8 = 0x00040004
    XFEM = 0x00040005  # XCR0

    # Debug registers.
    DR0 = 0x00050000
    DR1 = 0x00050001
    DR2 = 0x00050002
    DR3 = 0x00050003
    DR6 = 0x00050004
    DR7 = 0x00050005

    # Segment registers (this order, which differs from HV_INITIAL_VP_CONTEXT's).
    ES = 0x00060000
    CS = 0x00060001
    SS = 0x00060002
    DS = 0x00060003
    FS = 0x00060004
    GS = 0x00060005
    LDTR = 0x00060006
    TR = 0x00060007

    # Table registers.
    IDTR = 0x00070000
    GDTR = 0x00070001

    # MSRs.
    EFER = 0x00080001
    KERNEL_GS_BASE = 0x00080002
    APIC_BASE = 0x00080003
    PAT = 0x00080004
    SYSENTER_CS = 0x00080005
    SYSENTER_EIP = 0x00080006
    SYSENTER_ESP = 0x00080007
    STAR = 0x00080008
    LSTAR = 0x00080009
    CSTAR = 0x0008000A
    SFMASK = 0x0008000B
    TSC_AUX = 0x0008007B
    XSS = 0x0008008B
    S_CET = 0x0008008D

    # Hypervisor-defined registers.  vsm-spec §4 main table
    GUEST_OS_ID = 0x00090002
    VP_INDEX = 0x00090003
    VP_ASSIST_PAGE = 0x00090013

    # SynIC.
    SINT0 = 0x000A0000
    SINT1 = 0x000A0001
    SINT2 = 0x000A0002
    SINT3 = 0x000A0003
    SINT4 = 0x000A0004
    SINT5 = 0x000A0005
    SINT6 = 0x000A0006
    SINT7 = 0x000A0007
    SINT8 = 0x000A0008
    SINT9 = 0x000A0009
    SINT10 = 0x000A000A
    SINT11 = 0x000A000B
    SINT12 = 0x000A000C
    SINT13 = 0x000A000D
    SINT14 = 0x000A000E
    SINT15 = 0x000A000F
    SCONTROL = 0x000A0010
    SVERSION = 0x000A0011
    SIEFP = 0x000A0012  # hvdef "Sifp"
    SIMP = 0x000A0013  # hvdef "Sipp"
    EOM = 0x000A0014
    SIRBP = 0x000A0015

    # VSM registers.
    VSM_CODE_PAGE_OFFSETS = 0x000D0002
    VSM_VP_STATUS = 0x000D0003
    VSM_PARTITION_STATUS = 0x000D0004
    VSM_VINA = 0x000D0005
    VSM_CAPABILITIES = 0x000D0006
    VSM_PARTITION_CONFIG = 0x000D0007
    # hvdef only (CVM paravisor); unverified for plain Hyper-V (vsm-spec §4).  Defined so the
    # number is reserved; the model need not implement it.
    GUEST_VSM_PARTITION_CONFIG = 0x000D0008
    VSM_VP_SECURE_CONFIG_VTL0 = 0x000D0010
    VSM_VP_SECURE_CONFIG_VTL1 = 0x000D0011
    VSM_VP_SECURE_CONFIG_VTL2 = 0x000D0012
    VSM_VP_SECURE_CONFIG_VTL3 = 0x000D0013
    VSM_VP_SECURE_CONFIG_VTL4 = 0x000D0014
    VSM_VP_SECURE_CONFIG_VTL5 = 0x000D0015
    VSM_VP_SECURE_CONFIG_VTL6 = 0x000D0016
    VSM_VP_SECURE_CONFIG_VTL7 = 0x000D0017
    VSM_VP_SECURE_CONFIG_VTL8 = 0x000D0018
    VSM_VP_SECURE_CONFIG_VTL9 = 0x000D0019
    VSM_VP_SECURE_CONFIG_VTL10 = 0x000D001A
    VSM_VP_SECURE_CONFIG_VTL11 = 0x000D001B
    VSM_VP_SECURE_CONFIG_VTL12 = 0x000D001C
    VSM_VP_SECURE_CONFIG_VTL13 = 0x000D001D
    VSM_VP_SECURE_CONFIG_VTL14 = 0x000D001E
    VSM_VP_WAIT_FOR_TLB_LOCK = 0x000D0020

    # Secure-register intercept configuration (a register of VTL1).
    CR_INTERCEPT_CONTROL = 0x000E0000
    CR_INTERCEPT_CR0_MASK = 0x000E0001
    CR_INTERCEPT_CR4_MASK = 0x000E0002
    CR_INTERCEPT_IA32_MISC_ENABLE_MASK = 0x000E0003


# Architectural registers that OpenHCL's `validate_register_access`
# (openhcl/virt_mshv_vtl/src/processor/hardware_cvm/mod.rs) lets only a *higher* VTL reach
# through Get/SetVpRegisters (vsm-spec §1.3, "VTL rule").  The set copies that source's list
# exactly: GPRs, RIP, RFLAGS, CR0/2/3/4/8, XFEM, DR0-DR3 and DR7, the eight segment registers,
# IDTR/GDTR, EFER, KERNEL_GS_BASE, SYSENTER_CS/EIP/ESP, STAR/LSTAR/CSTAR/SFMASK, PAT and TSC_AUX.
# Choices: DR6 is left out (it may be shared between VTLs, see CAP_DR6_SHARED, and OpenHCL
# omits it); APIC_BASE is left out (OpenHCL routes it to the per-VTL LAPIC without this check);
# XFEM is included because OpenHCL includes it.
ARCHITECTURAL_REGISTERS: Final = frozenset(
    {
        HvRegisterName.RAX,
        HvRegisterName.RCX,
        HvRegisterName.RDX,
        HvRegisterName.RBX,
        HvRegisterName.RSP,
        HvRegisterName.RBP,
        HvRegisterName.RSI,
        HvRegisterName.RDI,
        HvRegisterName.R8,
        HvRegisterName.R9,
        HvRegisterName.R10,
        HvRegisterName.R11,
        HvRegisterName.R12,
        HvRegisterName.R13,
        HvRegisterName.R14,
        HvRegisterName.R15,
        HvRegisterName.RIP,
        HvRegisterName.RFLAGS,
        HvRegisterName.CR0,
        HvRegisterName.CR2,
        HvRegisterName.CR3,
        HvRegisterName.CR4,
        HvRegisterName.CR8,
        HvRegisterName.XFEM,
        HvRegisterName.DR0,
        HvRegisterName.DR1,
        HvRegisterName.DR2,
        HvRegisterName.DR3,
        HvRegisterName.DR7,
        HvRegisterName.ES,
        HvRegisterName.CS,
        HvRegisterName.SS,
        HvRegisterName.DS,
        HvRegisterName.FS,
        HvRegisterName.GS,
        HvRegisterName.LDTR,
        HvRegisterName.TR,
        HvRegisterName.IDTR,
        HvRegisterName.GDTR,
        HvRegisterName.EFER,
        HvRegisterName.KERNEL_GS_BASE,
        HvRegisterName.SYSENTER_CS,
        HvRegisterName.SYSENTER_EIP,
        HvRegisterName.SYSENTER_ESP,
        HvRegisterName.STAR,
        HvRegisterName.LSTAR,
        HvRegisterName.CSTAR,
        HvRegisterName.SFMASK,
        HvRegisterName.PAT,
        HvRegisterName.TSC_AUX,
    }
)


# ---------------------------------------------------------------------------------------------
# VSM register bit layouts
# vsm-spec §4.1
# ---------------------------------------------------------------------------------------------

# HvRegisterVsmCapabilities (0x000D0006).  vsm-spec §4.1 [hvdef, mainline Linux mshv_vtl]
# CONFLICT (D1): the TLFS table lists Dr6Shared at bit 63, MbecVtlMask at 62:47 and
# DenyLowerVtlStartup at 46 (MSB-first).  Chosen: the LSB-first layout used by working Microsoft
# code (OpenVMM hvdef and Linux `hv_register_vsm_capabilities`), as the reference recommends; the
# TLFS table is most likely written MSB->LSB by mistake.
CAP_DR6_SHARED: Final = BitField(0, 1)
CAP_MBEC_VTL_MASK: Final = BitField(1, 16)
CAP_DENY_LOWER_VTL_STARTUP: Final = BitField(17, 1)
CAP_SUPERVISOR_SHADOW_STACK: Final = BitField(18, 1)
CAP_HW_HVPT_AVAILABLE: Final = BitField(19, 1)
CAP_SW_HVPT_AVAILABLE: Final = BitField(20, 1)
CAP_HW_HVPT_RANGE_BITS: Final = BitField(21, 6)
CAP_INTERCEPT_PAGE_AVAILABLE: Final = BitField(27, 1)
CAP_RETURN_ACTION_AVAILABLE: Final = BitField(28, 1)
CAP_VTL0_ALIAS_MAP_AVAILABLE: Final = BitField(29, 1)  # hvdef, VTL2 only
CAP_INTERCEPT_NOT_PRESENT_AVAILABLE: Final = BitField(30, 1)  # hvdef
CAP_INSTALL_INTERCEPT_EX: Final = BitField(31, 1)  # hvdef
CAP_INTERCEPT_SYSTEM_RESET_AVAILABLE: Final = BitField(32, 1)  # hvdef
CAP_PROXY_INTERRUPT_REDIRECT_AVAILABLE: Final = BitField(34, 1)  # hvdef
CAP_RSVD_MASK: Final = _bits(33, 33) | _bits(63, 35)

# HvRegisterVsmPartitionStatus (0x000D0004).  vsm-spec §4.1 [TLFS; hvdef]
PSTATUS_ENABLED_VTL_SET: Final = BitField(0, 16)
PSTATUS_MAXIMUM_VTL: Final = BitField(16, 4)
PSTATUS_MBEC_ENABLED_VTL_SET: Final = BitField(20, 16)
PSTATUS_SUPERVISOR_SHADOW_STACK_ENABLED_VTL_SET: Final = BitField(36, 4)  # hvdef only
PSTATUS_RSVD_MASK: Final = _bits(63, 40)

# HvRegisterVsmVpStatus (0x000D0003).  vsm-spec §4.1 [TLFS; hvdef]
VPSTATUS_ACTIVE_VTL: Final = BitField(0, 4)
VPSTATUS_ACTIVE_MBEC_ENABLED: Final = BitField(4, 1)
VPSTATUS_ENABLED_VTL_SET: Final = BitField(16, 16)
VPSTATUS_RSVD_MASK: Final = _bits(15, 5) | _bits(63, 32)

# HvRegisterVsmPartitionConfig (0x000D0007).  vsm-spec §4.1 [TLFS, hvdef, Linux]
# Bits 7, 8, 10, 11, 12 are RsvdZ in the TLFS but defined by hvdef and Linux; 13-15 are hvdef
# only.  All are defined here (hvdef superset); policy code decides which it honours.
# DefaultVtlProtectionMask: the current TLFS markdown (vsm.md "Default Protection Mask") lists
# bit0 Read, bit1 Write, bit2 KMX, bit3 UMX, which is HV_MAP_GPA's order (KX bit 2, UX bit 3) and
# what OpenVMM does (it converts the nibble straight into HvMapGpaFlags).  The old D2 conflict
# (UMX at bit 2) came from an earlier TLFS revision and is resolved: the field value *is* an
# HvMapGpaFlags permission nibble.
PCONFIG_ENABLE_VTL_PROTECTION: Final = BitField(
    0, 1
)  # write-once (TLFS vsm.md: the only write-once bit)
PCONFIG_DEFAULT_VTL_PROTECTION_MASK: Final = BitField(1, 4)
PCONFIG_ZERO_MEMORY_ON_RESET: Final = BitField(5, 1)
PCONFIG_DENY_LOWER_VTL_STARTUP: Final = BitField(6, 1)
PCONFIG_INTERCEPT_ACCEPTANCE: Final = BitField(7, 1)
PCONFIG_INTERCEPT_ENABLE_VTL_PROTECTION: Final = BitField(8, 1)
PCONFIG_INTERCEPT_VP_STARTUP: Final = BitField(9, 1)
PCONFIG_INTERCEPT_CPUID_UNIMPLEMENTED: Final = BitField(10, 1)
PCONFIG_INTERCEPT_UNRECOVERABLE_EXCEPTION: Final = BitField(11, 1)
PCONFIG_INTERCEPT_PAGE: Final = BitField(12, 1)
PCONFIG_INTERCEPT_RESTORE_PARTITION_TIME: Final = BitField(13, 1)  # hvdef
PCONFIG_INTERCEPT_NOT_PRESENT: Final = BitField(14, 1)  # hvdef, VTL2 only
PCONFIG_INTERCEPT_SYSTEM_RESET: Final = BitField(15, 1)  # hvdef
PCONFIG_RSVD_MASK: Final = _bits(63, 16)

# HvRegisterVsmVpSecureVtlConfig (0x000D0010 + N).  vsm-spec §4.1 [TLFS, hvdef]
SECCFG_MBEC_ENABLED: Final = BitField(0, 1)
SECCFG_TLB_LOCKED: Final = BitField(1, 1)
SECCFG_SUPERVISOR_SHADOW_STACK_ENABLED: Final = BitField(2, 1)  # hvdef
SECCFG_HW_HVPT_ENABLED: Final = BitField(3, 1)  # hvdef
SECCFG_RSVD_MASK: Final = _bits(63, 4)

# HvRegisterVsmVpWaitForTlbLock (0x000D0020).  vsm-spec §4
WAIT_FOR_TLB_LOCK_WAIT: Final = BitField(0, 1)

# HvRegisterVsmCodePageOffsets (0x000D0002).  vsm-spec §4.1 [TLFS]
CPO_VTL_CALL_OFFSET: Final = BitField(0, 12)
CPO_VTL_RETURN_OFFSET: Final = BitField(12, 12)
CPO_RSVD_MASK: Final = _bits(63, 24)

# HvRegisterVsmVina (0x000D0005).  vsm-spec §4.1 [TLFS, hvdef].  Bits 63:11 are RsvdP
# (preserve), not RsvdZ.
VINA_VECTOR: Final = BitField(0, 8)
VINA_ENABLED: Final = BitField(8, 1)
VINA_AUTO_RESET: Final = BitField(9, 1)
VINA_AUTO_EOI: Final = BitField(10, 1)
VINA_RSVDP_MASK: Final = _bits(63, 11)


# HvX64RegisterCrInterceptControl (0x000E0000).  vsm-spec §4.1 [TLFS bits 0-24; hvdef 25-28]
class HvCrInterceptControl(IntFlag):
    CR0_WRITE = 1 << 0
    CR4_WRITE = 1 << 1
    XCR0_WRITE = 1 << 2
    IA32_MISC_ENABLE_READ = 1 << 3
    IA32_MISC_ENABLE_WRITE = 1 << 4
    MSR_LSTAR_READ = 1 << 5
    MSR_LSTAR_WRITE = 1 << 6
    MSR_STAR_READ = 1 << 7
    MSR_STAR_WRITE = 1 << 8
    MSR_CSTAR_READ = 1 << 9
    MSR_CSTAR_WRITE = 1 << 10
    APIC_BASE_MSR_READ = 1 << 11
    APIC_BASE_MSR_WRITE = 1 << 12
    MSR_EFER_READ = 1 << 13
    MSR_EFER_WRITE = 1 << 14
    GDTR_WRITE = 1 << 15
    IDTR_WRITE = 1 << 16
    LDTR_WRITE = 1 << 17
    TR_WRITE = 1 << 18
    MSR_SYSENTER_CS_WRITE = 1 << 19
    MSR_SYSENTER_EIP_WRITE = 1 << 20
    MSR_SYSENTER_ESP_WRITE = 1 << 21
    MSR_SFMASK_WRITE = 1 << 22
    MSR_TSC_AUX_WRITE = 1 << 23
    MSR_SGX_LAUNCH_CONTROL_WRITE = 1 << 24
    MSR_XSS_WRITE = 1 << 25  # hvdef
    MSR_SCET_WRITE = 1 << 26  # hvdef
    MSR_PLS_SSP_WRITE = 1 << 27  # hvdef
    MSR_INTERRUPT_SSP_TABLE_ADDR_WRITE = 1 << 28  # hvdef


CR_INTERCEPT_RSVD_MASK: Final = _bits(63, 29)


# HvRegisterPendingEvent0, exception form (128-bit value; ExceptionParameter is bits 127:64).
# vsm-spec §4.1 [hvdef `HvX64PendingExceptionEvent`]
PEV_EVENT_PENDING: Final = BitField(0, 1)
PEV_EVENT_TYPE: Final = BitField(1, 3)
PEV_DELIVER_ERROR_CODE: Final = BitField(8, 1)
PEV_VECTOR: Final = BitField(16, 16)
PEV_ERROR_CODE: Final = BitField(32, 32)
PEV_EXCEPTION_PARAMETER: Final = BitField(64, 64)


@unique
class HvPendingEventType(IntEnum):
    EXCEPTION = 0
    MEMORY_INTERCEPT = 1
    NESTED_MEMORY_INTERCEPT = 2
    VIRTUALIZATION_FAULT = 3
    HYPERCALL_OUTPUT = 4
    EXT_INT = 5
    SHADOW_IPT = 6


# ---------------------------------------------------------------------------------------------
# Synthetic MSRs
# vsm-spec §1.1 (GUEST_OS_ID, HYPERCALL), §4.1 (VP assist page, SynIC table) [TLFS, Linux,
# hvdef].  HV_X64_MSR_VP_INDEX = 0x40000002 and SVERSION/SIEFP = 0x40000081/82 are not
# tabulated in vsm-spec; they are the standard TLFS numbers and lie in the 0x40000080..9F
# SynIC range the reference's sources use.
# ---------------------------------------------------------------------------------------------


# HV_X64_MSR_GUEST_OS_ID, the proprietary (Microsoft) encoding (TLFS "Reporting the Guest OS
# Identity": bit 63 = 0 for a closed-source OS, vendor ID in 62:48 (Microsoft = 1), OS ID in 47:40
# (Windows NT = 4), major 39:32, minor 31:24, service version 23:16, build 15:0).
GUEST_OS_VENDOR: Final = BitField(48, 15)
GUEST_OS_OS_ID: Final = BitField(40, 8)
GUEST_OS_MAJOR: Final = BitField(32, 8)
GUEST_OS_MINOR: Final = BitField(24, 8)
GUEST_OS_SERVICE_VERSION: Final = BitField(16, 8)
GUEST_OS_BUILD: Final = BitField(0, 16)
GUEST_OS_VENDOR_MICROSOFT: Final = 1
GUEST_OS_ID_WINDOWS_NT: Final = 4


def guest_os_id(major: int, minor: int, build: int, service_version: int = 0) -> int:
    """The GUEST_OS_ID value Windows writes: Microsoft, Windows NT, ``major.minor.build``."""
    return (
        GUEST_OS_VENDOR.insert(0, GUEST_OS_VENDOR_MICROSOFT)
        | GUEST_OS_OS_ID.insert(0, GUEST_OS_ID_WINDOWS_NT)
        | GUEST_OS_MAJOR.insert(0, major)
        | GUEST_OS_MINOR.insert(0, minor)
        | GUEST_OS_SERVICE_VERSION.insert(0, service_version)
        | GUEST_OS_BUILD.insert(0, build)
    )


@unique
class HvMsr(IntEnum):
    GUEST_OS_ID = 0x40000000
    HYPERCALL = 0x40000001
    VP_INDEX = 0x40000002
    VP_ASSIST_PAGE = 0x40000073
    SCONTROL = 0x40000080
    SVERSION = 0x40000081
    SIEFP = 0x40000082
    SIMP = 0x40000083
    EOM = 0x40000084
    SINT0 = 0x40000090
    SINT1 = 0x40000091
    SINT2 = 0x40000092
    SINT3 = 0x40000093
    SINT4 = 0x40000094
    SINT5 = 0x40000095
    SINT6 = 0x40000096
    SINT7 = 0x40000097
    SINT8 = 0x40000098
    SINT9 = 0x40000099
    SINT10 = 0x4000009A
    SINT11 = 0x4000009B
    SINT12 = 0x4000009C
    SINT13 = 0x4000009D
    SINT14 = 0x4000009E
    SINT15 = 0x4000009F
    # Guest crash enlightenment (TLFS partition-properties.md, "Guest Crash Enlightenment
    # Interface"): not in vsm.md's list of VTL-private synthetic MSRs, so shared by all VTLs.
    CRASH_P0 = 0x40000100
    CRASH_P1 = 0x40000101
    CRASH_P2 = 0x40000102
    CRASH_P3 = 0x40000103
    CRASH_P4 = 0x40000104
    CRASH_CTL = 0x40000105


# Hypercall MSR (0x40000001).  [TLFS hypercall-interface; hvdef `MsrHypercallContents`]: bit0
# Enable, bit1 Locked, bits 11:2 RsvdP, bits 63:12 GPFN.  Per-VTL in this model (D14).
HYPERCALL_MSR_ENABLE: Final = BitField(0, 1)
HYPERCALL_MSR_LOCKED: Final = BitField(1, 1)
HYPERCALL_MSR_GPFN: Final = BitField(12, 52)

# VP assist page MSR (0x40000073, per VTL).  vsm-spec §4.1 [TLFS vp-properties]: bit0 Enable,
# bits 11:1 RsvdP, bits 63:12 PFN.
VP_ASSIST_ENABLE: Final = BitField(0, 1)
VP_ASSIST_GPFN: Final = BitField(12, 52)

# HV_CRASH_CTL_REG_CONTENTS (TLFS datatypes/hv_crash_ctl_reg_contents.md): Reserved 57:0,
# PreOSId 60:58, NoCrashDump 61, CrashMessage 62 (P3 = message GPA, P4 = its length),
# CrashNotify 63 ("log contents of crash parameter system registers").
CRASH_CTL_PRE_OS_ID: Final = BitField(58, 3)
CRASH_CTL_NO_CRASH_DUMP: Final = BitField(61, 1)
CRASH_CTL_CRASH_MESSAGE: Final = BitField(62, 1)
CRASH_CTL_CRASH_NOTIFY: Final = BitField(63, 1)
#: TLFS partition-properties.md: the CrashMessage length in P4 is at most 4096 bytes.
CRASH_MESSAGE_MAX: Final = 4096
#: CPUID (TLFS feature-discovery.md): leaf 1's ECX bit 31 is "the hypervisor present bit";
#: 0x40000000 gives the highest hypervisor leaf and the vendor, 0x40000001 the interface
#: signature ("Hv#1"), 0x40000003 the features, 0x40000004 the implementation recommendations.
CPUID_HYPERVISOR_PRESENT: Final = 1 << 31
CPUID_VENDOR: Final = 0x4000_0000
CPUID_INTERFACE: Final = 0x4000_0001
CPUID_FEATURES: Final = 0x4000_0003
CPUID_RECOMMENDATIONS: Final = 0x4000_0004
CPUID_HV1_SIGNATURE: Final = int.from_bytes(b"Hv#1", "little")
#: CPUID 0x40000003 EDX bit 10: "Support for guest crash MSRs is available" (TLFS
#: feature-discovery.md).
CPUID_EDX_GUEST_CRASH_MSRS: Final = 1 << 10

#: CPUID 0x40000004 EAX bit 2: "Recommend using hypercall for remote TLB flushes rather than
#: inter-processor interrupts" (TLFS feature-discovery.md, "Implementation Recommendations").
RECOMMEND_REMOTE_FLUSH_HYPERCALL: Final = 1 << 2

# SynIC MSRs.  vsm-spec §4.1 [Linux hvgdk_mini.h; hvdef]
SCONTROL_ENABLE: Final = BitField(0, 1)
SIMP_ENABLE: Final = BitField(0, 1)
SIMP_GPFN: Final = BitField(12, 52)
SINT_VECTOR: Final = BitField(0, 8)
SINT_MASKED: Final = BitField(16, 1)
SINT_AUTO_EOI: Final = BitField(17, 1)
SINT_POLLING: Final = BitField(18, 1)
SINT_AS_INTERCEPT: Final = BitField(19, 1)
SINT_PROXY: Final = BitField(20, 1)

HV_SYNIC_SINT_COUNT: Final = 16  # the SIM page has 16 slots of one HV_MESSAGE each
HV_SYNIC_INTERCEPTION_SINT_INDEX: Final = 0  # vsm-spec §4.1, §6.2
HV_SYNIC_IOMMU_FAULT_SINT_INDEX: Final = 1  # vsm-spec §3.5 [Linux]


# ---------------------------------------------------------------------------------------------
# Hypercall-specific flags and result codes
# ---------------------------------------------------------------------------------------------


# HvCallEnablePartitionVtl Flags byte.  vsm-spec §1.3 [TLFS; hvdef `EnablePartitionVtl`]
class HvEnablePartitionVtlFlags(IntFlag):
    ENABLE_MBEC = 0x1
    ENABLE_SUPERVISOR_SHADOW_STACK = 0x2  # hvdef
    ENABLE_HARDWARE_HVPT = 0x4  # hvdef


ENABLE_PARTITION_VTL_FLAGS_RSVD_MASK: Final = 0xF8


# HvCallFlushVirtualAddressSpace/List flags.  vsm-spec §1.3 [TLFS; hvdef `HvFlushFlags`]
# Bits 4, 8 and 9 are hvdef only, not in the public TLFS page (D10); defined for completeness.
class HvFlushFlags(IntFlag):
    ALL_PROCESSORS = 0x1
    ALL_VIRTUAL_ADDRESS_SPACES = 0x2
    NON_GLOBAL_MAPPINGS_ONLY = 0x4
    USE_EXTENDED_RANGE_FORMAT = 0x8
    USE_TARGET_VTL = 0x10
    TARGET_VTL0 = 0x100
    TARGET_VTL1 = 0x200


# HvCallTranslateVirtualAddress(Ex) ControlFlags.  vsm-spec §1.3 [TLFS; hvdef]
class HvTranslateGvaControlFlags(IntFlag):
    VALIDATE_READ = 1 << 0
    VALIDATE_WRITE = 1 << 1
    VALIDATE_EXECUTE = 1 << 2
    PRIVILEGE_EXEMPT = 1 << 3
    SET_PAGE_TABLE_BITS = 1 << 4
    TLB_FLUSH_INHIBIT = 1 << 5
    SUPERVISOR_ACCESS = 1 << 6
    USER_ACCESS = 1 << 7
    ENFORCE_SMAP = 1 << 8  # x64; PanSet on ARM64
    OVERRIDE_SMAP = 1 << 9  # x64; PanClear on ARM64
    SHADOW_STACK = 1 << 10


# Bits 63:56 of ControlFlags hold an HV_INPUT_VTL (the VTL whose paging and SLAT are used).
TRANSLATE_INPUT_VTL: Final = BitField(56, 8)

# HV_TRANSLATE_GVA_RESULT (u64).  vsm-spec §1.3
TRANSLATE_RESULT_CODE: Final = BitField(0, 32)
TRANSLATE_RESULT_CACHE_TYPE: Final = BitField(32, 8)
TRANSLATE_RESULT_OVERLAY_PAGE: Final = BitField(40, 1)


@unique
class HvTranslateGvaResultCode(IntEnum):
    SUCCESS = 0
    PAGE_NOT_PRESENT = 1
    PRIVILEGE_VIOLATION = 2
    INVALID_PAGE_TABLE_FLAGS = 3
    GPA_UNMAPPED = 4
    GPA_NO_READ_ACCESS = 5
    GPA_NO_WRITE_ACCESS = 6
    GPA_ILLEGAL_OVERLAY_ACCESS = 7
    INTERCEPT = 8  # by a higher VTL or a nested hypervisor
    GPA_UNACCEPTED = 9


# HvCallCheckSparseGpaPageVtlAccess rep output (u64).  vsm-spec §1.3 [hvdef]
CHECK_VTL_ACCESS_RESULT_CODE: Final = BitField(0, 8)  # 0 success, 1 MEMORY_INTERCEPT
CHECK_VTL_ACCESS_DENIED_ACCESS: Final = BitField(8, 8)
CHECK_VTL_ACCESS_INTERCEPTING_VTL: Final = BitField(16, 4)

# HvCallAcceptGpaPages PageAttributes (u32).  vsm-spec §1.3 [hvdef]
ACCEPT_MEMORY_TYPE: Final = BitField(0, 6)
ACCEPT_HOST_VISIBILITY: Final = BitField(6, 2)  # 0 private, 3 shared
ACCEPT_VTL_SET: Final = BitField(8, 3)


# ---------------------------------------------------------------------------------------------
# Hypercall wire layouts (all little-endian; "x" = reserved/padding, must be zero)
# vsm-spec §1.3 [TLFS; hvdef]
# ---------------------------------------------------------------------------------------------

# HV_X64_SEGMENT_REGISTER: Base u64, Limit u32, Selector u16, Attributes u16.  16 bytes.
SEGMENT_REGISTER: Final = struct.Struct("<QIHH")
# HV_X64_TABLE_REGISTER: Pad u16[3], Limit u16, Base u64.  16 bytes.
TABLE_REGISTER: Final = struct.Struct("<6xHQ")

# x64 segment attribute bits.  vsm-spec §1.3 [Linux hvgdk_mini.h]
SEG_ATTR_TYPE: Final = BitField(0, 4)
SEG_ATTR_NON_SYSTEM: Final = BitField(4, 1)  # S
SEG_ATTR_DPL: Final = BitField(5, 2)
SEG_ATTR_PRESENT: Final = BitField(7, 1)  # P
SEG_ATTR_AVAILABLE: Final = BitField(12, 1)  # AVL
SEG_ATTR_LONG: Final = BitField(13, 1)  # L
SEG_ATTR_DEFAULT_BIG: Final = BitField(14, 1)  # D/B
SEG_ATTR_GRANULARITY: Final = BitField(15, 1)  # G

# HvCallEnablePartitionVtl (0x000D) input, 16 bytes:
#   TargetPartitionId u64 @0, TargetVtl u8 @8 (a plain HV_VTL), Flags u8 @9, RsvdZ[6] @10.
ENABLE_PARTITION_VTL_INPUT: Final = struct.Struct("<QBB6x")

# HV_INITIAL_VP_CONTEXT (x64), 224 bytes.  Field order (flat unpack order):
#   Rip @0, Rsp @8, Rflags @16,
#   Cs @24, Ds @40, Es @56, Fs @72, Gs @88, Ss @104, Tr @120, Ldtr @136
#     (each HV_X64_SEGMENT_REGISTER: base u64, limit u32, selector u16, attributes u16),
#   Idtr @152, Gdtr @168 (each HV_X64_TABLE_REGISTER: pad u16[3], limit u16, base u64),
#   Efer @184, Cr0 @192, Cr3 @200, Cr4 @208, MsrCrPat @216.
INITIAL_VP_CONTEXT: Final = struct.Struct("<QQQ" + " QIHH" * 8 + " 6xHQ" * 2 + " QQQQQ")
INITIAL_VP_CONTEXT_SEGMENTS: Final = (
    HvRegisterName.CS,
    HvRegisterName.DS,
    HvRegisterName.ES,
    HvRegisterName.FS,
    HvRegisterName.GS,
    HvRegisterName.SS,
    HvRegisterName.TR,
    HvRegisterName.LDTR,
)
INITIAL_VP_CONTEXT_FIELDS: Final = (
    "rip",
    "rsp",
    "rflags",
    *(
        f"{seg.name.lower()}.{part}"
        for seg in INITIAL_VP_CONTEXT_SEGMENTS
        for part in ("base", "limit", "selector", "attributes")
    ),
    "idtr.limit",
    "idtr.base",
    "gdtr.limit",
    "gdtr.base",
    "efer",
    "cr0",
    "cr3",
    "cr4",
    "msr_cr_pat",
)

# HvCallEnableVpVtl (0x000F) header, 16 bytes, followed by the 224-byte HV_INITIAL_VP_CONTEXT
# (240 bytes in all):  TargetPartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, RsvdZ[3] @13.
ENABLE_VP_VTL_HEADER: Final = struct.Struct("<QIB3x")

# HvCallDisablePartitionVtl (0x0E) / HvCallDisableVpVtl (0x10), simple calls.  Neither the TLFS
# markdown nor OpenVMM's hvdef publishes their input layout (only the call codes, vbs-internals
# §0); the model uses the layout of the matching Enable call without its flags/context:
#   DisablePartitionVtl: TargetPartitionId u64 @0, TargetVtl u8 @8, RsvdZ[7] @9 (16 bytes);
#   DisableVpVtl: TargetPartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, RsvdZ[3] (16).
DISABLE_PARTITION_VTL_INPUT: Final = struct.Struct("<QB7x")
DISABLE_VP_VTL_INPUT: Final = struct.Struct("<QIB3x")

# HvCallModifyVtlProtectionMask (0x000C) header, 16 bytes:
#   TargetPartitionId u64 @0, MapFlags u32 @8, TargetVtl HV_INPUT_VTL u8 @12, RsvdZ[3] @13.
# Each rep element is a u64 GPA page number.  The TargetVtl meaning is a CONFLICT (D3); the
# layout is unaffected.
MODIFY_VTL_PROTECTION_MASK_HEADER: Final = struct.Struct("<QIB3x")
MODIFY_VTL_PROTECTION_MASK_ELEMENT: Final = struct.Struct("<Q")

# HvCallGetVpRegisters / HvCallSetVpRegisters (0x0050 / 0x0051) header, 16 bytes:
#   PartitionId u64 @0, VpIndex u32 @8, TargetVtl HV_INPUT_VTL u8 @12, RsvdZ[3] @13.
GET_SET_VP_REGISTERS_HEADER: Final = struct.Struct("<QIB3x")
# Set rep input, 32 bytes: Name u32 @0, RsvdZ[12] @4, Value 16 bytes @16.
SET_VP_REGISTERS_ELEMENT: Final = struct.Struct("<I12x16s")
# Get rep input: Name u32.  Get rep output: one HV_REGISTER_VALUE.
GET_VP_REGISTERS_ELEMENT_IN: Final = struct.Struct("<I")
# HV_REGISTER_VALUE, 16 bytes: low u64, high u64.
REGISTER_VALUE: Final = struct.Struct("<QQ")

# HvCallTranslateVirtualAddress(Ex) (0x0052 / 0x00AC) input, 32 bytes:
#   PartitionId u64 @0, VpIndex u32 @8, Reserved u32 @12, ControlFlags u64 @16, GvaPage u64 @24.
# The current TLFS markdown (HvCallTranslateVirtualAddress.md) puts ControlFlags @16 and GvaPage
# @24, as hvdef does ("confirmed via debugger"): the old conflict (ControlFlags @12) is resolved.
TRANSLATE_VIRTUAL_ADDRESS_INPUT: Final = struct.Struct("<QI4xQQ")
# Non-Ex output, 16 bytes: HV_TRANSLATE_GVA_RESULT u64 @0, GpaPage u64 @8.
TRANSLATE_VIRTUAL_ADDRESS_OUTPUT: Final = struct.Struct("<QQ")
# Ex output (x64), 64 bytes.  CONFLICT (D4): the TLFS table puts GpaPage @16, contradicting its
# own struct with a 32-byte EventInfo.  Chosen: hvdef (const-asserted) layout:
#   Result u64 @0, Reserved u64 @8, HV_X64_PENDING_EVENT (32 bytes) @16, GpaPage u64 @0x30,
#   Reserved u64 @0x38.
TRANSLATE_VIRTUAL_ADDRESS_EX_OUTPUT: Final = struct.Struct("<Q8x32sQ8x")

# HvCallStartVirtualProcessor (0x0099) header, 16 bytes, followed by HV_INITIAL_VP_CONTEXT:
#   PartitionId u64 @0, VpIndex u32 @8, TargetVtl u8 @12, Rsvd[3] @13.
START_VIRTUAL_PROCESSOR_HEADER: Final = struct.Struct("<QIB3x")

# HvCallFlushVirtualAddressSpace (0x0002) input, 24 bytes:
#   AddressSpace u64 @0 (CR3), Flags u64 @8 (HvFlushFlags), ProcessorMask u64 @16.
# The List variant appends GVA ranges (u64 each).
FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT: Final = struct.Struct("<QQQ")

# Other VTL-carrying inputs.  vsm-spec §1.3 "Other VTL-carrying inputs" [hvdef]
# SendSyntheticClusterIpi, 16 bytes: Vector u32 @0, TargetVtl HV_INPUT_VTL u8 @4, Flags u8 @5,
#   Rsvd u16 @6, ProcessorMask u64 @8.
SEND_SYNTHETIC_CLUSTER_IPI_INPUT: Final = struct.Struct("<IBB2xQ")
# AssertVirtualInterrupt, 32 bytes: PartitionId u64 @0, InterruptControl u64 @8,
#   DestinationAddress u64 @16, Vector u32 @24, TargetVtl u8 @28, Rsvd[3] @29.
ASSERT_VIRTUAL_INTERRUPT_INPUT: Final = struct.Struct("<QQQIB3x")
# GetVpIndexFromApicId header, 16 bytes: PartitionId u64 @0, TargetVtl u8 @8, Rsvd[7] @9.
#   Rep input: APIC ID u32.  Rep output: VP index u32.
GET_VP_INDEX_FROM_APIC_ID_HEADER: Final = struct.Struct("<QB7x")
# PostMessageDirect, 276 bytes: PartitionId u64 @0, VpIndex u32 @8, Vtl u8 @12, pad[3] @13,
#   Sint u8 @16, pad[3] @17, Message (HV_MESSAGE, 256 bytes) @20.
POST_MESSAGE_DIRECT_INPUT: Final = struct.Struct("<QIB3xB3x256s")
# SignalEventDirect, 16 bytes: PartitionId u64 @0, Vp u32 @8, Vtl u8 @12, Sint u8 @13,
#   FlagNumber u16 @14.
SIGNAL_EVENT_DIRECT_INPUT: Final = struct.Struct("<QIBBH")
# CheckSparseGpaPageVtlAccess header, 16 bytes: PartitionId u64 @0,
#   TargetVtl HV_INPUT_VTL u8 @8, DesiredAccess u8 @9, Rsvd[6] @10.  Rep input: GPN u64.
CHECK_SPARSE_GPA_PAGE_VTL_ACCESS_HEADER: Final = struct.Struct("<QBB6x")
# AcceptGpaPages header, 24 bytes: PartitionId u64 @0, PageAttributes u32 @8,
#   VtlPermissionSet u16[2] @12 (VTL1, VTL2), GpaPageBase u64 @16.
ACCEPT_GPA_PAGES_HEADER: Final = struct.Struct("<QIHHQ")


# ---------------------------------------------------------------------------------------------
# Hypercall page (OpenVMM-generated contents)
# vsm-spec §1.3 [TLFS vsm.md; hv1_emulator `hv.rs`]
# D9 (unverified): these offsets are OpenVMM's; real Hyper-V's are not publicly confirmed, and
# guests must read HvRegisterVsmCodePageOffsets rather than assume them.  The model generates
# the OpenVMM page, so these offsets are what it reports.
# ---------------------------------------------------------------------------------------------

X86_VMCALL: Final = b"\x0f\x01\xc1"  # Intel VMCALL
X86_VMMCALL: Final = b"\x0f\x01\xd9"  # AMD VMMCALL (OpenVMM uses it on AMD; the model is Intel)
X86_RET: Final = b"\xc3"

HYPERCALL_PAGE_HYPERCALL_OFFSET: Final = 0x00
HYPERCALL_PAGE_VTL_CALL_OFFSET_32: Final = 0x04
HYPERCALL_PAGE_VTL_CALL_OFFSET_64: Final = 0x0F
HYPERCALL_PAGE_VTL_RETURN_OFFSET_32: Final = 0x1B
HYPERCALL_PAGE_VTL_RETURN_OFFSET_64: Final = 0x26

# (offset, bytes) for each stub.  Encodings hand-checked (and cross-checked with objdump):
#   89 C1           mov ecx,eax     (89 /r, ModRM 11 000 001: reg=eax, rm=ecx)
#   48 89 C8        mov rax,rcx     (REX.W 89 /r, ModRM 11 001 000: reg=rcx, rm=rax)
#   B8 id32         mov eax,imm32   (B8+r, r=0)
#   B9 id32         mov ecx,imm32   (B8+r, r=1)
#   0F 01 C1        vmcall
#   C3              ret
# The stubs are contiguous: 4 + 11 + 12 + 11 + 12 = 50 bytes (0x00..0x31).
HYPERCALL_PAGE_STUBS: Final = (
    # 0x00: vmcall; ret  (normal hypercall entry)
    (HYPERCALL_PAGE_HYPERCALL_OFFSET, X86_VMCALL + X86_RET),
    # 0x04: 32-bit VTL call: mov ecx,eax; mov eax,0x11; vmcall; ret
    (
        HYPERCALL_PAGE_VTL_CALL_OFFSET_32,
        b"\x89\xc1" + b"\xb8\x11\x00\x00\x00" + X86_VMCALL + X86_RET,
    ),
    # 0x0F: 64-bit VTL call: mov rax,rcx; mov ecx,0x11; vmcall; ret
    (
        HYPERCALL_PAGE_VTL_CALL_OFFSET_64,
        b"\x48\x89\xc8" + b"\xb9\x11\x00\x00\x00" + X86_VMCALL + X86_RET,
    ),
    # 0x1B: 32-bit VTL return: mov ecx,eax; mov eax,0x12; vmcall; ret
    (
        HYPERCALL_PAGE_VTL_RETURN_OFFSET_32,
        b"\x89\xc1" + b"\xb8\x12\x00\x00\x00" + X86_VMCALL + X86_RET,
    ),
    # 0x26: 64-bit VTL return: mov rax,rcx; mov ecx,0x12; vmcall; ret
    (
        HYPERCALL_PAGE_VTL_RETURN_OFFSET_64,
        b"\x48\x89\xc8" + b"\xb9\x12\x00\x00\x00" + X86_VMCALL + X86_RET,
    ),
)


# ---------------------------------------------------------------------------------------------
# VP assist page and VTL entry
# vsm-spec §5.2 [TLFS datatypes/hv_vp_assist_page, hv_vp_vtl_control; hvdef `HvVpAssistPage`;
# Linux]
# ---------------------------------------------------------------------------------------------

VP_ASSIST_APIC_ASSIST_OFFSET: Final = 0
VP_ASSIST_ENTRY_REASON_OFFSET: Final = 8  # u32 HV_VTL_ENTRY_REASON
VP_ASSIST_VINA_STATUS_OFFSET: Final = 12  # u8, bit0 VinaAsserted
VP_ASSIST_VTL_RETURN_RAX_OFFSET: Final = 16  # u64
VP_ASSIST_VTL_RETURN_RCX_OFFSET: Final = 24  # u64
VP_ASSIST_VIRTUALIZATION_FAULT_INFO_OFFSET: Final = 64  # 40 bytes
VP_ASSIST_INTERCEPT_MESSAGE_OFFSET: Final = 112  # HV_MESSAGE, 256 bytes
VP_ASSIST_RETURN_ACTIONS_OFFSET: Final = 368  # 256 bytes
VP_ASSIST_RETURN_ACTIONS_SIZE: Final = 256
VINA_STATUS_ASSERTED: Final = BitField(0, 1)

# VTL return action type 1, SignalEvent, 16 bytes: ActionType u64 @0 (=1), TargetVp u32 @8,
# TargetVtl u8 @12, TargetSint u8 @13, FlagNumber u16 @14.  vsm-spec §5.2 [hvdef]
VTL_RETURN_ACTION_SIGNAL_EVENT_TYPE: Final = 1
VTL_RETURN_ACTION_SIGNAL_EVENT: Final = struct.Struct("<QIBBH")


# HV_VTL_ENTRY_REASON (u32).  vsm-spec §5.2.  INTERCEPT (3), "an entry due to an intercept
# delivered via the intercept page", is in the current TLFS (datatypes/hv_vp_vtl_control.md,
# HvVtlEntryIntercept = 3) as in hvdef and Linux `mshv_vtl_main.c` (the old D5 note is resolved).
@unique
class HvVtlEntryReason(IntEnum):
    RESERVED = 0
    VTL_CALL = 1
    INTERRUPT = 2
    INTERCEPT = 3


# ---------------------------------------------------------------------------------------------
# Secure intercepts
# vsm-spec §6.1 [TLFS "Secure Intercepts"]
# ---------------------------------------------------------------------------------------------


@unique
class HvInterceptType(IntEnum):
    X64_IO_PORT = 0x0
    X64_MSR = 0x1
    X64_CPUID = 0x2
    EXCEPTION = 0x3
    X64_GLOBAL_CPUID = 0x6
    X64_APIC_SMI = 0x7
    HYPERCALL = 0x8
    X64_APIC_INIT_SIPI = 0x9
    X64_APIC_WRITE = 0xB
    UNKNOWN_SYNIC_CONNECTION = 0xD
    X64_APIC_EOI = 0xE
    RETARGET_INTERRUPT_WITH_UNKNOWN_DEVICE_ID = 0xF
    X64_EXCEPTION_TRAP = 0x10
    X64_IO_PORT_RANGE = 0x11
    REGISTER = 0x12
    SYSTEM_RESET_EXTENDED = 0x13


# HvCallInstallIntercept access mask.  vsm-spec §6.1 (R=1, W=2)
class HvInterceptAccessTypeMask(IntFlag):
    READ = 0x1
    WRITE = 0x2


# InterceptAccessType byte of the intercept header: a value, not a mask.  vsm-spec §6.3
@unique
class HvInterceptAccessType(IntEnum):
    READ = 0
    WRITE = 1
    EXECUTE = 2


# HV_MESSAGE_TYPE.  vsm-spec §6.3 [hvdef; Linux; TLFS datatypes/hv_message_type];
# IOMMU_FAULT from vsm-spec §3.5 [hvdef].
@unique
class HvMessageType(IntEnum):
    NONE = 0x00000000
    UNMAPPED_GPA = 0x80000000
    GPA_INTERCEPT = 0x80000001
    UNACCEPTED_GPA = 0x80000003
    GPA_ATTRIBUTE_INTERCEPT = 0x80000004
    ENABLE_PARTITION_VTL_INTERCEPT = 0x80000005  # hvdef
    INVALID_VP_REGISTER_VALUE = 0x80000020
    UNRECOVERABLE_EXCEPTION = 0x80000021
    IOMMU_FAULT = 0x80000024
    OPAQUE_INTERCEPT = 0x8000003F
    HYPERCALL_INTERCEPT = 0x80000050
    X64_IO_PORT_INTERCEPT = 0x80010000
    MSR_INTERCEPT = 0x80010001
    X64_CPUID_INTERCEPT = 0x80010002
    EXCEPTION_INTERCEPT = 0x80010003
    REGISTER_INTERCEPT = 0x80010006
    X64_HALT = 0x80010007
    X64_SIPI_INTERCEPT = 0x80010009
    X64_APIC_INIT_SIPI_INTERCEPT = 0x8001000D


# Memory cache types (memory intercept CacheType, translate result CacheType).  vsm-spec §6.3
@unique
class HvCacheType(IntEnum):
    UNCACHED = 0
    WRITE_COMBINING = 1
    WRITE_THROUGH = 4
    WRITE_PROTECTED = 5
    WRITE_BACK = 6


# HV_MESSAGE.  vsm-spec §6.3
HV_MESSAGE_SIZE: Final = 256
HV_MESSAGE_PAYLOAD_SIZE: Final = 240
HV_MESSAGE_FLAG_PENDING: Final = 1  # Flags bit0 MessagePending
# Header, 16 bytes: MessageType u32 @0, PayloadSize u8 @4, Flags u8 @5, Rsvd u16 @6,
#   Sender/PortId u64 @8.
HV_MESSAGE_HEADER: Final = struct.Struct("<IBB2xQ")
# Whole message, 256 bytes: header fields, then Payload (240 bytes) @16.
HV_MESSAGE: Final = struct.Struct("<IBB2xQ240s")

# HV_X64_INTERCEPT_MESSAGE_HEADER, 40 bytes.  vsm-spec §6.3 [hvdef; Linux]:
#   VpIndex u32 @0, InstructionLength u8 @4 (bits 3:0; bits 7:4 Cr8), InterceptAccessType u8 @5,
#   ExecutionState u16 @6, CsSegment @8 (base u64, limit u32, selector u16, attributes u16),
#   Rip u64 @24, Rflags u64 @32.
_INTERCEPT_HEADER_FMT = "<IBBH QIHH QQ"
INTERCEPT_HEADER: Final = struct.Struct(_INTERCEPT_HEADER_FMT)
# Byte @4: LVBS and the QEMU PoC read the whole byte as the length; hvdef splits it.  Chosen:
# hvdef's split (x86 instructions are at most 15 bytes, so the two readings agree whenever the
# producer leaves Cr8 = 0, which the model does).
INTERCEPT_INSTRUCTION_LENGTH: Final = BitField(0, 4)
INTERCEPT_CR8: Final = BitField(4, 4)

# ExecutionState (u16).  vsm-spec §6.3 [hvdef]
EXEC_STATE_CPL: Final = BitField(0, 2)
EXEC_STATE_CR0_PE: Final = BitField(2, 1)
EXEC_STATE_CR0_AM: Final = BitField(3, 1)
EXEC_STATE_EFER_LMA: Final = BitField(4, 1)
EXEC_STATE_DEBUG_ACTIVE: Final = BitField(5, 1)
EXEC_STATE_INTERRUPTION_PENDING: Final = BitField(6, 1)
EXEC_STATE_VTL: Final = BitField(7, 4)
EXEC_STATE_ENCLAVE_MODE: Final = BitField(11, 1)
EXEC_STATE_INTERRUPT_SHADOW: Final = BitField(12, 1)
EXEC_STATE_VIRTUALIZATION_FAULT_ACTIVE: Final = BitField(13, 1)

# HV_X64_MEMORY_INTERCEPT_MESSAGE, 0x50 bytes.  vsm-spec §6.3 [hvdef asserts 0x50]:
#   Header @0 (40 bytes), CacheType u32 @40, InstructionByteCount u8 @44,
#   MemoryAccessInfo u8 @45, TprPriority u8 @46, Rsvd u8 @47, GuestVirtualAddress u64 @48,
#   GuestPhysicalAddress u64 @56, InstructionBytes[16] @64.
# D8 (unverified): the QEMU PoC appends DS/SS segments and the 16 GPRs up to 240 bytes; the
# model uses the 0x50-byte core that OpenHCL sends (the reference's recommendation).
MEMORY_INTERCEPT_MESSAGE: Final = struct.Struct(_INTERCEPT_HEADER_FMT + " IBBBx QQ 16s")

# MemoryAccessInfo byte.  vsm-spec §6.3 [hvdef; LVBS adds bit 5]
MEM_ACCESS_GVA_VALID: Final = BitField(0, 1)
MEM_ACCESS_GVA_GPA_VALID: Final = BitField(1, 1)
MEM_ACCESS_HYPERCALL_OUTPUT_PENDING: Final = BitField(2, 1)
MEM_ACCESS_TLB_LOCKED: Final = BitField(3, 1)
MEM_ACCESS_SUPERVISOR_SHADOW_STACK: Final = BitField(4, 1)
MEM_ACCESS_VERIFY_PAGE_WR: Final = BitField(5, 1)  # LVBS only

# Register intercept (0x80010006), 64 bytes.  vsm-spec §6.3 [hvdef, LVBS]:
#   Header @0, Flags u8 @40 (bit0 IsMemoryOp), Rsvd[3] @41, RegisterName u32 @44,
#   AccessInfo u128 @48 as (low u64, high u64); for writes it is the new value.
REGISTER_INTERCEPT_MESSAGE: Final = struct.Struct(_INTERCEPT_HEADER_FMT + " B3xI QQ")
REG_INTERCEPT_IS_MEMORY_OP: Final = BitField(0, 1)

# MSR intercept (0x80010001), 64 bytes.  vsm-spec §6.3 [hvdef, LVBS]:
#   Header @0, MsrNumber u32 @40, Rsvd u32 @44, Rdx u64 @48, Rax u64 @56.
#   The written value is (RDX << 32) | EAX.
MSR_INTERCEPT_MESSAGE: Final = struct.Struct(_INTERCEPT_HEADER_FMT + " I4x QQ")

# I/O port intercept (0x80010000), 128 bytes.  vsm-spec §6.3 [hvdef]:
#   Header @0, PortNumber u16 @40, AccessInfo u8 @42, InstructionByteCount u8 @43,
#   Rsvd u32 @44, Rax u64 @48, InstructionBytes[16] @56, DsSegment @72, EsSegment @88
#   (segments as base u64, limit u32, selector u16, attributes u16), Rcx u64 @104,
#   Rsi u64 @112, Rdi u64 @120.
IO_PORT_INTERCEPT_MESSAGE: Final = struct.Struct(
    _INTERCEPT_HEADER_FMT + " HBB4x Q 16s QIHH QIHH QQQ"
)
IO_ACCESS_SIZE: Final = BitField(0, 3)
IO_ACCESS_STRING_OP: Final = BitField(3, 1)
IO_ACCESS_REP_PREFIX: Final = BitField(4, 1)


#: HvRegisterInternalActivityState's bits (OpenVMM hvdef ``HvInternalActivityRegister``):
#: startup_suspend (an AP waiting for its start request), halt_suspend (HLT), idle_suspend.
ACTIVITY_STARTUP_SUSPEND: Final = 1 << 0
ACTIVITY_HALT_SUSPEND: Final = 1 << 1
ACTIVITY_IDLE_SUSPEND: Final = 1 << 2
ACTIVITY_RSVD_MASK: Final = ~0b111 & 0xFFFF_FFFF_FFFF_FFFF
