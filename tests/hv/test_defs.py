"""Tests for vbsim.hv.defs against the tables of /work/shared/reference/vsm-spec.md."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vbsim.hv import defs as d
from vbsim.hv.defs import BitField


def field_offset(layout: struct.Struct, index: int) -> int:
    """Byte offset of the ``index``-th packed value of ``layout`` (found by packing a marker)."""
    values = list(layout.unpack(bytes(layout.size)))
    if isinstance(values[index], bytes):
        values[index] = b"\xff" * len(values[index])
    else:
        values[index] = 0xFF
    packed = layout.pack(*values)
    return next(i for i, b in enumerate(packed) if b)


def assert_field(field: BitField, shift: int, width: int) -> None:
    assert (field.shift, field.width) == (shift, width)


# --- struct sizes and offsets --------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "size"),
    [
        (d.SEGMENT_REGISTER, 16),
        (d.TABLE_REGISTER, 16),
        (d.ENABLE_PARTITION_VTL_INPUT, 16),
        (d.ENABLE_VP_VTL_HEADER, 16),
        (d.INITIAL_VP_CONTEXT, 224),
        (d.MODIFY_VTL_PROTECTION_MASK_HEADER, 16),
        (d.MODIFY_VTL_PROTECTION_MASK_ELEMENT, 8),
        (d.GET_SET_VP_REGISTERS_HEADER, 16),
        (d.SET_VP_REGISTERS_ELEMENT, 32),
        (d.GET_VP_REGISTERS_ELEMENT_IN, 4),
        (d.REGISTER_VALUE, 16),
        (d.TRANSLATE_VIRTUAL_ADDRESS_INPUT, 32),
        (d.TRANSLATE_VIRTUAL_ADDRESS_OUTPUT, 16),
        (d.TRANSLATE_VIRTUAL_ADDRESS_EX_OUTPUT, 0x40),
        (d.START_VIRTUAL_PROCESSOR_HEADER, 16),
        (d.FLUSH_VIRTUAL_ADDRESS_SPACE_INPUT, 24),
        (d.SEND_SYNTHETIC_CLUSTER_IPI_INPUT, 16),
        (d.ASSERT_VIRTUAL_INTERRUPT_INPUT, 32),
        (d.GET_VP_INDEX_FROM_APIC_ID_HEADER, 16),
        (d.POST_MESSAGE_DIRECT_INPUT, 20 + 256),
        (d.SIGNAL_EVENT_DIRECT_INPUT, 16),
        (d.CHECK_SPARSE_GPA_PAGE_VTL_ACCESS_HEADER, 16),
        (d.ACCEPT_GPA_PAGES_HEADER, 24),
        (d.HV_MESSAGE_HEADER, 16),
        (d.HV_MESSAGE, 256),
        (d.INTERCEPT_HEADER, 40),
        (d.MEMORY_INTERCEPT_MESSAGE, 0x50),
        (d.REGISTER_INTERCEPT_MESSAGE, 64),
        (d.MSR_INTERCEPT_MESSAGE, 64),
        (d.IO_PORT_INTERCEPT_MESSAGE, 128),
        (d.VTL_RETURN_ACTION_SIGNAL_EVENT, 16),
    ],
)
def test_struct_sizes(layout: struct.Struct, size: int) -> None:
    assert layout.size == size
    assert layout.format.startswith("<")


def test_enable_vp_vtl_total_size() -> None:
    # §1.3: 240 bytes in on x64.
    assert d.ENABLE_VP_VTL_HEADER.size + d.INITIAL_VP_CONTEXT.size == 240
    assert d.START_VIRTUAL_PROCESSOR_HEADER.size + d.INITIAL_VP_CONTEXT.size == 240


def test_message_sizes() -> None:
    assert d.HV_MESSAGE_SIZE == 256
    assert d.HV_MESSAGE_PAYLOAD_SIZE == 240
    assert d.HV_MESSAGE_HEADER.size + d.HV_MESSAGE_PAYLOAD_SIZE == d.HV_MESSAGE_SIZE
    # Every intercept message fits in the payload.
    for layout in (
        d.MEMORY_INTERCEPT_MESSAGE,
        d.REGISTER_INTERCEPT_MESSAGE,
        d.MSR_INTERCEPT_MESSAGE,
        d.IO_PORT_INTERCEPT_MESSAGE,
    ):
        assert layout.size <= d.HV_MESSAGE_PAYLOAD_SIZE


def test_initial_vp_context_offsets() -> None:
    fields = d.INITIAL_VP_CONTEXT_FIELDS
    assert len(fields) == len(d.INITIAL_VP_CONTEXT.unpack(bytes(224)))
    expected = {
        "rip": 0,
        "rsp": 8,
        "rflags": 16,
        "cs.base": 24,
        "ds.base": 40,
        "es.base": 56,
        "fs.base": 72,
        "gs.base": 88,
        "ss.base": 104,
        "tr.base": 120,
        "ldtr.base": 136,
        "ldtr.limit": 144,
        "ldtr.selector": 148,
        "ldtr.attributes": 150,
        "idtr.limit": 152 + 6,
        "idtr.base": 152 + 8,
        "gdtr.limit": 168 + 6,
        "gdtr.base": 168 + 8,
        "efer": 184,
        "cr0": 192,
        "cr3": 200,
        "cr4": 208,
        "msr_cr_pat": 216,
    }
    for name, off in expected.items():
        assert field_offset(d.INITIAL_VP_CONTEXT, fields.index(name)) == off, name


@pytest.mark.parametrize(
    ("layout", "index", "offset"),
    [
        # Intercept header (§6.3).
        (d.INTERCEPT_HEADER, 1, 4),  # InstructionLength
        (d.INTERCEPT_HEADER, 2, 5),  # AccessType
        (d.INTERCEPT_HEADER, 3, 6),  # ExecutionState
        (d.INTERCEPT_HEADER, 4, 8),  # Cs.base
        (d.INTERCEPT_HEADER, 8, 24),  # Rip
        (d.INTERCEPT_HEADER, 9, 32),  # Rflags
        # Memory intercept.
        (d.MEMORY_INTERCEPT_MESSAGE, 10, 40),  # CacheType
        (d.MEMORY_INTERCEPT_MESSAGE, 11, 44),  # InstructionByteCount
        (d.MEMORY_INTERCEPT_MESSAGE, 12, 45),  # MemoryAccessInfo
        (d.MEMORY_INTERCEPT_MESSAGE, 13, 46),  # TprPriority
        (d.MEMORY_INTERCEPT_MESSAGE, 14, 48),  # GVA
        (d.MEMORY_INTERCEPT_MESSAGE, 15, 56),  # GPA
        (d.MEMORY_INTERCEPT_MESSAGE, 16, 64),  # InstructionBytes
        # Register intercept.
        (d.REGISTER_INTERCEPT_MESSAGE, 10, 40),  # Flags
        (d.REGISTER_INTERCEPT_MESSAGE, 11, 44),  # RegisterName
        (d.REGISTER_INTERCEPT_MESSAGE, 12, 48),  # AccessInfo low
        (d.REGISTER_INTERCEPT_MESSAGE, 13, 56),  # AccessInfo high
        # MSR intercept.
        (d.MSR_INTERCEPT_MESSAGE, 10, 40),  # MsrNumber
        (d.MSR_INTERCEPT_MESSAGE, 11, 48),  # Rdx
        (d.MSR_INTERCEPT_MESSAGE, 12, 56),  # Rax
        # I/O port intercept.
        (d.IO_PORT_INTERCEPT_MESSAGE, 10, 40),  # PortNumber
        (d.IO_PORT_INTERCEPT_MESSAGE, 11, 42),  # AccessInfo
        (d.IO_PORT_INTERCEPT_MESSAGE, 12, 43),  # InstructionByteCount
        (d.IO_PORT_INTERCEPT_MESSAGE, 13, 48),  # Rax
        (d.IO_PORT_INTERCEPT_MESSAGE, 14, 56),  # InstructionBytes
        (d.IO_PORT_INTERCEPT_MESSAGE, 15, 72),  # Ds.base
        (d.IO_PORT_INTERCEPT_MESSAGE, 19, 88),  # Es.base
        (d.IO_PORT_INTERCEPT_MESSAGE, 23, 104),  # Rcx
        (d.IO_PORT_INTERCEPT_MESSAGE, 24, 112),  # Rsi
        (d.IO_PORT_INTERCEPT_MESSAGE, 25, 120),  # Rdi
        # Hypercall inputs (§1.3).
        (d.ENABLE_PARTITION_VTL_INPUT, 1, 8),
        (d.ENABLE_PARTITION_VTL_INPUT, 2, 9),
        (d.ENABLE_VP_VTL_HEADER, 1, 8),
        (d.ENABLE_VP_VTL_HEADER, 2, 12),
        (d.MODIFY_VTL_PROTECTION_MASK_HEADER, 1, 8),
        (d.MODIFY_VTL_PROTECTION_MASK_HEADER, 2, 12),
        (d.SET_VP_REGISTERS_ELEMENT, 1, 16),
        (d.TRANSLATE_VIRTUAL_ADDRESS_INPUT, 2, 16),
        (d.TRANSLATE_VIRTUAL_ADDRESS_INPUT, 3, 24),
        (d.TRANSLATE_VIRTUAL_ADDRESS_EX_OUTPUT, 1, 16),
        (d.TRANSLATE_VIRTUAL_ADDRESS_EX_OUTPUT, 2, 0x30),
        (d.SEND_SYNTHETIC_CLUSTER_IPI_INPUT, 1, 4),
        (d.SEND_SYNTHETIC_CLUSTER_IPI_INPUT, 3, 8),
        (d.ASSERT_VIRTUAL_INTERRUPT_INPUT, 3, 24),
        (d.ASSERT_VIRTUAL_INTERRUPT_INPUT, 4, 28),
        (d.POST_MESSAGE_DIRECT_INPUT, 3, 16),
        (d.POST_MESSAGE_DIRECT_INPUT, 4, 20),
        (d.SIGNAL_EVENT_DIRECT_INPUT, 4, 14),
        (d.ACCEPT_GPA_PAGES_HEADER, 2, 12),
        (d.ACCEPT_GPA_PAGES_HEADER, 4, 16),
        (d.HV_MESSAGE_HEADER, 2, 5),
        (d.HV_MESSAGE_HEADER, 3, 8),
        (d.HV_MESSAGE, 4, 16),
    ],
)
def test_field_offsets(layout: struct.Struct, index: int, offset: int) -> None:
    assert field_offset(layout, index) == offset


def test_vp_assist_offsets() -> None:
    assert d.VP_ASSIST_ENTRY_REASON_OFFSET == 8
    assert d.VP_ASSIST_VINA_STATUS_OFFSET == 12
    assert d.VP_ASSIST_VTL_RETURN_RAX_OFFSET == 16
    assert d.VP_ASSIST_VTL_RETURN_RCX_OFFSET == 24
    assert d.VP_ASSIST_INTERCEPT_MESSAGE_OFFSET == 112
    assert d.VP_ASSIST_RETURN_ACTIONS_OFFSET == 368
    assert d.VP_ASSIST_INTERCEPT_MESSAGE_OFFSET + d.HV_MESSAGE_SIZE == 368
    assert d.VP_ASSIST_RETURN_ACTIONS_OFFSET + d.VP_ASSIST_RETURN_ACTIONS_SIZE <= d.HV_PAGE_SIZE


# --- enum spot values ------------------------------------------------------------------------


def test_constants() -> None:
    assert d.HV_PARTITION_ID_SELF == 0xFFFF_FFFF_FFFF_FFFF
    assert d.HV_VP_INDEX_SELF == 0xFFFF_FFFE
    assert d.HV_ANY_VP == 0xFFFF_FFFF
    assert d.HV_PAGE_SIZE == 4096
    assert (d.VTL0, d.VTL1, d.MAX_VTL_ARCHITECTED, d.VTLS_IMPLEMENTED) == (0, 1, 15, 2)
    assert d.HV_SYNIC_INTERCEPTION_SINT_INDEX == 0
    assert d.HV_SYNIC_IOMMU_FAULT_SINT_INDEX == 1
    assert d.HV_MESSAGE_FLAG_PENDING == 1


def test_call_codes() -> None:
    c = d.HvCallCode
    assert c.FLUSH_VIRTUAL_ADDRESS_SPACE == 0x2
    assert c.FLUSH_VIRTUAL_ADDRESS_LIST == 0x3
    assert c.SEND_SYNTHETIC_CLUSTER_IPI == 0xB
    assert c.MODIFY_VTL_PROTECTION_MASK == 0xC
    assert c.ENABLE_PARTITION_VTL == 0xD
    assert c.DISABLE_PARTITION_VTL == 0xE
    assert c.ENABLE_VP_VTL == 0xF
    assert c.DISABLE_VP_VTL == 0x10
    assert c.VTL_CALL == 0x11
    assert c.VTL_RETURN == 0x12
    assert c.FLUSH_VIRTUAL_ADDRESS_SPACE_EX == 0x13
    assert c.FLUSH_VIRTUAL_ADDRESS_LIST_EX == 0x14
    assert c.SEND_SYNTHETIC_CLUSTER_IPI_EX == 0x15
    assert c.INSTALL_INTERCEPT == 0x4D
    assert c.GET_VP_REGISTERS == 0x50
    assert c.SET_VP_REGISTERS == 0x51
    assert c.TRANSLATE_VIRTUAL_ADDRESS == 0x52
    assert c.POST_MESSAGE == 0x5C
    assert c.SIGNAL_EVENT == 0x5D
    assert c.ASSERT_VIRTUAL_INTERRUPT == 0x94
    assert c.START_VIRTUAL_PROCESSOR == 0x99
    assert c.GET_VP_INDEX_FROM_APIC_ID == 0x9A
    assert c.TRANSLATE_VIRTUAL_ADDRESS_EX == 0xAC
    assert c.FLUSH_GUEST_PHYSICAL_ADDRESS_SPACE == 0xAF
    assert c.FLUSH_GUEST_PHYSICAL_ADDRESS_LIST == 0xB0
    assert c.SIGNAL_EVENT_DIRECT == 0xC0
    assert c.POST_MESSAGE_DIRECT == 0xC1
    assert c.CHECK_SPARSE_GPA_PAGE_VTL_ACCESS == 0xD4
    assert c.ACCEPT_GPA_PAGES == 0xD9
    assert c.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY == 0xDB
    assert c.QUERY_SPARSE_GPA_PAGE_HOST_VISIBILITY == 0x11C
    assert c.VBS_VM_CALL_REPORT == 0xC001
    for code in c:
        assert d.INPUT_CALL_CODE.extract(code) == code
    assert c.GET_VP_REGISTERS in d.REP_HYPERCALLS
    assert c.ENABLE_VP_VTL not in d.REP_HYPERCALLS


def test_status_codes() -> None:
    s = d.HvStatus
    assert s.SUCCESS == 0
    assert s.INVALID_HYPERCALL_CODE == 2
    assert s.INVALID_HYPERCALL_INPUT == 3
    assert s.INVALID_ALIGNMENT == 4
    assert s.INVALID_PARAMETER == 5
    assert s.ACCESS_DENIED == 6
    assert s.INVALID_PARTITION_STATE == 7
    assert s.OPERATION_DENIED == 8
    assert s.INVALID_PARTITION_ID == 0xD
    assert s.INVALID_VP_INDEX == 0xE
    assert s.NOT_FOUND == 0x10
    assert s.INVALID_VP_STATE == 0x15
    assert s.INSUFFICIENT_BUFFER == 0x33
    assert s.CPUID_XSAVE_FEATURE_VALIDATION_ERROR == 0x3D
    assert s.INVALID_REGISTER_VALUE == 0x50
    assert s.INVALID_VTL_STATE == 0x51
    assert s.OPERATION_FAILED == 0x71
    assert s.TIMEOUT == 0x78
    assert s.CALL_PENDING == 0x79
    assert s.VTL_ALREADY_ENABLED == 0x86
    assert s.UNKNOWN_REGISTER_NAME == 0x87
    assert all(0 <= v <= 0xFFFF for v in s)  # fits RESULT_STATUS


def test_map_gpa_flags() -> None:
    f = d.HvMapGpaFlags
    assert f.READABLE == 1
    assert f.WRITABLE == 2
    assert f.KERNEL_EXECUTABLE == 4
    assert f.USER_EXECUTABLE == 8
    assert f.SUPERVISOR_SHADOW_STACK == 0x10
    assert f.PAGING_WRITABILITY == 0x20
    assert f.VERIFY_PAGING_WRITABILITY == 0x40
    assert f.ADJUSTABLE == 0x8000
    assert f.NO_ACCESS == 0x10000
    assert f.ZEROED == 0x20000
    assert f.ONES == 0x30000
    assert f.NOT_CACHED == 0x200000
    assert f.LARGE_PAGE == 0x80000000
    assert d.HV_MAP_GPA_PERMISSIONS_NONE == 0
    assert d.HV_MAP_GPA_PERMISSIONS_ALL == 0xF
    assert d.HV_MAP_GPA_EXECUTABLE == f.KERNEL_EXECUTABLE | f.USER_EXECUTABLE
    assert d.HV_MAP_GPA_PERMISSIONS_MASK == (
        f.READABLE | f.WRITABLE | f.KERNEL_EXECUTABLE | f.USER_EXECUTABLE
    )


def test_register_names() -> None:
    r = d.HvRegisterName
    assert r.VSM_CODE_PAGE_OFFSETS == 0x000D0002
    assert r.VSM_VP_STATUS == 0x000D0003
    assert r.VSM_PARTITION_STATUS == 0x000D0004
    assert r.VSM_VINA == 0x000D0005
    assert r.VSM_CAPABILITIES == 0x000D0006
    assert r.VSM_PARTITION_CONFIG == 0x000D0007
    assert r.GUEST_VSM_PARTITION_CONFIG == 0x000D0008
    assert r.VSM_VP_WAIT_FOR_TLB_LOCK == 0x000D0020
    for n in range(15):
        assert r[f"VSM_VP_SECURE_CONFIG_VTL{n}"] == 0x000D0010 + n
    assert r.CR_INTERCEPT_CONTROL == 0x000E0000
    assert r.CR_INTERCEPT_CR0_MASK == 0x000E0001
    assert r.CR_INTERCEPT_CR4_MASK == 0x000E0002
    assert r.CR_INTERCEPT_IA32_MISC_ENABLE_MASK == 0x000E0003
    assert r.VP_ASSIST_PAGE == 0x00090013
    assert (r.PENDING_INTERRUPTION, r.INTERRUPT_STATE) == (0x00010002, 0x00010003)
    assert (r.PENDING_EVENT0, r.PENDING_EVENT1) == (0x00010004, 0x00010005)
    assert (r.PENDING_EVENT2, r.PENDING_EVENT3) == (0x00010008, 0x00010009)
    assert (r.GUEST_OS_ID, r.VP_INDEX) == (0x00090002, 0x00090003)
    for n in range(16):
        assert r[f"SINT{n}"] == 0x000A0000 + n
        assert r[f"XMM{n}"] == 0x00030000 + n
    synic = [r.SCONTROL, r.SVERSION, r.SIEFP, r.SIMP, r.EOM, r.SIRBP]
    assert synic == list(range(0x000A0010, 0x000A0016))
    gprs = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"]
    gprs += [f"R{n}" for n in range(8, 16)]
    assert [r[g] for g in gprs] == list(range(0x00020000, 0x00020010))
    assert (r.RIP, r.RFLAGS) == (0x00020010, 0x00020011)
    crs = [r.CR0, r.CR2, r.CR3, r.CR4, r.CR8, r.XFEM]
    assert crs == list(range(0x00040000, 0x00040006))
    drs = [r.DR0, r.DR1, r.DR2, r.DR3, r.DR6, r.DR7]
    assert drs == list(range(0x00050000, 0x00050006))
    segs = [r.ES, r.CS, r.SS, r.DS, r.FS, r.GS, r.LDTR, r.TR]
    assert segs == list(range(0x00060000, 0x00060008))
    assert (r.IDTR, r.GDTR) == (0x00070000, 0x00070001)
    msrs = [r.EFER, r.KERNEL_GS_BASE, r.APIC_BASE, r.PAT, r.SYSENTER_CS, r.SYSENTER_EIP]
    msrs += [r.SYSENTER_ESP, r.STAR, r.LSTAR, r.CSTAR, r.SFMASK]
    assert msrs == list(range(0x00080001, 0x0008000C))
    assert (r.TSC_AUX, r.XSS, r.S_CET) == (0x0008007B, 0x0008008B, 0x0008008D)


def test_architectural_registers() -> None:
    arch = d.ARCHITECTURAL_REGISTERS
    r = d.HvRegisterName
    for reg in (r.RAX, r.R15, r.RIP, r.RFLAGS, r.CR0, r.CR3, r.CR4, r.DR7, r.CS, r.TR):
        assert reg in arch
    for reg in (r.IDTR, r.GDTR, r.EFER, r.LSTAR, r.SFMASK, r.SYSENTER_ESP, r.PAT, r.TSC_AUX):
        assert reg in arch
    for reg in (r.VSM_PARTITION_CONFIG, r.VSM_VP_SECURE_CONFIG_VTL0, r.CR_INTERCEPT_CONTROL):
        assert reg not in arch
    for reg in (r.PENDING_EVENT0, r.VP_ASSIST_PAGE, r.SINT0, r.XMM0, r.VSM_VINA):
        assert reg not in arch


def test_msrs() -> None:
    m = d.HvMsr
    assert m.GUEST_OS_ID == 0x40000000
    assert m.HYPERCALL == 0x40000001
    assert m.VP_INDEX == 0x40000002
    assert m.VP_ASSIST_PAGE == 0x40000073
    assert m.SCONTROL == 0x40000080
    assert m.SVERSION == 0x40000081
    assert m.SIEFP == 0x40000082
    assert m.SIMP == 0x40000083
    assert m.EOM == 0x40000084
    for n in range(16):
        assert m[f"SINT{n}"] == 0x40000090 + n


def test_message_and_intercept_enums() -> None:
    t = d.HvMessageType
    assert t.NONE == 0
    assert t.UNMAPPED_GPA == 0x80000000
    assert t.GPA_INTERCEPT == 0x80000001
    assert t.UNACCEPTED_GPA == 0x80000003
    assert t.ENABLE_PARTITION_VTL_INTERCEPT == 0x80000005
    assert t.UNRECOVERABLE_EXCEPTION == 0x80000021
    assert t.IOMMU_FAULT == 0x80000024
    assert t.OPAQUE_INTERCEPT == 0x8000003F
    assert t.HYPERCALL_INTERCEPT == 0x80000050
    assert t.X64_IO_PORT_INTERCEPT == 0x80010000
    assert t.MSR_INTERCEPT == 0x80010001
    assert t.X64_CPUID_INTERCEPT == 0x80010002
    assert t.REGISTER_INTERCEPT == 0x80010006
    assert t.X64_APIC_INIT_SIPI_INTERCEPT == 0x8001000D

    i = d.HvInterceptType
    assert i.X64_IO_PORT == 0
    assert i.X64_MSR == 1
    assert i.X64_CPUID == 2
    assert i.EXCEPTION == 3
    assert i.X64_GLOBAL_CPUID == 6
    assert i.HYPERCALL == 8
    assert i.X64_APIC_WRITE == 0xB
    assert i.X64_APIC_EOI == 0xE
    assert i.X64_IO_PORT_RANGE == 0x11
    assert i.REGISTER == 0x12
    assert i.SYSTEM_RESET_EXTENDED == 0x13

    a = d.HvInterceptAccessType
    assert (a.READ, a.WRITE, a.EXECUTE) == (0, 1, 2)
    assert (d.HvInterceptAccessTypeMask.READ, d.HvInterceptAccessTypeMask.WRITE) == (1, 2)

    e = d.HvVtlEntryReason
    assert (e.RESERVED, e.VTL_CALL, e.INTERRUPT, e.INTERCEPT) == (0, 1, 2, 3)

    p = d.HvPendingEventType
    assert (p.EXCEPTION, p.MEMORY_INTERCEPT, p.NESTED_MEMORY_INTERCEPT) == (0, 1, 2)
    assert (p.VIRTUALIZATION_FAULT, p.HYPERCALL_OUTPUT, p.EXT_INT, p.SHADOW_IPT) == (3, 4, 5, 6)

    c = d.HvCacheType
    assert (c.UNCACHED, c.WRITE_COMBINING, c.WRITE_THROUGH) == (0, 1, 4)
    assert (c.WRITE_PROTECTED, c.WRITE_BACK) == (5, 6)


def test_translate_enums() -> None:
    g = d.HvTranslateGvaControlFlags
    assert g.VALIDATE_READ == 1
    assert g.VALIDATE_WRITE == 2
    assert g.VALIDATE_EXECUTE == 4
    assert g.PRIVILEGE_EXEMPT == 8
    assert g.SET_PAGE_TABLE_BITS == 0x10
    assert g.TLB_FLUSH_INHIBIT == 0x20
    assert g.SUPERVISOR_ACCESS == 0x40
    assert g.USER_ACCESS == 0x80
    assert g.ENFORCE_SMAP == 0x100
    assert g.OVERRIDE_SMAP == 0x200
    assert g.SHADOW_STACK == 0x400
    assert_field(d.TRANSLATE_INPUT_VTL, 56, 8)
    r = d.HvTranslateGvaResultCode
    assert [r.SUCCESS, r.PAGE_NOT_PRESENT, r.PRIVILEGE_VIOLATION] == [0, 1, 2]
    assert [r.INVALID_PAGE_TABLE_FLAGS, r.GPA_UNMAPPED, r.GPA_NO_READ_ACCESS] == [3, 4, 5]
    assert [r.GPA_NO_WRITE_ACCESS, r.GPA_ILLEGAL_OVERLAY_ACCESS, r.INTERCEPT] == [6, 7, 8]
    assert r.GPA_UNACCEPTED == 9
    result = d.TRANSLATE_RESULT_CODE.insert(0, r.INTERCEPT)
    result = d.TRANSLATE_RESULT_CACHE_TYPE.insert(result, d.HvCacheType.WRITE_BACK)
    assert result == 0x0000_0006_0000_0008


def test_flush_and_partition_flags() -> None:
    f = d.HvFlushFlags
    assert f.ALL_PROCESSORS == 1
    assert f.ALL_VIRTUAL_ADDRESS_SPACES == 2
    assert f.NON_GLOBAL_MAPPINGS_ONLY == 4
    assert f.USE_EXTENDED_RANGE_FORMAT == 8
    assert f.USE_TARGET_VTL == 0x10
    assert f.TARGET_VTL0 == 0x100
    assert f.TARGET_VTL1 == 0x200
    e = d.HvEnablePartitionVtlFlags
    assert (e.ENABLE_MBEC, e.ENABLE_SUPERVISOR_SHADOW_STACK, e.ENABLE_HARDWARE_HVPT) == (1, 2, 4)
    assert d.ENABLE_PARTITION_VTL_FLAGS_RSVD_MASK == 0xF8
    p = d.HvPartitionPrivilege
    assert p.ACCESS_SYNIC_REGS == 1 << 2
    assert p.ACCESS_VSM == 1 << 48
    assert p.ACCESS_VP_REGISTERS == 1 << 49
    assert p.ENABLE_EXTENDED_HYPERCALLS == 1 << 52
    assert p.START_VIRTUAL_PROCESSOR == 1 << 53
    assert p.ISOLATION == 1 << 54


def test_cr_intercept_control() -> None:
    c = d.HvCrInterceptControl
    assert c.CR0_WRITE == 1 << 0
    assert c.CR4_WRITE == 1 << 1
    assert c.XCR0_WRITE == 1 << 2
    assert c.IA32_MISC_ENABLE_READ == 1 << 3
    assert c.MSR_LSTAR_WRITE == 1 << 6
    assert c.APIC_BASE_MSR_WRITE == 1 << 12
    assert c.MSR_EFER_WRITE == 1 << 14
    assert c.GDTR_WRITE == 1 << 15
    assert c.TR_WRITE == 1 << 18
    assert c.MSR_SFMASK_WRITE == 1 << 22
    assert c.MSR_SGX_LAUNCH_CONTROL_WRITE == 1 << 24
    assert c.MSR_XSS_WRITE == 1 << 25
    assert c.MSR_INTERRUPT_SSP_TABLE_ADDR_WRITE == 1 << 28
    members = list(c)
    assert len(members) == 29
    all_bits = 0
    for m in members:
        all_bits |= m
    assert all_bits == (1 << 29) - 1
    assert all_bits & d.CR_INTERCEPT_RSVD_MASK == 0
    assert all_bits | d.CR_INTERCEPT_RSVD_MASK == 0xFFFF_FFFF_FFFF_FFFF


# --- bitfields ------------------------------------------------------------------------------


def test_hypercall_input_fields() -> None:
    assert_field(d.INPUT_CALL_CODE, 0, 16)
    assert_field(d.INPUT_FAST, 16, 1)
    assert_field(d.INPUT_VARHEAD_SIZE, 17, 10)
    assert_field(d.INPUT_IS_NESTED, 31, 1)
    assert_field(d.INPUT_REP_COUNT, 32, 12)
    assert_field(d.INPUT_REP_START, 48, 12)
    assert d.INPUT_RSVD_MASK == 0xF000_F000_7800_0000
    fields = [
        d.INPUT_CALL_CODE,
        d.INPUT_FAST,
        d.INPUT_VARHEAD_SIZE,
        d.INPUT_IS_NESTED,
        d.INPUT_REP_COUNT,
        d.INPUT_REP_START,
    ]
    covered = d.INPUT_RSVD_MASK
    for f in fields:
        assert covered & f.mask == 0
        covered |= f.mask
    assert covered == 0xFFFF_FFFF_FFFF_FFFF
    # A ModifyVtlProtectionMask rep call with 3 reps, starting at 1.
    value = d.INPUT_CALL_CODE.insert(0, d.HvCallCode.MODIFY_VTL_PROTECTION_MASK)
    value = d.INPUT_REP_COUNT.insert(value, 3)
    value = d.INPUT_REP_START.insert(value, 1)
    assert value == 0x0001_0003_0000_000C
    assert_field(d.RESULT_STATUS, 0, 16)
    assert_field(d.RESULT_REPS_COMPLETE, 32, 12)


def test_input_vtl() -> None:
    assert d.INPUT_VTL_TARGET.extract(0x10) == 0
    assert d.INPUT_VTL_USE_TARGET.extract(0x10) == 1
    assert d.INPUT_VTL_USE_TARGET.extract(0x00) == 0
    assert d.INPUT_VTL_TARGET.extract(0x11) == 1
    assert d.INPUT_VTL_RSVD_MASK == 0xE0
    assert d.INPUT_VTL_TARGET.mask | d.INPUT_VTL_USE_TARGET.mask | d.INPUT_VTL_RSVD_MASK == 0xFF


def test_vsm_register_fields() -> None:
    # VsmCapabilities is LSB-first (D1).
    assert_field(d.CAP_DR6_SHARED, 0, 1)
    assert_field(d.CAP_MBEC_VTL_MASK, 1, 16)
    assert_field(d.CAP_DENY_LOWER_VTL_STARTUP, 17, 1)
    assert_field(d.CAP_SUPERVISOR_SHADOW_STACK, 18, 1)
    assert_field(d.CAP_HW_HVPT_RANGE_BITS, 21, 6)
    assert_field(d.CAP_INTERCEPT_PAGE_AVAILABLE, 27, 1)
    assert_field(d.CAP_RETURN_ACTION_AVAILABLE, 28, 1)
    assert_field(d.CAP_PROXY_INTERRUPT_REDIRECT_AVAILABLE, 34, 1)
    # Partition and VP status.
    assert_field(d.PSTATUS_ENABLED_VTL_SET, 0, 16)
    assert_field(d.PSTATUS_MAXIMUM_VTL, 16, 4)
    assert_field(d.PSTATUS_MBEC_ENABLED_VTL_SET, 20, 16)
    assert_field(d.VPSTATUS_ACTIVE_VTL, 0, 4)
    assert_field(d.VPSTATUS_ACTIVE_MBEC_ENABLED, 4, 1)
    assert_field(d.VPSTATUS_ENABLED_VTL_SET, 16, 16)
    # Partition config: LVBS value (protection on, mask 0xF, zero-on-reset).
    cfg = d.PCONFIG_ENABLE_VTL_PROTECTION.insert(0, 1)
    cfg = d.PCONFIG_DEFAULT_VTL_PROTECTION_MASK.insert(cfg, d.HV_MAP_GPA_PERMISSIONS_ALL)
    cfg = d.PCONFIG_ZERO_MEMORY_ON_RESET.insert(cfg, 1)
    assert cfg == 0x3F
    assert_field(d.PCONFIG_INTERCEPT_VP_STARTUP, 9, 1)
    assert_field(d.PCONFIG_INTERCEPT_PAGE, 12, 1)
    assert d.PCONFIG_RSVD_MASK == 0xFFFF_FFFF_FFFF_0000
    # Secure config.
    assert_field(d.SECCFG_MBEC_ENABLED, 0, 1)
    assert_field(d.SECCFG_TLB_LOCKED, 1, 1)
    assert_field(d.SECCFG_SUPERVISOR_SHADOW_STACK_ENABLED, 2, 1)
    assert_field(d.SECCFG_HW_HVPT_ENABLED, 3, 1)
    assert d.SECCFG_RSVD_MASK == 0xFFFF_FFFF_FFFF_FFF0
    # Code page offsets as OpenVMM reports them for 64-bit.
    cpo = d.CPO_VTL_CALL_OFFSET.insert(0, d.HYPERCALL_PAGE_VTL_CALL_OFFSET_64)
    cpo = d.CPO_VTL_RETURN_OFFSET.insert(cpo, d.HYPERCALL_PAGE_VTL_RETURN_OFFSET_64)
    assert cpo == 0x2600F
    # VINA.
    assert_field(d.VINA_VECTOR, 0, 8)
    assert_field(d.VINA_ENABLED, 8, 1)
    assert_field(d.VINA_AUTO_RESET, 9, 1)
    assert_field(d.VINA_AUTO_EOI, 10, 1)


def test_pending_event_lvbs_gp() -> None:
    # LVBS injects #GP: pending=1, type=0, deliver_ec=1, vector=0xD, ec=0.
    v = d.PEV_EVENT_PENDING.insert(0, 1)
    v = d.PEV_EVENT_TYPE.insert(v, d.HvPendingEventType.EXCEPTION)
    v = d.PEV_DELIVER_ERROR_CODE.insert(v, 1)
    v = d.PEV_VECTOR.insert(v, 0xD)
    v = d.PEV_ERROR_CODE.insert(v, 0)
    assert v == 0x000D_0101
    low, high = v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64
    assert d.REGISTER_VALUE.unpack(d.REGISTER_VALUE.pack(low, high)) == (0x000D_0101, 0)


def test_misc_fields() -> None:
    assert_field(d.SINT_VECTOR, 0, 8)
    assert_field(d.SINT_MASKED, 16, 1)
    assert_field(d.SINT_AUTO_EOI, 17, 1)
    assert_field(d.SINT_POLLING, 18, 1)
    assert_field(d.SINT_AS_INTERCEPT, 19, 1)
    assert_field(d.EXEC_STATE_CPL, 0, 2)
    assert_field(d.EXEC_STATE_CR0_PE, 2, 1)
    assert_field(d.EXEC_STATE_CR0_AM, 3, 1)
    assert_field(d.EXEC_STATE_EFER_LMA, 4, 1)
    assert_field(d.EXEC_STATE_VTL, 7, 4)
    assert_field(d.HYPERCALL_MSR_ENABLE, 0, 1)
    assert_field(d.HYPERCALL_MSR_LOCKED, 1, 1)
    assert_field(d.HYPERCALL_MSR_GPFN, 12, 52)
    assert_field(d.VP_ASSIST_ENABLE, 0, 1)
    assert_field(d.VP_ASSIST_GPFN, 12, 52)
    assert_field(d.SIMP_ENABLE, 0, 1)
    assert_field(d.SIMP_GPFN, 12, 52)
    assert_field(d.MEM_ACCESS_GVA_VALID, 0, 1)
    assert_field(d.MEM_ACCESS_TLB_LOCKED, 3, 1)
    # Segment attributes of a 64-bit ring-0 code segment: type 0xB, S, P, L -> 0xA09B.
    attr = d.SEG_ATTR_TYPE.insert(0, 0xB)
    attr = d.SEG_ATTR_NON_SYSTEM.insert(attr, 1)
    attr = d.SEG_ATTR_DPL.insert(attr, 0)
    attr = d.SEG_ATTR_PRESENT.insert(attr, 1)
    attr = d.SEG_ATTR_LONG.insert(attr, 1)
    attr = d.SEG_ATTR_GRANULARITY.insert(attr, 1)
    assert attr == 0xA09B
    assert_field(d.SEG_ATTR_DEFAULT_BIG, 14, 1)
    assert_field(d.SEG_ATTR_AVAILABLE, 12, 1)


@given(
    shift=st.integers(min_value=0, max_value=120),
    width=st.integers(min_value=1, max_value=64),
    base=st.integers(min_value=0, max_value=(1 << 192) - 1),
    data=st.data(),
)
def test_bitfield_round_trip(shift: int, width: int, base: int, data: st.DataObject) -> None:
    field = BitField(shift, width)
    fv = data.draw(st.integers(min_value=0, max_value=(1 << width) - 1))
    out = field.insert(base, fv)
    assert field.extract(out) == fv
    # Bits outside the field are untouched.
    assert out & ~field.mask == base & ~field.mask
    assert field.mask == ((1 << width) - 1) << shift
    # Inserting what is already there is the identity.
    assert field.insert(base, field.extract(base)) == base


def test_bitfield_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        BitField(0, 4).insert(0, 16)
    with pytest.raises(ValueError):
        BitField(0, 4).insert(0, -1)
    with pytest.raises(ValueError):
        BitField(0, 0)
    with pytest.raises(ValueError):
        BitField(-1, 1)


# --- hypercall page --------------------------------------------------------------------------


VMCALL = b"\x0f\x01\xc1"


def test_hypercall_page_offsets() -> None:
    assert d.HYPERCALL_PAGE_VTL_CALL_OFFSET_32 == 0x04
    assert d.HYPERCALL_PAGE_VTL_CALL_OFFSET_64 == 0x0F
    assert d.HYPERCALL_PAGE_VTL_RETURN_OFFSET_32 == 0x1B
    assert d.HYPERCALL_PAGE_VTL_RETURN_OFFSET_64 == 0x26
    offsets = [off for off, _ in d.HYPERCALL_PAGE_STUBS]
    assert offsets == [0x00, 0x04, 0x0F, 0x1B, 0x26]


def test_hypercall_page_stubs_contiguous() -> None:
    expected_next = 0
    for off, code in d.HYPERCALL_PAGE_STUBS:
        assert off == expected_next
        expected_next = off + len(code)
    assert expected_next == 0x32


def test_hypercall_page_stub_encodings() -> None:
    stubs = dict(d.HYPERCALL_PAGE_STUBS)
    assert stubs[0x00] == bytes.fromhex("0F01C1C3")
    assert stubs[0x04] == bytes.fromhex("89C1 B811000000 0F01C1 C3")
    assert stubs[0x0F] == bytes.fromhex("4889C8 B911000000 0F01C1 C3")
    assert stubs[0x1B] == bytes.fromhex("89C1 B812000000 0F01C1 C3")
    assert stubs[0x26] == bytes.fromhex("4889C8 B912000000 0F01C1 C3")


def test_hypercall_page_vmcall_positions() -> None:
    page = bytearray(0x40)
    for off, code in d.HYPERCALL_PAGE_STUBS:
        page[off : off + len(code)] = code
    # Each stub is "... vmcall; ret": exactly one vmcall, right before the final ret.
    for off, code in d.HYPERCALL_PAGE_STUBS:
        assert code.count(VMCALL) == 1
        assert code.endswith(VMCALL + b"\xc3")
        assert page[off + len(code) - 4 : off + len(code) - 1] == VMCALL
    vmcall_sites = [i for i in range(len(page) - 2) if page[i : i + 3] == VMCALL]
    assert vmcall_sites == [0x00, 0x0B, 0x17, 0x22, 0x2E]
    # The call code is loaded into the register the hypervisor reads (EAX for 32-bit stubs,
    # ECX for 64-bit stubs), via the imm32 right before the vmcall.
    for off, call_code in (
        (d.HYPERCALL_PAGE_VTL_CALL_OFFSET_32, d.HvCallCode.VTL_CALL),
        (d.HYPERCALL_PAGE_VTL_RETURN_OFFSET_32, d.HvCallCode.VTL_RETURN),
    ):
        assert page[off + 2] == 0xB8  # mov eax, imm32
        assert struct.unpack_from("<I", page, off + 3)[0] == call_code
    for off, call_code in (
        (d.HYPERCALL_PAGE_VTL_CALL_OFFSET_64, d.HvCallCode.VTL_CALL),
        (d.HYPERCALL_PAGE_VTL_RETURN_OFFSET_64, d.HvCallCode.VTL_RETURN),
    ):
        assert page[off + 3] == 0xB9  # mov ecx, imm32
        assert struct.unpack_from("<I", page, off + 4)[0] == call_code
