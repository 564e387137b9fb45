"""SynIC messages, the VP assist page, and the intercept messages posted to a higher VTL.

Intercept delivery (vsm-spec §6.2): the message goes into SINT0's slot of the higher VTL's SIM page
on the same VP; the higher VTL must have enabled SCONTROL, SIMP and an unmasked SINT0.  A busy slot
gets MessagePending set and the new message waits for an EOM write.  Layouts: vsm-spec §6.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vbsim.hv import defs
from vbsim.hv.defs import HvCrInterceptControl as Cic
from vbsim.hv.defs import HvMessageType, HvRegisterName
from vbsim.hw.translation import Verdict
from vbsim.hw.x86 import (
    INSN_LEN_LIDT,
    INSN_LEN_MOV_CR,
    INSN_LEN_WRMSR,
    Access,
    Cr0,
    Efer,
    Msr,
)

if TYPE_CHECKING:
    from vbsim.hv.hypervisor import Hypervisor
    from vbsim.hw.vp import VirtualProcessor

SINT0 = defs.HV_SYNIC_INTERCEPTION_SINT_INDEX
_GPFN_MASK = defs.VP_ASSIST_GPFN.mask
_REASONS = {int(r): int(r).to_bytes(4, "little") for r in defs.HvVtlEntryReason}
_WB = 6  # HvCacheType WriteBack (vsm-spec §6.3)

#: The instruction the model stands behind each kind of guest memory access, as the memory
#: intercept message reports it (InstructionLength in the header, InstructionByteCount and
#: InstructionBytes in the message).  Encodings: SDM Vol. 2 (MOV 8B /r, MOV 89 /r with REX.W and
#: ModRM 00 = [rax]; CALL FF /2 with ModRM D0 = call rax; VMCALL 0F 01 C1).  kvm-unit-tests
#: ``test_gpa_protection_mask`` expects exactly these for its read, write and execute probes:
#: 3 bytes for the loads and stores, and for an execute fault the length of the CALL with no
#: instruction bytes ("No instruction decoding for exec accesses").
INSN_READ = bytes((0x48, 0x8B, 0x00))  # mov rax, [rax]
INSN_WRITE = bytes((0x48, 0x89, 0x00))  # mov [rax], rax
INSN_CALL_LENGTH = 2  # call rax (FF D0)
INSN_VMCALL = bytes((0x0F, 0x01, 0xC1))  # a hypercall's parameter-block access


@dataclass(slots=True)
class Intercept:
    """A built intercept, ready to be posted to ``vtl``."""

    vtl: int
    message_type: int
    payload: bytes
    what: str
    rip: int
    #: For a memory intercept: the GPA, to trace what was refused.
    gpa: int | None = None


# -- VP assist page --------------------------------------------------------------------------
def assist_page(hv: Hypervisor, vp: VirtualProcessor, vtl: int) -> int | None:
    msr = hv.states[vp.index][vtl].vp_assist_msr
    if not msr & 1:  # VP_ASSIST_ENABLE
        return None
    gpa = msr & _GPFN_MASK
    return gpa if gpa + 4096 <= hv.ram.size else None


def set_entry_reason(hv: Hypervisor, vp: VirtualProcessor, vtl: int, reason: int) -> None:
    page = assist_page(hv, vp, vtl)
    if page is not None:
        offset = page + defs.VP_ASSIST_ENTRY_REASON_OFFSET
        hv.ram.mm[offset : offset + 4] = _REASONS[reason]


def vtl_return_registers(hv: Hypervisor, vp: VirtualProcessor, vtl: int) -> tuple[int, int]:
    """VtlReturnX64Rax/Rcx that the returning VTL wrote (vsm-spec §5.4 step 6)."""
    page = assist_page(hv, vp, vtl)
    if page is None:
        return 0, 0
    return (
        hv.ram.read_u64(page + defs.VP_ASSIST_VTL_RETURN_RAX_OFFSET),
        hv.ram.read_u64(page + defs.VP_ASSIST_VTL_RETURN_RCX_OFFSET),
    )


def set_vina_asserted(hv: Hypervisor, vp: VirtualProcessor, vtl: int, asserted: bool) -> None:
    page = assist_page(hv, vp, vtl)
    if page is not None:
        hv.ram.write(page + defs.VP_ASSIST_VINA_STATUS_OFFSET, bytes([int(asserted)]))


def assert_vina(hv: Hypervisor, vp: VirtualProcessor, vtl: int) -> None:
    """A lower-VTL interrupt became pending while ``vtl`` runs: raise the VINA vector once."""
    page = assist_page(hv, vp, vtl)
    if page is not None and hv.ram.read(page + defs.VP_ASSIST_VINA_STATUS_OFFSET, 1)[0] & 1:
        return
    set_vina_asserted(hv, vp, vtl, True)
    hv.states[vp.index][vtl].pending_interrupts.append(
        defs.VINA_VECTOR.extract(hv.states[vp.index][vtl].vina)
    )


# -- SIM posting ---------------------------------------------------------------------------------
def post(
    hv: Hypervisor, vp: VirtualProcessor, vtl: int, sint: int, message_type: int, payload: bytes
) -> bool:
    """Post a message to ``vtl``'s SINT slot on ``vp``; False if its SynIC cannot take it."""
    syn = hv.states[vp.index][vtl].synic
    if not syn.ready(sint):
        return False
    slot = (defs.SIMP_GPFN.extract(syn.simp) << 12) + sint * defs.HV_MESSAGE_SIZE
    if not hv.ram.backed(slot, defs.HV_MESSAGE_SIZE):
        return False
    message = defs.HV_MESSAGE.pack(message_type, len(payload), 0, 0, payload)
    if int.from_bytes(hv.ram.read(slot, 4), "little") != HvMessageType.NONE:
        flags = hv.ram.read(slot + 5, 1)[0] | defs.HV_MESSAGE_FLAG_PENDING
        hv.ram.write(slot + 5, bytes([flags]))
        syn.queued[sint].append(message)
        return True
    hv.ram.write(slot, message)
    return True


