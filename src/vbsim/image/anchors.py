"""Code integrity's trust anchor and signing requirements as a kernel keeps them: bytes in its
own memory, read at each verification.

Real CI pins its roots in the binary: ci.dll and skci.dll carry Microsoft's root keys in their
data (vbs-internals §3.6: "SKCI does the cryptographic hash and signature check"; which roots
and in what form is not public [U]).  So in the model the *image's data* holds the anchor: NT's
copy sits in ci.dll's ``CiPolicy`` section after ``g_CiOptions`` (``vbsim.nt.drivers``; KDP makes
that section read-only where KDP runs), the Secure Kernel's in an SK data page of SKCI
(``vbsim.sk.services.hvci``), which VTL0 can never write.  The verifier reads the record through
its processor when it verifies and trusts exactly what it finds: a K0 write to NT's copy where
nothing protects it makes NT's CI trust another root, while SKCI, reading its own copy in VTL1,
does not.

**What is stored: the whole root certificate (DER), not a key hash.**  The model's chain
builder (``vbsim.image.chain``) finds a chain's top by matching the issuer *name* and verifying
the signature with the root's *key*, and checks the root's validity period and CA constraints:
all of that is in the certificate, ~0.8 KiB, which fits a page.  A public-key fingerprint alone
(the form a pinned root often takes) would need a chain builder that takes the root from the
signature's own certificate bag and compares its key hash; same security, more code, and the
attack surface is the same either way: whoever writes the record chooses the root.

Layout (the model's; the real CI globals are not public)::

    0x00 u32 AnchorSize      bytes of DER at 0x40 (0 or too large: no anchor, nothing verifies)
    0x04 u32 Reserved
    0x08 Requirement[SLOTS]  per image kind, {u32 EkuMask; u32 MinLevel; u32 Present; u32 0}
    0x40 u8  Anchor[AnchorSize]   the root certificate, DER

``EkuMask`` bits name the EKUs :mod:`vbsim.image.signing_level` knows (:data:`EKU_BITS`);
``MinLevel`` is a ``SE_SIGNING_LEVEL_*`` value.  A slot whose ``Present`` is 0 asks for nothing
beyond a signature that chains to the anchor (no EKU, any level).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vbsim.image.kinds import ImageKind
from vbsim.image.parse import ParsedImage
from vbsim.image.revocation import RevocationPolicy
from vbsim.image.signing_level import (
    EKU_CODE_SIGNING,
    EKU_ENCLAVE,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    SigningLevel,
    SigningRequirement,
    requirement_for,
)
from vbsim.image.trust import TrustStore
from vbsim.image.verify import Failure, VerificationResult, verify_image

#: Bytes of a record (one page: what each kernel gives it).
RECORD_SIZE = 0x1000
ANCHOR_SIZE_AT = 0x00
REQUIREMENTS_AT = 0x08
REQUIREMENT = struct.Struct("<IIII")  # EkuMask, MinLevel, Present, reserved
ANCHOR_AT = 0x40
MAX_ANCHOR = RECORD_SIZE - ANCHOR_AT
#: Requirement slots by image kind (model numbering).
SLOTS: dict[ImageKind, int] = {ImageKind.DRIVER: 0, ImageKind.TRUSTLET: 1}
#: EKU OID -> bit in ``EkuMask`` (model numbering).
EKU_BITS: dict[str, int] = {
    EKU_CODE_SIGNING: 1,
    EKU_WINDOWS_SYSTEM_COMPONENT: 2,
    EKU_IUM: 4,
    EKU_ENCLAVE: 8,
}
assert len(SLOTS) * REQUIREMENT.size <= ANCHOR_AT - REQUIREMENTS_AT


class Reader(Protocol):
    """Loads through the verifier's own translation (a ``Cpu`` has it)."""

    def read(self, va: int, length: int, /) -> bytes: ...


