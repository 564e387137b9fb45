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

from vbsim.hw.vp import VirtualProcessor

ARGS = struct.Struct("<BxHI12Q")
assert ARGS.size == 0x68
FIELDS = 12

OP_INVOKE_SERVICE = 2  # vbs-internals §2.2 "Operation types" [V]
OP_FLUSH_TB = 3  # [V]
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
        values = [(v & 0xFFFF_FFFF_FFFF_FFFF) for v in (self.fields + [0] * FIELDS)[:FIELDS]]
        return ARGS.pack(self.op & 0xFF, self.code & 0xFFFF, self.cookie & 0xFFFF_FFFF, *values)

    @classmethod
    def unpack(cls, raw: bytes) -> SecureCallArgs:
        op, code, cookie, *values = ARGS.unpack(raw)
        return cls(op, code, cookie, list(values))


def to_registers(vp: VirtualProcessor, raw: bytes) -> None:
    """Load a 0x68-byte block into RBX and XMM10..XMM15 (shared registers)."""
    vp.rbx = int.from_bytes(raw[:8], "little")
    for i in range(6):
        vp.xmm[10 + i] = int.from_bytes(raw[8 + 16 * i : 24 + 16 * i], "little")


def from_registers(vp: VirtualProcessor) -> bytes:
    return vp.rbx.to_bytes(8, "little") + b"".join(
        vp.xmm[10 + i].to_bytes(16, "little") for i in range(6)
    )


def clear_registers(vp: VirtualProcessor) -> None:
    """What the Secure Kernel does before returning: no VTL1 data in shared registers
    (vbs-internals §2.2 step 5, §2.5).  The argument registers are then reloaded with the reply."""
    for name in (
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
    ):
        setattr(vp, name, 0)
    for i in range(16):
        vp.xmm[i] = 0