def end_of_message(hv: Hypervisor, vp: VirtualProcessor, vtl: int) -> None:
    """EOM: deliver the next queued message into any free slot (vsm-spec §6.2)."""
    syn = hv.states[vp.index][vtl].synic
    base = defs.SIMP_GPFN.extract(syn.simp) << 12
    for sint, queue in enumerate(syn.queued):
        slot = base + sint * defs.HV_MESSAGE_SIZE
        free = hv.ram.backed(slot, defs.HV_MESSAGE_SIZE) and (
            int.from_bytes(hv.ram.read(slot, 4), "little") == HvMessageType.NONE
        )
        if queue and free:
            message = queue.popleft()
            if queue:
                message = message[:5] + bytes([defs.HV_MESSAGE_FLAG_PENDING]) + message[6:]
            hv.ram.write(slot, message)


def sint_vector(hv: Hypervisor, vp: VirtualProcessor, vtl: int, sint: int) -> int:
    return defs.SINT_VECTOR.extract(hv.states[vp.index][vtl].synic.sints[sint])


# -- intercept messages --------------------------------------------------------------------------
def interceptor(hv: Hypervisor, vp: VirtualProcessor) -> int | None:
    """The VTL that receives intercepts of ``vp``'s current VTL (the next higher enabled)."""
    return hv.next_higher_vtl(vp)


def _header(vp: VirtualProcessor, length: int, access: int) -> tuple[int, ...]:
    bank = vp.p
    state = defs.EXEC_STATE_CPL.insert(0, bank.cpl & 3)
    if bank.cr0 & Cr0.PE:
        state |= defs.EXEC_STATE_CR0_PE.mask
    if bank.cr0 & Cr0.AM:
        state |= defs.EXEC_STATE_CR0_AM.mask
    if bank.efer & Efer.LMA:
        state |= defs.EXEC_STATE_EFER_LMA.mask
    state = defs.EXEC_STATE_VTL.insert(state, vp.vtl)
    cs = bank.segments["cs"]
    length_byte = defs.INTERCEPT_INSTRUCTION_LENGTH.insert(0, length) | ((bank.cr8 & 0xF) << 4)
    return (
        vp.index,
        length_byte,
        access,
        state,
        cs.base,
        cs.limit & 0xFFFF_FFFF,
        cs.selector,
        cs.attributes,
        bank.rip,
        bank.rflags,
    )


