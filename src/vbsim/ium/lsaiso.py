"""LsaIso.exe — the isolated LSA (trustlet ID 1) behind Credential Guard (vbs-internals §5.3).

It keeps each logon's NT OWF and Kerberos key in its own private memory (VTL1 RAM) and gives lsass
only an opaque "[LSA Isolated Data]" blob, encrypted to LsaIso's identity with the per-boot key.
lsass can ask it to *use* a credential — compute an NTLM response to a challenge — which is the
oracle Pass-the-Challenge abuses (A21): Credential Guard protects storage, not use.

Messages (the model's stand-in for the LSA_ISO_RPC_SERVER ALPC protocol):
- PROTECT: op u32 = 1, user (32 bytes, NUL-padded), NT OWF (16), Kerberos key (32) → blob
- RESPOND: op u32 = 2, blob length u32, blob, challenge (8) → NTLMv1-style response (24)
"""

from __future__ import annotations

import hashlib
import hmac

from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.ium import iumbase
from vbsim.ium_abi import HEAP_VA

OP_PROTECT, OP_RESPOND = 1, 2
USER_LEN, OWF_LEN, KERB_LEN = 32, 16, 32
RECORD = USER_LEN + OWF_LEN + KERB_LEN
BLOB_MAGIC = b"LSAISO\x01\x00"
#: Credential table in LsaIso's private heap: count u32 at +0, records from +16.
TABLE_VA = HEAP_VA + 0xC00
MAX_RECORDS = (0x1000 - 0xC00 - 16) // RECORD


def ntlm_response(owf: bytes, challenge: bytes) -> bytes:
    """An NTLMv1-shaped 24-byte response: the OWF keys three MACs of the challenge (the model
    uses HMAC-MD5 instead of DES; what matters is that only the OWF holder can compute it)."""
    return b"".join(
        hmac.new(owf + bytes([i]), challenge, hashlib.md5).digest()[:8] for i in range(3)
    )


def _store(vp: Cpu, record: bytes) -> int:
    count = vp.read_u32(TABLE_VA)
    if count >= MAX_RECORDS:
        return -1
    vp.write(TABLE_VA + 16 + count * RECORD, record)
    vp.write_u32(TABLE_VA, count + 1)
    return count


@guest_code("lsaiso.main")
def main(vp: Cpu, message: int, length: int, reply: int) -> int:
    """One request: runs at VTL1 CPL3 in LsaIso's address space; returns the reply length."""
    if length < 4:
        return 0
    op = vp.read_u32(message)
    if op == OP_PROTECT and length >= 4 + RECORD:
        record = vp.read(message + 4, RECORD)
        index = _store(vp, record)
        if index < 0:
            return 0
        blob = BLOB_MAGIC + iumbase.encrypt_data(
            vp, index.to_bytes(4, "little") + record[:USER_LEN], iumbase.PER_BOOT
        )
        vp.write(reply, blob)
        return len(blob)
    if op == OP_RESPOND and length >= 8:
        blob_length = vp.read_u32(message + 4)
        if not 0 < blob_length <= 512 or length < 8 + blob_length + 8:
            return 0
        blob = vp.read(message + 8, blob_length)
        challenge = vp.read(message + 8 + blob_length, 8)
        if not blob.startswith(BLOB_MAGIC):
            return 0
        try:
            inner = iumbase.decrypt_data(vp, blob[len(BLOB_MAGIC) :], iumbase.PER_BOOT)
        except iumbase.IumError:
            return 0
        index = int.from_bytes(inner[:4], "little")
        if index >= vp.read_u32(TABLE_VA):
            return 0
        owf = vp.read(TABLE_VA + 16 + index * RECORD + USER_LEN, OWF_LEN)
        response = ntlm_response(owf, challenge)
        vp.write(reply, response)
        return len(response)
    return 0
