"""The Secure Kernel's SINT0 handler: secure intercepts from VTL0 (vsm-spec §6, vbs-internals §5.7).

- A memory intercept (VTL0 touched a page its SLAT denies — SK memory, trustlet memory, an HVCI or
  KDP protected page) never completes: the SK injects #GP into VTL0 (as LVBS does; what Windows does
  in each case — #GP or an immediate bugcheck — is not in the reference, [U]).  VTL0's own #GP
  handling then decides (NT bugchecks for a kernel-mode fault, kills a thread for a user one).
  Each one is logged in SK memory (``layouts.InterceptLog``); host tools read it with
  :func:`host_log`.
- Register and MSR intercepts go to HyperGuard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vbsim.guest import hvcall
from vbsim.hv import defs
from vbsim.hv.defs import HvMessageType, HvMsr, HvRegisterName
from vbsim.hw.x86 import Vector
from vbsim.sk import hyperguard
from vbsim.sk.layouts import InterceptLog

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel


_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1


class _Ram(Protocol):
    def read(self, gpa: int, length: int, /) -> bytes: ...


def inject_gp(sk: SecureKernel, vp: Cpu) -> None:
    event = defs.PEV_EVENT_PENDING.mask | defs.PEV_DELIVER_ERROR_CODE.mask
    event = defs.PEV_VECTOR.insert(event, int(Vector.GP))
    hvcall.set_vp_registers(
        vp, sk.params, [(int(HvRegisterName.PENDING_EVENT0), event)], target_vtl=0
    )


_RECORD = struct.Struct("<IIQQQ")  # InterceptLog record: access, vp, gva, gpa, rip
assert _RECORD.size == InterceptLog.RECORD and InterceptLog.RIP.offset == 0x18


def log(sk: SecureKernel, vp: Cpu, access: int, gva: int, gpa: int, rip: int) -> None:
    """Append a record to the intercept log in SK memory (a ring: the oldest is overwritten)."""
    count = vp.read_u64(sk.intercepts_va + InterceptLog.COUNT.offset)
    record = sk.intercepts_va + InterceptLog.RECORDS + (count % InterceptLog.MAX) * _RECORD.size
    vp.write(record, _RECORD.pack(access & _U32, vp.index, gva & _U64, gpa & _U64, rip & _U64))
    vp.write_u64(sk.intercepts_va + InterceptLog.COUNT.offset, count + 1)


@dataclass(frozen=True, slots=True)
class Intercept:
    """One logged memory intercept, as a host tool reads it from RAM."""

    access: int
    vp: int
    gva: int
    gpa: int
    rip: int


def host_log(ram: _Ram, sk: SecureKernel) -> tuple[int, list[Intercept]]:
    """(how many were ever logged, the records the ring still holds, oldest first)."""
    base = sk.intercepts_gpa
    count = int.from_bytes(ram.read(base + InterceptLog.COUNT.offset, 8), "little")
    kept = min(count, InterceptLog.MAX)
    raw = ram.read(base + InterceptLog.RECORDS, InterceptLog.MAX * _RECORD.size)
    out: list[Intercept] = []
    for n in range(count - kept, count):
        slot = n % InterceptLog.MAX
        out.append(Intercept(*_RECORD.unpack_from(raw, slot * _RECORD.size)))
    return count, out


def handle(sk: SecureKernel, vp: Cpu) -> None:
    slot = sk.space.phys_va(sk.processors[vp.index].sim_gpa)
    message_type = vp.read_u32(slot)
    payload = vp.read(slot + 16, defs.HV_MESSAGE_PAYLOAD_SIZE)
    header = defs.INTERCEPT_HEADER.unpack_from(payload)
    length = defs.INTERCEPT_INSTRUCTION_LENGTH.extract(header[1])
    rip = header[8]
    if message_type == HvMessageType.GPA_INTERCEPT:
        fields = defs.MEMORY_INTERCEPT_MESSAGE.unpack_from(payload)
        access, gva, gpa = header[2], fields[-3], fields[-2]
        log(sk, vp, access, gva, gpa, rip)
        sk.emit(vp, "intercept", "slat", "refused", access=access, gva=gva, gpa=gpa, rip=rip)
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
