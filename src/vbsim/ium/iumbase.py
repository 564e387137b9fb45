"""``iumbase.dll`` for trustlet code (vbs-internals §4.3): functions over secure system calls.

Trustlet routines run on the VP at VTL1 CPL3 and call these; every one of them is a real
``syscall`` into the Secure Kernel with the secure bit (bit 27) set and arguments that point into
the trustlet's own memory.  Scratch buffers live in the trustlet's heap page (``HEAP_VA``).
"""

from __future__ import annotations

from vbsim.hw.cpu import Cpu
from vbsim.ium_abi import (
    HEAP_VA,
    LOCAL,
    NT_NUMBERS,
    OP_DECRYPT,
    OP_ENCRYPT,
    PER_BOOT,
    SECURE_NUMBERS,
)
from vbsim.ntstatus import NtStatus

__all__ = ["LOCAL", "PER_BOOT", "IumError"]

_REQUEST = HEAP_VA  # 48-byte crypto request
_INPUT = HEAP_VA + 0x100
_OUTPUT = HEAP_VA + 0x900
_MAX = 0x700


class IumError(Exception):
    """A secure service failed; ``status`` is its NTSTATUS (trustlet-level error, caught by the
    trustlet's own code)."""

    def __init__(self, service: str, status: int) -> None:
        super().__init__(f"{service} failed: {NtStatus.name_of(status)}")
        self.status = status


def secure_syscall(vp: Cpu, name: str, *args: int) -> int:
    """The iumdll stub: RAX = 0x0800_0000 | index, R10/RDX/R8/R9 = arguments."""
    vp.rax = SECURE_NUMBERS[name]
    vp.r10, vp.rdx, vp.r8, vp.r9 = [*args, 0, 0, 0, 0][:4]
    vp.syscall()
    return vp.rax


def nt_syscall(vp: Cpu, name: str, *args: int) -> int:
    """An ordinary ntdll system call from IUM (goes through the SK's IUM filter)."""
    vp.rax = NT_NUMBERS[name]
    vp.r10, vp.rdx, vp.r8, vp.r9 = [*args, 0, 0, 0, 0][:4]
    vp.syscall()
    return vp.rax


def _check(service: str, status: int) -> None:
    if status != NtStatus.SUCCESS:
        raise IumError(service, status)


def get_secure_identity_key(vp: Cpu, signing: bool = False) -> bytes:
    _check("IumGetIdk", secure_syscall(vp, "IumGetIdk", int(signing), _OUTPUT, 32))
    return vp.read(_OUTPUT, 32)


def _crypto(vp: Cpu, op: int, key: int, data: bytes) -> bytes:
    if len(data) > _MAX - 28:
        raise IumError("IumCrypto", int(NtStatus.BUFFER_TOO_SMALL))
    vp.write(_INPUT, data)
    request = (
        op.to_bytes(4, "little")
        + key.to_bytes(4, "little")
        + _INPUT.to_bytes(8, "little")
        + len(data).to_bytes(8, "little")
        + _OUTPUT.to_bytes(8, "little")
        + _MAX.to_bytes(8, "little")
        + bytes(8)
    )
    vp.write(_REQUEST, request)
    _check("IumCrypto", secure_syscall(vp, "IumCrypto", _REQUEST))
    length = vp.read_u64(_REQUEST + 40)
    return vp.read(_OUTPUT, length)


def encrypt_data(vp: Cpu, data: bytes, key: int = LOCAL) -> bytes:
    """EncryptData: sealed to this trustlet's identity with the local or per-boot key."""
    return _crypto(vp, OP_ENCRYPT, key, data)


def decrypt_data(vp: Cpu, blob: bytes, key: int = LOCAL) -> bytes:
    return _crypto(vp, OP_DECRYPT, key, blob)


def post_mailbox(vp: Cpu, slot: int, data: bytes) -> None:
    vp.write(_INPUT, data)
    _check("IumPostMailbox", secure_syscall(vp, "IumPostMailbox", slot, _INPUT, len(data)))


def create_secure_section(vp: Cpu, size: int) -> tuple[int, int]:
    """CreateSecureSection: (VA in this trustlet, section index VTL0 uses to find it)."""
    _check(
        "IumCreateSecureSection",
        secure_syscall(vp, "IumCreateSecureSection", size, _OUTPUT, _OUTPUT + 8),
    )
    return vp.read_u64(_OUTPUT), vp.read_u64(_OUTPUT + 8)


def secure_storage_put(vp: Cpu, key: int, data: bytes) -> None:
    vp.write(_INPUT, data)
    _check("IumSecureStoragePut", secure_syscall(vp, "IumSecureStoragePut", key, _INPUT, len(data)))


def secure_storage_get(vp: Cpu, key: int) -> bytes:
    _check("IumSecureStorageGet", secure_syscall(vp, "IumSecureStorageGet", key, _OUTPUT, _MAX))
    # The SK returns the data; its length is implied by the stored record: read up to _MAX and let
    # callers frame their own records (the real API returns a size, which the model omits).
    return vp.read(_OUTPUT, _MAX)