def memory_intercept_message(
    hv: Hypervisor,
    vp: VirtualProcessor,
    verdict: Verdict,
    gva: int | None,
    instruction: bytes | None = None,
) -> Intercept:
    """HV_X64_MEMORY_INTERCEPT_MESSAGE for a SLAT refusal (the 0x50-byte core, vsm-spec §6.3),
    with the length and bytes of the instruction that made the access (see ``INSN_READ``)."""
    gpa = verdict.gpa if verdict.gpa is not None else verdict.address
    access = int(verdict.access)
    info = 0
    if gva is not None:
        info |= defs.MEM_ACCESS_GVA_VALID.mask
        if verdict.mechanism == "slat":
            info |= defs.MEM_ACCESS_GVA_GPA_VALID.mask  # the GVA translates to this GPA
    if instruction is not None:
        length, raw = len(instruction), instruction
    elif access == Access.EXECUTE:
        length, raw = INSN_CALL_LENGTH, b""
    else:
        raw = INSN_WRITE if access == Access.WRITE else INSN_READ
        length = len(raw)
    payload = defs.MEMORY_INTERCEPT_MESSAGE.pack(
        *_header(vp, length, access),
        _WB,
        len(raw),
        info,
        0,
        gva or 0,
        gpa,
        raw.ljust(16, b"\0"),
    )
    target = interceptor(hv, vp)
    what = f"{Access(access).name.lower()} of GPA 0x{gpa:x}"
    return Intercept(
        target if target is not None else vp.vtl,
        HvMessageType.GPA_INTERCEPT,
        payload,
        what,
        vp.p.rip,
        gpa,
    )


#: register name → (control bit, mask attribute or None, HV register name, instruction length)
_REGISTER_INTERCEPTS: dict[str, tuple[Cic, str | None, HvRegisterName, int]] = {
    "cr0": (Cic.CR0_WRITE, "cr0_mask", HvRegisterName.CR0, INSN_LEN_MOV_CR),
    "cr4": (Cic.CR4_WRITE, "cr4_mask", HvRegisterName.CR4, INSN_LEN_MOV_CR),
    "xcr0": (Cic.XCR0_WRITE, None, HvRegisterName.XFEM, 3),
    "idtr": (Cic.IDTR_WRITE, None, HvRegisterName.IDTR, INSN_LEN_LIDT),
    "gdtr": (Cic.GDTR_WRITE, None, HvRegisterName.GDTR, INSN_LEN_LIDT),
    "ldtr": (Cic.LDTR_WRITE, None, HvRegisterName.LDTR, INSN_LEN_LIDT),
    "tr": (Cic.TR_WRITE, None, HvRegisterName.TR, INSN_LEN_LIDT),
}

#: MSR → (read control bit or None, write control bit, mask attribute or None)
_MSR_INTERCEPTS: dict[int, tuple[Cic | None, Cic, str | None]] = {
    Msr.LSTAR: (Cic.MSR_LSTAR_READ, Cic.MSR_LSTAR_WRITE, None),
    Msr.STAR: (Cic.MSR_STAR_READ, Cic.MSR_STAR_WRITE, None),
    Msr.CSTAR: (Cic.MSR_CSTAR_READ, Cic.MSR_CSTAR_WRITE, None),
    Msr.EFER: (Cic.MSR_EFER_READ, Cic.MSR_EFER_WRITE, None),
    Msr.APIC_BASE: (Cic.APIC_BASE_MSR_READ, Cic.APIC_BASE_MSR_WRITE, None),
    Msr.SYSENTER_CS: (None, Cic.MSR_SYSENTER_CS_WRITE, None),
    Msr.SYSENTER_EIP: (None, Cic.MSR_SYSENTER_EIP_WRITE, None),
    Msr.SYSENTER_ESP: (None, Cic.MSR_SYSENTER_ESP_WRITE, None),
    Msr.SFMASK: (None, Cic.MSR_SFMASK_WRITE, None),
    Msr.TSC_AUX: (None, Cic.MSR_TSC_AUX_WRITE, None),
    Msr.MISC_ENABLE: (Cic.IA32_MISC_ENABLE_READ, Cic.IA32_MISC_ENABLE_WRITE, "misc_enable_mask"),
}


