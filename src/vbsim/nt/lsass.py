"""lsass.exe: the Local Security Authority as a VTL0 user process (vbs-internals §5.3, §6 A21/A22).

NT starts lsass at the end of phase 1 (:meth:`NtKernel.create_system_process`), after wininit has
started the boot trustlets.  It is an ordinary VTL0 ring-3 process: token SYSTEM (an administrator
with SeDebugPrivilege), *not* a protected process — RunAsPPL would make it one, but the policy has
no such switch yet, so an administrator with SeDebugPrivilege can open it, as on a default install.

lsass's own code (the guest routine ``lsass.main``, run at CPL3 in lsass's address space) logs on
one interactive user and keeps that logon session's credentials in its own user memory — guest
RAM bytes, never Python attributes (DESIGN.md "the one rule of execution").  The logon itself is
an input from outside the machine: the host (the user at winlogon, :mod:`vbsim.boot.logon`)
writes it as bytes into NT's logon buffer (:data:`LOGON_BUFFER`), the logon path copies it into
lsass's memory (:func:`deliver_logon`), and lsass learns user, domain and password only by
reading those bytes; no guest module holds the password.

- Credential Guard not running (``LsaCfgFlags`` 0 in the SYSTEM hive, VBS not running, or LsaIso
  not started): the user name, the NT OWF (MD4 of the UTF-16LE password, MS-NLMP §3.3.1 ``NTOWFv1``)
  and a Kerberos key (AES256-CTS-HMAC-SHA1-96 string-to-key, RFC 3962) in clear: what mimikatz
  ``sekurlsa::logonpasswords`` finds (attack K0/A0 "dump lsass").
- Credential Guard running: lsass hands the OWF and key to the LsaIso trustlet (VTL1 ring 3,
  :mod:`vbsim.ium.lsaiso`) in a PROTECT request over the model's ALPC
  (``NtAlpcSendWaitReceivePort`` to LsaIso's port), scrubs its request buffer, and keeps only the
  user name and the opaque blob LsaIso returns, tagged ``[LSA Isolated Data]`` (vbs-internals §5.3:
  "What mimikatz sees in lsass").  The blob is sealed with LsaIso's per-boot key inside VTL1; lsass
  never holds that key.  lsass can still ask LsaIso to *use* the credential (a RESPOND request,
  :func:`respond_message`): the A21 oracle.  If the PROTECT request fails, lsass keeps no secret
  at all (an isolated record with an empty secret area) rather than fall back to clear text.

The credential record (little-endian, :data:`RECORD_SIZE` bytes, at the VA that
:func:`credential_region` reports)::

    0x00  char[8]   magic  b"MSV1_0\\0\\1"
    0x08  u32       flags  bit 0: FLAG_ISOLATED (Credential Guard blob instead of secrets)
    0x0C  u32       logon id (low part of the LUID)
    0x10  wchar[32] user name, UTF-16LE, NUL-padded (64 bytes)
    0x50  wchar[16] domain, UTF-16LE, NUL-padded (32 bytes)
    0x70  u32       length of the secret area that follows
    0x74  u32       reserved
    0x78  secret area, 0x88 bytes:
          clear:    NT OWF (16 bytes) then the AES-256 Kerberos key (32 bytes)
          isolated: b"[LSA Isolated Data]\\0" (20 bytes) then LsaIso's blob (<= 116 bytes)
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vbsim.hw.code import guest_code
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.layouts import LSAISO_OP_PROTECT, LSAISO_OP_RESPOND, LSAISO_USER_LEN
from vbsim.nt.process import Protection, Token
from vbsim.nt.syscalls import PAGE_READWRITE, syscall
from vbsim.ntstatus import BugCheck, NtStatus

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel
    from vbsim.nt.process import Process

PROCESS_NAME = "lsass.exe"

LSAISO_NAME = "LsaIso.exe"

RECORD_MAGIC = b"MSV1_0\x00\x01"
FLAG_ISOLATED = 1
USER_OFFSET, USER_SIZE = 0x10, 64
DOMAIN_OFFSET, DOMAIN_SIZE = 0x50, 32
SECRET_LENGTH_OFFSET = 0x70
SECRET_OFFSET = 0x78
SECRET_SIZE = 0x88
RECORD_SIZE = SECRET_OFFSET + SECRET_SIZE
OWF_SIZE = 16
KERBEROS_KEY_SIZE = 32
#: The label mimikatz prints for Credential Guard blobs (vbs-internals §5.3 [V ipurple-CG]).
ISOLATED_TAG = b"[LSA Isolated Data]\x00"
MAX_BLOB = SECRET_SIZE - len(ISOLATED_TAG)

#: lsass's working memory: one page for the record, then the ALPC request and reply pages.
HEAP_PAGES = 3
_REQUEST_OFFSET = PAGE_SIZE
_REPLY_OFFSET = 2 * PAGE_SIZE

_HEADER = struct.Struct("<8sII")
_LENGTHS = struct.Struct("<II")


class Principal(Protocol):
    """Who logged on: what the record and the Kerberos salt need of a logon."""

    @property
    def user(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def logon_id(self) -> int: ...


@dataclass(frozen=True)
class LogonMessage:
    """A logon message as lsass decoded it from its own memory (values in lsass's registers
    and stack while it derives its keys; never kept)."""

    user: str
    domain: str
    password: str
    logon_id: int


@dataclass(frozen=True)
class LsassInfo:
    """Where lsass put its credential record (what symbols tell a debugger; not a secret)."""

    pid: int
    va: int
    length: int
    isolated: bool


# -- MD4 (RFC 1320), pure Python: OpenSSL 3 no longer offers it through hashlib ------------------
def _rotl(value: int, shift: int) -> int:
    value &= 0xFFFF_FFFF
    return ((value << shift) | (value >> (32 - shift))) & 0xFFFF_FFFF


def md4(data: bytes) -> bytes:
    """MD4 message digest (RFC 1320 §3).  Pure Python so the model does not depend on the
    platform's OpenSSL legacy provider (``hashlib.new("md4")`` fails on OpenSSL 3 defaults)."""
    length_bits = (len(data) * 8) & 0xFFFF_FFFF_FFFF_FFFF
    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + length_bits.to_bytes(8, "little")
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for block in range(0, len(message), 64):
        x = struct.unpack("<16I", message[block : block + 64])
        aa, bb, cc, dd = a, b, c, d
        # Round 1: F(x, y, z) = xy | ~x z
        for i in range(16):
            shift = (3, 7, 11, 19)[i % 4]
            f = (b & c) | (~b & d)
            a, b, c, d = d, _rotl(a + f + x[i], shift), b, c
        # Round 2: G(x, y, z) = xy | xz | yz, constant 0x5A827999
        for i in range(16):
            k = (i % 4) * 4 + i // 4
            shift = (3, 5, 9, 13)[i % 4]
            g = (b & c) | (b & d) | (c & d)
            a, b, c, d = d, _rotl(a + g + x[k] + 0x5A827999, shift), b, c
        # Round 3: H(x, y, z) = x ^ y ^ z, constant 0x6ED9EBA1
        for i in range(16):
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            shift = (3, 9, 11, 15)[i % 4]
            h = b ^ c ^ d
            a, b, c, d = d, _rotl(a + h + x[k] + 0x6ED9EBA1, shift), b, c
        a = (a + aa) & 0xFFFF_FFFF
        b = (b + bb) & 0xFFFF_FFFF
        c = (c + cc) & 0xFFFF_FFFF
        d = (d + dd) & 0xFFFF_FFFF
    return struct.pack("<4I", a, b, c, d)


