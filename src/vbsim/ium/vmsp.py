"""vmsp.exe — a vTPM-like trustlet (ID 2, vbs-internals §3.2): seals data to its identity.

Messages (each op u32, slot u32, then data; ``vbsim trustlet list`` shows them): SEAL (op 1, slot,
data) → stores the data in secure storage bound to the trustlet ID and returns a sealed copy
(EncryptData with the local key); UNSEAL (op 2, slot unused, sealed blob) → the data, only inside
the same trustlet identity; PUBLISH (op 3, mailbox slot 0-7, data) → posts data to a mailbox.
"""

from __future__ import annotations

from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.ium import iumbase

OP_SEAL, OP_UNSEAL, OP_PUBLISH = 1, 2, 3


@guest_code("vmsp.main")
def main(vp: Cpu, message: int, length: int, reply: int) -> int:
    if length < 8:
        return 0
    op, slot = vp.read_u32(message), vp.read_u32(message + 4)
    data = vp.read(message + 8, min(length - 8, 1024))
    try:
        if op == OP_SEAL:
            iumbase.secure_storage_put(vp, slot, data)
            sealed = iumbase.encrypt_data(vp, data, iumbase.LOCAL)
            vp.write(reply, sealed)
            return len(sealed)
        if op == OP_UNSEAL:
            plain = iumbase.decrypt_data(vp, data, iumbase.LOCAL)
            vp.write(reply, plain)
            return len(plain)
        if op == OP_PUBLISH:
            iumbase.post_mailbox(vp, slot & 7, data)
            return 0
    except iumbase.IumError as error:
        vp.write(reply, error.status.to_bytes(4, "little"))
        return 4
    return 0
