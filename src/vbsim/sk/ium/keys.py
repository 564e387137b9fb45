"""VSM keys (vbs-internals §1.1 row 7, §4.4): the identity key (IDK) and the local key (LKey)
that winload provisions, and a per-boot session key the SK draws at start.

They live in a Secure Kernel data page — guest RAM, VTL1-only after phase 1 — and the SK reads
them through its own VP whenever it derives a trustlet key.  Derivation binds the trustlet's
identity (ID and SVN, vbs-internals §3.3): HMAC-SHA256(master, label | ID | SVN).  The real key
hierarchy is [U]; this one has the properties the model needs (per-trustlet, per-boot or stable).
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

from vbsim.ium_abi import IDK, LOCAL, PER_BOOT

__all__ = ["IDK", "LOCAL", "PER_BOOT"]
_NAMES = MappingProxyType({IDK: "idk", LOCAL: "local", PER_BOOT: "per-boot"})


def provision(sk: SecureKernel) -> None:
    """Loader time: write the three 32-byte master keys into an SK data page."""
    va, gpa = sk.builder().alloc_data()
    assert sk.loader is not None
    sk.loader.write(gpa, sk.loader.entropy(96))  # the loader writes the image
    sk.keys_va = va


def master(sk: SecureKernel, vp: Cpu, which: int) -> bytes:
    return vp.read(sk.keys_va + 32 * which, 32)


def derive(
    sk: SecureKernel, vp: Cpu, which: int, trustlet_id: int, svn: int, label: bytes
) -> bytes:
    message = (
        label
        + b"|"
        + _NAMES[which].encode()
        + trustlet_id.to_bytes(8, "little")
        + svn.to_bytes(4, "little")
    )
    return hmac.digest(master(sk, vp, which), message, hashlib.sha256)