def nt_owf(password: str) -> bytes:
    """NTOWFv1(password) = MD4(UNICODE(password)) (MS-NLMP §3.3.1)."""
    return md4(password.encode("utf-16-le"))


# -- Kerberos AES256-CTS-HMAC-SHA1-96 string-to-key (RFC 3962 §4, RFC 3961 §5.1) --------------
#: n-fold("kerberos", 128) — RFC 3961 §5.1, and its appendix A.1 test vector.
_KERBEROS_NFOLD = bytes.fromhex("6b65726265726f737b9b5b2b93132b93")
KERBEROS_ITERATIONS = 4096  # RFC 3962 §4 default iteration count


@functools.lru_cache(maxsize=64)  # a pure KDF of 4,096 rounds: the host need not redo it per boot
def kerberos_aes256_key(password: str, salt: str, iterations: int = KERBEROS_ITERATIONS) -> bytes:
    """tkey = PBKDF2-HMAC-SHA1(password, salt, iterations, 32); key = DK(tkey, "kerberos"),
    where DK's DR step encrypts n-fold("kerberos") with AES-256 and chains (RFC 3961 §5.1)."""
    tkey = hashlib.pbkdf2_hmac(
        "sha1", password.encode("utf-8"), salt.encode("utf-8"), iterations, dklen=32
    )
    encryptor = Cipher(algorithms.AES(tkey), modes.ECB()).encryptor()
    first = encryptor.update(_KERBEROS_NFOLD)
    second = encryptor.update(first)
    return (first + second)[:KERBEROS_KEY_SIZE]