def register_intercept_message(
    hv: Hypervisor, vp: VirtualProcessor, name: str, value: int
) -> Intercept | None:
    target = interceptor(hv, vp)
    entry = _REGISTER_INTERCEPTS.get(name)
    if target is None or entry is None:
        return None
    bit, mask_attr, hv_name, length = entry
    config = hv.states[vp.index][target]
    if not config.cr_intercept_control & bit:
        return None
    if mask_attr is not None:
        old = getattr(vp.p, name)
        if not (old ^ value) & getattr(config, mask_attr):
            return None  # vsm-spec §4.1: intercept only if (old XOR new) & mask
    payload = defs.REGISTER_INTERCEPT_MESSAGE.pack(
        *_header(vp, length, 1),
        0,
        int(hv_name),
        value & 0xFFFF_FFFF_FFFF_FFFF,
        (value >> 64) & 0xFFFF_FFFF_FFFF_FFFF,
    )
    return Intercept(
        target, HvMessageType.REGISTER_INTERCEPT, payload, f"write of {name}", vp.p.rip
    )


def msr_intercept_message(
    hv: Hypervisor, vp: VirtualProcessor, msr: int, value: int | None
) -> Intercept | None:
    target = interceptor(hv, vp)
    entry = _MSR_INTERCEPTS.get(msr)
    if target is None or entry is None:
        return None
    read_bit, write_bit, mask_attr = entry
    config = hv.states[vp.index][target]
    bit = write_bit if value is not None else read_bit
    if bit is None or not config.cr_intercept_control & bit:
        return None
    if value is not None and mask_attr is not None:
        old = vp.misc_enable
        if not (old ^ value) & getattr(config, mask_attr):
            return None
    written = value if value is not None else 0
    payload = defs.MSR_INTERCEPT_MESSAGE.pack(
        *_header(vp, INSN_LEN_WRMSR, 1 if value is not None else 0),
        msr,
        written >> 32,
        written & 0xFFFF_FFFF,
    )
    verb = "write" if value is not None else "read"
    return Intercept(
        target, HvMessageType.MSR_INTERCEPT, payload, f"{verb} of MSR 0x{msr:x}", vp.p.rip
    )


def io_intercept_message(
    hv: Hypervisor, vp: VirtualProcessor, port: int, size: int, value: int | None
) -> Intercept | None:
    target = interceptor(hv, vp)
    if target is None:
        return None
    mask = hv.states[vp.index][target].io_ports.get(port, 0)
    need = 2 if value is not None else 1  # HvInterceptAccessTypeMask: R=1, W=2
    if not mask & need:
        return None
    info = defs.IO_ACCESS_SIZE.insert(0, size & 7)
    cs = vp.p.segments["ds"]
    es = vp.p.segments["es"]
    payload = defs.IO_PORT_INTERCEPT_MESSAGE.pack(
        *_header(vp, 1, 1 if value is not None else 0),
        port,
        info,
        0,
        value if value is not None else vp.rax,
        bytes(16),
        cs.base,
        cs.limit,
        cs.selector,
        cs.attributes,
        es.base,
        es.limit,
        es.selector,
        es.attributes,
        vp.rcx,
        vp.rsi,
        vp.rdi,
    )
    return Intercept(
        target, HvMessageType.X64_IO_PORT_INTERCEPT, payload, f"I/O port 0x{port:x}", vp.p.rip
    )
