"""The secure-call argument block and how it travels (vbs-internals §2.2, §2.3).

``SECURE_CALL_ARGS`` is 0x68 bytes: an 8-byte reserved field (OperationType u8, pad u8,
SecureCallOrSystemCallCode u16, SecureThreadCookie u32) and twelve u64 fields.  NT's
``HvlSwitchToVsmVtl1`` packs it into shared registers — RBX and XMM10–XMM15, 8 + 6 × 16 = 0x68 —
and VTL-calls; the Secure Kernel unpacks them into its own memory (a capture: VTL0 cannot change
registers it has already handed over).  Results come back in the same block: the model puts the
NTSTATUS in Field1 and outputs in Field2.. (the real per-service convention is unverified, [U]).

Normal calls (VTL1 → VTL0) reuse the block with the model's operation type 0x80 ("normal call
request"), and NT answers with 0x81 ("normal call reply") on the next VTL call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vbsim.hw.cpu import Cpu

ARGS = struct.Struct("<BxHI12Q")
assert ARGS.size == 0x68
FIELDS = 12

OP_INVOKE_SERVICE = 2  # vbs-internals §2.2 "Operation types" [V]
OP_FLUSH_TB = 3  # [V]
#: Resume a secure thread: the value is not public ([U], vbs-internals §2.2); the model uses 4.
OP_RESUME_THREAD = 4
#: The model's values for the normal-call exchange (the real encoding is not public).
OP_NORMAL_CALL = 0x80
OP_NORMAL_REPLY = 0x81


@dataclass(slots=True)
class SecureCallArgs:
    op: int = OP_INVOKE_SERVICE
    code: int = 0
    cookie: int = 0
    fields: list[int] = field(default_factory=lambda: [0] * FIELDS)

    def pack(self) -> bytes:
        values = self.fields
        if len(values) != FIELDS:
            values = (values + [0] * FIELDS)[:FIELDS]
        try:  # every value already in range (the usual case): no masking needed
            return ARGS.pack(self.op, self.code, self.cookie, *values)
        except struct.error:
            pass
        return ARGS.pack(
            self.op & 0xFF,
            self.code & 0xFFFF,
            self.cookie & 0xFFFF_FFFF,
            *[v & 0xFFFF_FFFF_FFFF_FFFF for v in values],
        )

    @classmethod
    def unpack(cls, raw: bytes) -> SecureCallArgs:
        op, code, cookie, *values = ARGS.unpack(raw)
        return cls(op, code, cookie, list(values))


#: RBX then XMM10..XMM15 as low/high qwords: the 0x68 bytes as thirteen little-endian u64s.
_QWORDS = struct.Struct("<13Q")
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_ZERO_XMM = (0,) * 16
#: Zeros that complete a short field list to FIELDS.
_PAD = tuple((0,) * (FIELDS - n) for n in range(FIELDS))


def to_registers(vp: Cpu, raw: bytes) -> None:
    """Load a 0x68-byte block into RBX and XMM10..XMM15 (shared registers)."""
    q = _QWORDS.unpack(raw)
    vp.rbx = q[0]
    xmm = vp.xmm
    xmm[10], xmm[11], xmm[12] = q[1] | q[2] << 64, q[3] | q[4] << 64, q[5] | q[6] << 64
    xmm[13], xmm[14], xmm[15] = q[7] | q[8] << 64, q[9] | q[10] << 64, q[11] | q[12] << 64


def from_registers(vp: Cpu) -> bytes:
    x = vp.xmm
    return _QWORDS.pack(
        vp.rbx,
        x[10] & _MASK64,
        x[10] >> 64,
        x[11] & _MASK64,
        x[11] >> 64,
        x[12] & _MASK64,
        x[12] >> 64,
        x[13] & _MASK64,
        x[13] >> 64,
        x[14] & _MASK64,
        x[14] >> 64,
        x[15] & _MASK64,
        x[15] >> 64,
    )


def load(vp: Cpu, args: SecureCallArgs) -> None:
    """``to_registers(vp, args.pack())`` without the bytes in between: the first qword is the
    reserved field (OperationType u8, pad u8, code u16, cookie u32), then the twelve fields."""
    f = args.fields
    if len(f) != FIELDS:
        f = [*f, *_PAD[len(f)]] if len(f) < FIELDS else f[:FIELDS]
    m = _MASK64
    vp.rbx = (args.op & 0xFF) | (args.code & 0xFFFF) << 16 | (args.cookie & 0xFFFF_FFFF) << 32
    xmm = vp.xmm
    xmm[10] = f[0] & m | (f[1] & m) << 64
    xmm[11] = f[2] & m | (f[3] & m) << 64
    xmm[12] = f[4] & m | (f[5] & m) << 64
    xmm[13] = f[6] & m | (f[7] & m) << 64
    xmm[14] = f[8] & m | (f[9] & m) << 64
    xmm[15] = f[10] & m | (f[11] & m) << 64


def capture(vp: Cpu) -> SecureCallArgs:
    """``SecureCallArgs.unpack(from_registers(vp))`` without the bytes in between: the block as
    the registers hold it now (ints: a later register write cannot change the capture).  The
    registers are 64 and 128 bits wide, so each is taken modulo its width."""
    m = _MASK64
    head = vp.rbx & m
    x = vp.xmm
    x10, x11, x12, x13, x14, x15 = x[10], x[11], x[12], x[13], x[14], x[15]
    return SecureCallArgs(
        head & 0xFF,
        (head >> 16) & 0xFFFF,
        head >> 32,
        [
            x10 & m,
            (x10 >> 64) & m,
            x11 & m,
            (x11 >> 64) & m,
            x12 & m,
            (x12 >> 64) & m,
            x13 & m,
            (x13 >> 64) & m,
            x14 & m,
            (x14 >> 64) & m,
            x15 & m,
            (x15 >> 64) & m,
        ],
    )


def clear_registers(vp: Cpu) -> None:
    """What the Secure Kernel does before returning: no VTL1 data in shared registers
    (vbs-internals §2.2 step 5, §2.5).  The argument registers are then reloaded with the reply."""
    # A register already zero needs no store (a load is cheaper than a store on the model's CPU).
    if vp.rax:
        vp.rax = 0
    if vp.rcx:
        vp.rcx = 0
    if vp.rdx:
        vp.rdx = 0
    if vp.rbx:
        vp.rbx = 0
    if vp.rbp:
        vp.rbp = 0
    if vp.rsi:
        vp.rsi = 0
    if vp.rdi:
        vp.rdi = 0
    if vp.r8:
        vp.r8 = 0
    if vp.r9:
        vp.r9 = 0
    if vp.r10:
        vp.r10 = 0
    if vp.r11:
        vp.r11 = 0
    if vp.r12:
        vp.r12 = 0
    if vp.r13:
        vp.r13 = 0
    if vp.r14:
        vp.r14 = 0
    if vp.r15:
        vp.r15 = 0
    vp.xmm[:] = _ZERO_XMM