def kerberos_salt(logon: Principal) -> str:
    """The default salt: upper-case realm followed by the principal name (RFC 4120 §4)."""
    return logon.domain.upper() + logon.user


# -- the LSA_ISO_RPC_SERVER messages (vbsim.ium.lsaiso's protocol) -------------------------------
def protect_message(user: str, owf: bytes, kerberos_key: bytes) -> bytes:
    """PROTECT: op, user (NUL-padded), NT OWF, Kerberos key → LsaIso answers with a blob."""
    name = user.encode("utf-8")[:LSAISO_USER_LEN].ljust(LSAISO_USER_LEN, b"\x00")
    return struct.pack("<I", LSAISO_OP_PROTECT) + name + owf + kerberos_key


def respond_message(blob: bytes, challenge: bytes) -> bytes:
    """RESPOND: op, blob length, blob, 8-byte challenge → an NTLMv1-style response (A21)."""
    return struct.pack("<II", LSAISO_OP_RESPOND, len(blob)) + blob + challenge[:8].ljust(8, b"\0")


def isolated_blob(secret_area: bytes) -> bytes | None:
    """LsaIso's blob inside an isolated record's secret area (without the mimikatz tag)."""
    if not secret_area.startswith(ISOLATED_TAG):
        return None
    return secret_area[len(ISOLATED_TAG) :]


# -- the record ----------------------------------------------------------------------------------
def _wide(text: str, size: int) -> bytes:
    raw = text.encode("utf-16-le")[: size - 2]
    return raw + bytes(size - len(raw))


def build_record(logon: Principal, secret_area: bytes, isolated: bool) -> bytes:
    if len(secret_area) > SECRET_SIZE:
        raise ValueError(f"secret area of {len(secret_area)} bytes exceeds {SECRET_SIZE}")
    record = bytearray(RECORD_SIZE)
    _HEADER.pack_into(
        record, 0, RECORD_MAGIC, FLAG_ISOLATED if isolated else 0, logon.logon_id & 0xFFFF_FFFF
    )
    record[USER_OFFSET : USER_OFFSET + USER_SIZE] = _wide(logon.user, USER_SIZE)
    record[DOMAIN_OFFSET : DOMAIN_OFFSET + DOMAIN_SIZE] = _wide(logon.domain, DOMAIN_SIZE)
    _LENGTHS.pack_into(record, SECRET_LENGTH_OFFSET, len(secret_area), 0)
    record[SECRET_OFFSET : SECRET_OFFSET + len(secret_area)] = secret_area
    return bytes(record)


@dataclass(frozen=True)
class ParsedRecord:
    """A credential record as a reader of lsass's memory decodes it (mimikatz's view)."""

    isolated: bool
    logon_id: int
    user: str
    domain: str
    nt_owf: bytes | None
    kerberos_key: bytes | None
    blob: bytes | None


def parse_record(data: bytes) -> ParsedRecord | None:
    """Decode bytes read from lsass; None if they are not a credential record."""
    if len(data) < RECORD_SIZE:
        return None
    magic, flags, logon_id = _HEADER.unpack_from(data, 0)
    if magic != RECORD_MAGIC:
        return None
    length, _ = _LENGTHS.unpack_from(data, SECRET_LENGTH_OFFSET)
    if length > SECRET_SIZE:
        return None

    def wide(offset: int, size: int) -> str:
        return data[offset : offset + size].decode("utf-16-le", "replace").rstrip("\x00")

    secret = data[SECRET_OFFSET : SECRET_OFFSET + length]
    isolated = bool(flags & FLAG_ISOLATED)
    return ParsedRecord(
        isolated=isolated,
        logon_id=logon_id,
        user=wide(USER_OFFSET, USER_SIZE),
        domain=wide(DOMAIN_OFFSET, DOMAIN_SIZE),
        nt_owf=None if isolated else secret[:OWF_SIZE],
        kerberos_key=None if isolated else secret[OWF_SIZE : OWF_SIZE + KERBEROS_KEY_SIZE],
        blob=secret if isolated else None,
    )


