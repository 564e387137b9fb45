"""The Secure Kernel's SINT0 handler: secure intercepts from VTL0 (vsm-spec §6, vbs-internals §5.7).

- A memory intercept (VTL0 touched a page its SLAT denies — SK memory, trustlet memory, an HVCI or
  KDP protected page) never completes: the SK injects #GP into VTL0 (as LVBS does; what Windows does
  in each case — #GP or an immediate bugcheck — is not in the reference, [U]).  VTL0's own #GP
  handling then decides (NT bugchecks for a kernel-mode fault, kills a thread for a user one).
- Register and MSR intercepts go to HyperGuard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hv.defs import HvMessageType, HvMsr, HvRegisterName
from vbsim.hw.x86 import Vector
from vbsim.sk import hyperguard

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel


def inject_gp(sk: SecureKernel, vp: Cpu) -> None:
    event = defs.PEV_EVENT_PENDING.mask | defs.PEV_DELIVER_ERROR_CODE.mask
    event = defs.PEV_VECTOR.insert(event, int(Vector.GP))
    hvcall.set_vp_registers(
        vp, sk.params, [(int(HvRegisterName.PENDING_EVENT0), event)], target_vtl=0
    )


def handle(sk: SecureKernel, vp: Cpu) -> None:
    slot = sk.space.phys_va(sk.processors[vp.index].sim_gpa)
    message_type = vp.read_u32(slot)
    payload = vp.read(slot + 16, defs.HV_MESSAGE_PAYLOAD_SIZE)
    header = defs.INTERCEPT_HEADER.unpack_from(payload)
    length = defs.INTERCEPT_INSTRUCTION_LENGTH.extract(header[1])
    rip = header[8]
    if message_type == HvMessageType.GPA_INTERCEPT:
        fields = defs.MEMORY_INTERCEPT_MESSAGE.unpack_from(payload)
        record = {"access": header[2], "gva": fields[-3], "gpa": fields[-2], "rip": rip}
        sk.intercepts.append(record)
        sk.emit(vp, "intercept", "slat", "refused", **record)
        inject_gp(sk, vp)
    elif message_type == HvMessageType.REGISTER_INTERCEPT:
        fields = defs.REGISTER_INTERCEPT_MESSAGE.unpack_from(payload)
        register, low, high = fields[-3], fields[-2], fields[-1]
        hyperguard.decide(sk, vp, register, low | (high << 64), rip, length)
    elif message_type == HvMessageType.MSR_INTERCEPT:
        fields = defs.MSR_INTERCEPT_MESSAGE.unpack_from(payload)
        msr, rdx, rax = fields[-3], fields[-2], fields[-1]
        register = hyperguard.MSR_REGISTERS.get(msr)
        if register is None:
            inject_gp(sk, vp)
        else:
            hyperguard.decide(sk, vp, register, (rdx << 32) | (rax & 0xFFFF_FFFF), rip, length)
    else:
        inject_gp(sk, vp)
    flags = vp.read(slot + 5, 1)[0]
    vp.write_u32(slot, 0)
    if flags & defs.HV_MESSAGE_FLAG_PENDING:
        vp.wrmsr(HvMsr.EOM, 0)