def encode(root_der: bytes, requirements: Mapping[ImageKind, SigningRequirement | None]) -> bytes:
    """The record for ``root_der`` and the per-kind ``requirements`` (loader time)."""
    if len(root_der) > MAX_ANCHOR:
        raise ValueError(f"anchor of {len(root_der)} bytes does not fit ({MAX_ANCHOR})")
    out = bytearray(RECORD_SIZE)
    struct.pack_into("<I", out, ANCHOR_SIZE_AT, len(root_der))
    for kind, requirement in requirements.items():
        at = REQUIREMENTS_AT + SLOTS[kind] * REQUIREMENT.size
        if requirement is None:
            continue
        unknown = requirement.ekus - EKU_BITS.keys()
        if unknown:
            raise ValueError(f"EKUs without a bit: {sorted(unknown)}")
        mask = sum(EKU_BITS[eku] for eku in requirement.ekus)
        REQUIREMENT.pack_into(out, at, mask, int(requirement.min_level), 1, 0)
    out[ANCHOR_AT : ANCHOR_AT + len(root_der)] = root_der
    return bytes(out)


def model_record(root_der: bytes, kinds: tuple[ImageKind, ...]) -> bytes:
    """The record a CI image ships with: ``root_der`` and the model's requirement for each of
    ``kinds`` (``vbsim.image.signing_level.REQUIREMENTS``)."""
    return encode(root_der, {kind: requirement_for(kind) for kind in kinds})


@dataclass(frozen=True)
class Anchor:
    """What a verifier read from its record just now."""

    #: None: the record holds no decodable certificate (nothing verifies).
    trust: TrustStore | None
    requirement: SigningRequirement
    #: Why ``trust`` is None, for the trace.
    problem: str = ""


#: What an empty slot asks for: a chain to the anchor, nothing more.
NOTHING_MORE = SigningRequirement(frozenset(), SigningLevel.UNCHECKED)


def _requirement(raw: bytes) -> SigningRequirement:
    mask, level, present, _ = REQUIREMENT.unpack(raw)
    if not present:
        return NOTHING_MORE
    ekus = frozenset(eku for eku, bit in EKU_BITS.items() if mask & bit)
    # The number as stored: a level no signer reaches (above 12) makes everything fail, as a
    # demand CI cannot meet should.  Mask bits without an EKU are ignored (model).
    return SigningRequirement(ekus, level)


def read(mem: Reader, va: int, kind: ImageKind) -> Anchor:
    """The anchor and ``kind``'s requirement as the record at ``va`` holds them now."""
    header = mem.read(va, ANCHOR_AT)
    size = struct.unpack_from("<I", header, ANCHOR_SIZE_AT)[0]
    at = REQUIREMENTS_AT + SLOTS[kind] * REQUIREMENT.size
    requirement = _requirement(header[at : at + REQUIREMENT.size])
    if not 0 < size <= MAX_ANCHOR:
        return Anchor(None, requirement, f"anchor size {size}")
    der = mem.read(va + ANCHOR_AT, size)
    try:
        trust = TrustStore.from_der(der)
    except ValueError as exc:
        return Anchor(None, requirement, f"anchor is not a certificate ({exc})")
    return Anchor(trust, requirement)


def verify(
    data: bytes,
    anchor: Anchor,
    *,
    revocation: RevocationPolicy | None = None,
    parsed: ParsedImage | None = None,
    at: dt.datetime | None = None,
) -> VerificationResult:
    """``verify_image`` against what the verifier read: its anchor and its requirement, at the
    time its own clock says (``at``; a kernel passes the time it keeps in its memory).  No
    decodable anchor: nothing chains to a trusted root (``untrusted-root``)."""
    if anchor.trust is None:
        return VerificationResult(Failure.UNTRUSTED_ROOT, f"no trust anchor: {anchor.problem}")
    return verify_image(
        data,
        anchor.trust,
        requirement=anchor.requirement,
        revocation=revocation,
        parsed=parsed,
        at=at,
    )