# -- lsass's own code (VTL0 ring 3) --------------------------------------------------------------
def _call_lsaiso(vp: Cpu, port: int, heap: int, message: bytes) -> bytes | None:
    """One ALPC request to LsaIso from lsass's heap; the request buffer is scrubbed after."""
    request, reply = heap + _REQUEST_OFFSET, heap + _REPLY_OFFSET
    vp.write(request, message)
    status = syscall(vp, "NtAlpcSendWaitReceivePort", port, request, len(message), reply)
    vp.write(request, bytes(len(message)))  # SecureZeroMemory: no plaintext left behind
    if status != NtStatus.SUCCESS:
        return None
    length = vp.read_u64(reply)
    if not 0 < length <= PAGE_SIZE - 8:
        return None
    answer = vp.read(reply + 8, length)
    vp.write(reply, bytes(8 + length))
    return answer


#: Where NT puts the logon message in lsass's first page (its stack page; lsass.main uses the
#: first bytes for its own out-parameters and a hook may use 0x800: the model's layout).
LOGON_MESSAGE_OFFSET = 0xC00
#: [model] The logon message (MSV1_0_INTERACTIVE_LOGON-like): u64 LogonId, then three counted
#: UTF-16LE strings (u16 byte length, then the bytes): user, domain, password.  The host side
#: encodes it (``vbsim.boot.logon.encode_logon``); lsass decodes it from its memory.
MAX_LOGON_STRING = 256
#: [model] NT's logon buffer: where the logon path leaves the message winlogon's LsaLogonUser
#: sends (Windows carries it in an ALPC message from winlogon to lsass; the model has no
#: winlogon process, so the message waits in NT's .data).  The host writes it at boot (the user
#: typing at winlogon, ``vbsim.boot.logon.type_logon``); :func:`deliver_logon` consumes it.
LOGON_BUFFER = "LsapLogonMessage"
LOGON_BUFFER_SIZE = 8 + 3 * (2 + MAX_LOGON_STRING)


def register(nt: NtKernel) -> None:
    """Loader time: the logon buffer in NT's .data (zero: nobody has logged on yet)."""
    nt.variable(LOGON_BUFFER, LOGON_BUFFER_SIZE)


def _message_length(vp: Cpu, va: int) -> int:
    """The length of the logon message at ``va`` as its counts say, read now (0: none)."""
    at = va + 8
    for _ in range(3):
        length = int.from_bytes(vp.read(at, 2), "little")
        if length > MAX_LOGON_STRING or length % 2:
            return 0
        at += 2 + length
    return at - va


def _decode_logon(vp: Cpu, va: int) -> tuple[LogonMessage, int] | None:
    """lsass reads the message from its own memory: (logon, message length)."""
    logon_id = vp.read_u64(va)
    at = va + 8
    fields: list[str] = []
    for _ in range(3):
        length = int.from_bytes(vp.read(at, 2), "little")
        if length > MAX_LOGON_STRING or length % 2:
            return None
        fields.append(vp.read(at + 2, length).decode("utf-16-le", "replace"))
        at += 2 + length
    return LogonMessage(fields[0], fields[1], fields[2], logon_id), at - va


def deliver_logon(nt: NtKernel, vp: Cpu, process: Process) -> int:
    """LsaLogonUser's message reaching lsass (winlogon → ALPC → lsass): NT copies the bytes of
    its logon buffer (:data:`LOGON_BUFFER`, as RAM holds it now) into lsass's stack page
    through its direct map and clears the buffer (the message is consumed); returns the user VA
    lsass finds them at, 0 when no logon is waiting or lsass has no stack page."""
    from vbsim.guest.address_space import DIRECT_MAP
    from vbsim.nt import vad

    buffer = nt.variable(LOGON_BUFFER, LOGON_BUFFER_SIZE).va
    length = _message_length(vp, buffer)
    if length <= 8 + 3 * 2:  # no user, domain or password: nobody logged on
        return 0
    # lsass's stack page is its first allocation: the lowest VAD of its tree, read in RAM now.
    stack = next(vad.walk(vp, process.eprocess), 0)
    if not stack:
        return 0
    va = (vad.starting_vpn(vp, stack) << 12) + LOGON_MESSAGE_OFFSET
    leaf = nt.address_space(vp, process).lookup(va)
    if leaf is None:
        return 0
    vp.write(DIRECT_MAP + (leaf & 0x000F_FFFF_FFFF_F000) + (va & 0xFFF), vp.read(buffer, length))
    vp.write(buffer, bytes(LOGON_BUFFER_SIZE))  # the clear text leaves NT's memory with it
    return va


@guest_code("lsass.main")
def _lsass_main(vp: Cpu, scratch: int, message: int, lsaiso_port: int) -> int:
    """lsass at CPL3: read the logon message at ``message`` (bytes in its own memory), allocate
    its heap, log the user on, store the record, wipe the cleartext; return the record's VA (0
    on failure).  ``scratch`` is a page of lsass's own (its initial stack); a non-zero
    ``lsaiso_port`` means Credential Guard runs and LsaIso listens there."""
    decoded = _decode_logon(vp, message) if message else None
    if decoded is None:
        return 0
    logon, length = decoded
    status = syscall(vp, "NtAllocateVirtualMemory", scratch, HEAP_PAGES * PAGE_SIZE, PAGE_READWRITE)
    if status != NtStatus.SUCCESS:
        return 0
    heap = vp.read_u64(scratch)
    owf = nt_owf(logon.password)
    key = kerberos_aes256_key(logon.password, kerberos_salt(logon))
    vp.write(message, bytes(length))  # the cleartext does not outlive the logon
    if lsaiso_port:
        # Credential Guard: the secrets go to LsaIso; lsass keeps the blob it gets back.
        blob = _call_lsaiso(vp, lsaiso_port, heap, protect_message(logon.user, owf, key))
        secret_area = ISOLATED_TAG + blob if blob and len(blob) <= MAX_BLOB else b""
        vp.write(heap, build_record(logon, secret_area, isolated=True))
    else:
        vp.write(heap, build_record(logon, owf + key, isolated=False))
    return heap


def lsaiso_port(nt: NtKernel, vp: Cpu) -> int:
    """LsaIso's port (the model's ALPC port is the trustlet's PID) as NT's .data holds it now
    (``AlpcLsaIsoPort``, written when wininit started LsaIso), or 0 if it is not running."""
    from vbsim.nt.secure_process import LSAISO_PORT

    return vp.read_u64(nt.variable(LSAISO_PORT).va)


def credential_guard_active(nt: NtKernel, vp: Cpu) -> bool:
    """Credential Guard runs when the SYSTEM hive in RAM enables it (``LsaCfgFlags`` 1 or 2) and
    LsaIso's port exists (wininit started LsaIso, which it does only with VBS running).  Both
    are read now, from NT's memory."""
    from vbsim.nt import registry

    return bool(lsaiso_port(nt, vp)) and registry.credential_guard_configured(nt, vp)


def start(nt: NtKernel, vp: Cpu) -> LsassInfo:
    """Create lsass.exe (end of NT phase 1) and run its logon code at CPL3 on the logon waiting
    in NT's logon buffer (the host typed it: :mod:`vbsim.boot.logon`).

    A failure to bring lsass up is fatal, as on Windows (CRITICAL_PROCESS_DIED)."""
    # RunAsPPL would give Protection.PPL (PsProtectedSignerLsa-Light); the policy has no such
    # switch yet, so D2 and the tests set the byte as RunAsPPL's boot would.
    process = nt.create_process(
        vp,
        PROCESS_NAME,
        Token("SYSTEM", admin=True, debug_privilege=True, tcb=True),
        Protection.NONE,
    )
    # LsaIso's port admits this process (the LSA's SID): the owner NT checks, in its .data.
    from vbsim.nt.secure_process import LSAISO_PORT_OWNER

    vp.write_u64(nt.variable(LSAISO_PORT_OWNER).va, process.pid)
    stack = nt.allocate(vp, process, PAGE_SIZE)
    entry = nt.map_code(vp, process, ["lsass.main"])["lsass.main"]
    port = lsaiso_port(nt, vp) if credential_guard_active(nt, vp) else 0
    message = deliver_logon(nt, vp, process)
    run = nt.run_user(vp, process, entry, stack.base, message, port)
    heap = run.returned if run.terminated is None and isinstance(run.returned, int) else 0
    if not heap:
        from vbsim.nt.kernel import bugcheck

        bugcheck(vp, BugCheck.CRITICAL_PROCESS_DIED, process.pid)
    info = LsassInfo(process.pid, heap, RECORD_SIZE, bool(port))
    nt.lsass = info
    if vp.tracing:
        vp.emit(
            "nt",
            "lsass",
            "credential-guard" if port else "credentials-in-vtl0",
            pid=process.pid,
            lsaiso=port or None,
        )
    return info


def credential_region(nt: NtKernel) -> tuple[int, int, int]:
    """(pid, va, length) of lsass's credential record: where an attacker dumping lsass looks."""
    info = nt.lsass
    if info is None:
        raise LookupError("lsass is not running")
    return info.pid, info.va, info.length
