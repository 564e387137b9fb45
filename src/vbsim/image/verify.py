"""Verify an image's Authenticode signatures and report exactly which check failed.

Each signature is checked in this order (its first failure is its verdict): the PKCS#7 decodes
-> the image digest matches the signed SpcIndirectDataContent -> the signed messageDigest
matches that content -> the signer certificate is present -> its signature over the signed
attributes verifies -> timestamps (countersignatures) verify, setting the validity time -> the
chain reaches a trusted root and is valid at that time -> the effective EKUs and signing level
meet the requirement.  The chain is built and reported even when an earlier check failed (so a
digest mismatch still says whether the signer chains to a trusted root).

An image may carry several signatures: every ``WIN_CERTIFICATE`` entry of the certificate table
(UEFI accepts an image when any entry verifies) and, inside each, nested signatures
(``szOID_NESTED_SIGNATURE``; dual-signed files have a SHA-1 primary and a SHA-256 nested one).
All are verified and reported; the image is valid when one of them is, the first valid one in
file order deciding (the primary when it is valid, as for WinVerifyTrust).  SHA-1 signatures
verify but are marked weak.  Certificates that cannot be decoded are skipped and reported.

Separate from the Authenticode verdict are two *findings* about bytes no signature covers: the
PE checksum (excluded from the digest) and the padding after each PKCS#7.  signtool and
osslsigncode report them without failing the signature.  The model's loaders are stricter
(``strict=True``, the default): Windows checks the checksum of boot and kernel-mode images
[U], and padding beyond 7 zero bytes is refused in the spirit of Windows' opt-in
``EnableCertPaddingCheck`` [U]; the certificate table must also be the last thing in the file.

What a signature covers: the image bytes the digest includes and the signed attributes.  It
does not cover the checksum, the certificate table framing and padding, other entries, or its
own unauthenticated attributes (nested signatures, countersignatures): those can change while
the signature still verifies, so they are verified on their own or reported as findings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from vbsim.image.authenticode import (
    CertificateTableError,
    WinCertificate,
    authenticode_digest,
    read_certificate_entries,
)
from vbsim.image.chain import (
    CertificateInfo,
    ChainError,
    LoadedCertificate,
    build_chain,
    check_chain,
    effective_ekus,
    load_certificate,
    signature_valid,
)
from vbsim.image.checksum import pe_checksum
from vbsim.image.errors import ImageFormatError
from vbsim.image.parse import ParsedImage, parse_image
from vbsim.image.pkcs7 import DecodedSignature, MalformedSignature, decode_signed_data
from vbsim.image.pkcs7 import UnsupportedAlgorithm as UnsupportedSignatureAlgorithm
from vbsim.image.revocation import RevocationPolicy, RevocationVerdict, check_revocation
from vbsim.image.signing_level import SigningLevel, SigningRequirement, level_for
from vbsim.image.spc import SPC_INDIRECT_DATA_OID
from vbsim.image.timestamp import PKCS9, RFC3161, Timestamp, verify_timestamp
from vbsim.image.trust import TrustStore

#: wincrypt.h szOID_KP_LIFETIME_SIGNING: the signature expires with the certificate, whatever
#: a timestamp says.
EKU_LIFETIME_SIGNING = "1.3.6.1.4.1.311.10.3.13"
#: Signatures verified per image at most (entries and nested ones; real files carry 1-3).
MAX_SIGNATURES = 16
_MAX_NESTING = 2


class Failure(StrEnum):
    """Which check failed (values are stable names for traces)."""

    MALFORMED_IMAGE = "malformed-image"
    NO_SIGNATURE = "no-signature"
    MALFORMED_CERTIFICATE_TABLE = "malformed-certificate-table"
    MALFORMED_PKCS7 = "malformed-pkcs7"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    DIGEST_MISMATCH = "digest-mismatch"
    MESSAGE_DIGEST_MISMATCH = "message-digest-mismatch"
    SIGNER_NOT_FOUND = "signer-not-found"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED_ROOT = "untrusted-root"
    INVALID_CHAIN = "invalid-chain"
    CERTIFICATE_NOT_TIME_VALID = "certificate-not-time-valid"
    CHECKSUM_MISMATCH = "checksum-mismatch"
    PADDING = "certificate-padding"
    MISSING_EKU = "missing-eku"
    SIGNING_LEVEL_TOO_LOW = "signing-level-too-low"
    REVOKED = "revoked"


class FindingKind(StrEnum):
    CHECKSUM = "checksum"
    PADDING = "padding"


@dataclass(frozen=True)
class Finding:
    """Something wrong with bytes no signature covers (see the module docstring)."""

    kind: FindingKind
    detail: str


@dataclass(frozen=True)
class SignatureResult:
    """The verdict on one signature of the image."""

    #: Which signature: "primary", "nested 1", "entry 2", "entry 2 nested 1", ...
    label: str
    failure: Failure | None
    detail: str
    digest_algorithm: str | None = None
    #: The Authenticode digest computed over the file with this signature's algorithm.
    image_digest: bytes | None = None
    #: The digest the signature states (SpcIndirectDataContent).
    signed_digest: bytes | None = None
    #: Signer first; the trusted root last when ``chain_trusted``.
    chain: tuple[CertificateInfo, ...] = ()
    #: The chain was built up to a trusted root (its signatures verify), whatever else failed.
    chain_trusted: bool = False
    ekus: frozenset[str] = frozenset()
    signing_level: SigningLevel = SigningLevel.UNSIGNED
    program_name: str | None = None
    timestamps: tuple[Timestamp, ...] = ()
    #: The time the chain was checked at: a verified timestamp's, else the verifier's.
    validity_time: dt.datetime | None = None
    #: Certificates of the SignedData that could not be decoded: skipped, with the reason.
    skipped_certificates: tuple[str, ...] = ()
    #: Decoding warnings on the certificates (negative serials, long names): not errors.
    certificate_notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def weak(self) -> bool:
        """Made with SHA-1, whose collisions are practical."""
        return self.digest_algorithm == "sha1"


@dataclass(frozen=True)
class VerificationResult:
    failure: Failure | None
    detail: str
    image: ParsedImage | None = None
    digest_algorithm: str | None = None
    #: The Authenticode digest computed over the file (None if never computed).
    image_digest: bytes | None = None
    #: Signer first, trusted root last (empty until the chain was built).
    chain: tuple[CertificateInfo, ...] = ()
    ekus: frozenset[str] = frozenset()
    signing_level: SigningLevel = SigningLevel.UNSIGNED
    program_name: str | None = None
    revocation: RevocationVerdict | None = None
    #: Every signature, in file order (entry 0's primary first, then its nested ones, ...).
    signatures: tuple[SignatureResult, ...] = ()
    #: Index in ``signatures`` of the one the verdict comes from (the first valid one, else the
    #: primary); None when there is none.
    decided_by: int | None = None
    #: Checksum and padding findings, reported whatever ``strict`` is.
    findings: tuple[Finding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def signature(self) -> SignatureResult | None:
        return None if self.decided_by is None else self.signatures[self.decided_by]

    @property
    def chain_trusted(self) -> bool:
        return self.signature is not None and self.signature.chain_trusted


def _find_signer(
    certs: Sequence[LoadedCertificate], signature: DecodedSignature
) -> LoadedCertificate | None:
    for loaded in certs:
        if (
            loaded.info.serial == signature.signer_serial
            and loaded.cert.issuer.public_bytes() == signature.signer_issuer
        ):
            return loaded
    return None


@dataclass(frozen=True)
class _Context:
    data: bytes
    parsed: ParsedImage
    roots: tuple[LoadedCertificate, ...]
    tsa_roots: tuple[LoadedCertificate, ...]
    at: dt.datetime
    requirement: SigningRequirement


def _load_bag(
    signature: DecodedSignature,
) -> tuple[list[LoadedCertificate], tuple[str, ...], tuple[str, ...]]:
    """The decodable certificates, why the others were skipped, and decoding notes."""
    certs: list[LoadedCertificate] = []
    skipped: list[str] = []
    for index, der in enumerate(signature.certificates):
        try:
            certs.append(load_certificate(der))
        except ValueError as exc:
            skipped.append(f"certificate {index}: {exc}")
    skipped += ["a non-X.509 certificate choice"] * signature.other_certificates
    notes = tuple(dict.fromkeys(n for c in certs for n in c.notes))
    return certs, tuple(skipped), notes


def _timestamps(
    signature: DecodedSignature,
    certs: Sequence[LoadedCertificate],
    roots: Sequence[LoadedCertificate],
) -> tuple[Timestamp, ...]:
    found = [
        verify_timestamp(RFC3161, der, signature.signature, certs, roots)
        for der in signature.timestamps
    ]
    found += [
        verify_timestamp(PKCS9, der, signature.signature, certs, roots)
        for der in signature.countersignatures
    ]
    return tuple(found)


def _first(result: SignatureResult, failure: Failure, detail: str) -> SignatureResult:
    """Record ``failure`` unless an earlier check already failed."""
    if result.failure is not None:
        return result
    return replace(result, failure=failure, detail=detail)


def _check_decoded(
    ctx: _Context, signature: DecodedSignature, result: SignatureResult
) -> SignatureResult:
    digest = authenticode_digest(ctx.data, ctx.parsed, signature.digest_algorithm)
    result = replace(
        result,
        digest_algorithm=signature.digest_algorithm,
        image_digest=digest,
        signed_digest=signature.image_digest,
        program_name=signature.program_name,
    )
    if not hmac.compare_digest(digest, signature.image_digest):
        result = _first(result, Failure.DIGEST_MISMATCH, "image digest differs")
    if signature.content_type_attr != SPC_INDIRECT_DATA_OID:
        result = _first(result, Failure.MALFORMED_PKCS7, "contentType attribute")
    content_hash = hashlib.new(signature.digest_algorithm, signature.indirect_data).digest()
    if not hmac.compare_digest(content_hash, signature.message_digest_attr):
        result = _first(result, Failure.MESSAGE_DIGEST_MISMATCH, "messageDigest differs")
    certs, skipped, notes = _load_bag(signature)
    result = replace(result, skipped_certificates=skipped, certificate_notes=notes)
    signer = _find_signer(certs, signature)
    if signer is None:
        return _first(result, Failure.SIGNER_NOT_FOUND, "no signer certificate")
    if not signature_valid(
        signer.cert,
        signature.signature_algorithm,
        signature.digest_algorithm,
        signature.signature,
        signature.signed_attrs,
    ):
        result = _first(result, Failure.BAD_SIGNATURE, "signature does not verify")
    stamps = _timestamps(signature, certs, ctx.tsa_roots)
    when = ctx.at
    lifetime = EKU_LIFETIME_SIGNING in (signer.info.ekus or ())
    verified = [t.time for t in stamps if t.verified and t.time is not None]
    if verified and not lifetime:
        when = verified[0]
    result = replace(result, timestamps=stamps, validity_time=when)
    try:
        chain = build_chain(signer, certs, ctx.roots, skipped=len(skipped))
    except ChainError as exc:
        result = replace(result, chain=tuple(link.info for link in exc.partial))
        return _first(result, Failure(exc.failure.value), exc.detail)
    result = replace(result, chain=tuple(link.info for link in chain), chain_trusted=True)
    try:
        check_chain(chain, when)
    except ChainError as exc:
        return _first(result, Failure(exc.failure.value), exc.detail)
    ekus = effective_ekus(chain)
    level = level_for(ekus)
    result = replace(result, ekus=ekus, signing_level=level)
    missing = ctx.requirement.ekus - ekus
    if missing:
        detail = "signer lacks EKU " + ", ".join(sorted(missing))
        return _first(result, Failure.MISSING_EKU, detail)
    if level < ctx.requirement.min_level:
        detail = f"signing level {level} < {ctx.requirement.min_level}"
        return _first(result, Failure.SIGNING_LEVEL_TOO_LOW, detail)
    return result


def _check_signature(
    ctx: _Context, der: bytes, label: str, depth: int, out: list[SignatureResult]
) -> None:
    """Verify the signature ``der`` and, after it, its nested signatures, appending to ``out``."""
    if len(out) >= MAX_SIGNATURES:
        return
    result = SignatureResult(label, None, "valid")
    try:
        signature = decode_signed_data(der)
    except UnsupportedSignatureAlgorithm as exc:
        out.append(replace(result, failure=Failure.UNSUPPORTED_ALGORITHM, detail=str(exc)))
        return
    except MalformedSignature as exc:
        out.append(replace(result, failure=Failure.MALFORMED_PKCS7, detail=str(exc)))
        return
    out.append(_check_decoded(ctx, signature, result))
    if depth >= _MAX_NESTING:
        return
    prefix = "" if label == "primary" else f"{label} "
    for index, nested in enumerate(signature.nested, start=1):
        _check_signature(ctx, nested, f"{prefix}nested {index}", depth + 1, out)


def _findings(data: bytes, parsed: ParsedImage, entries: Sequence[WinCertificate]) -> list[Finding]:
    findings = []
    computed = pe_checksum(data, parsed.checksum_offset)
    if computed != parsed.checksum:
        detail = f"PE checksum: stored {parsed.checksum:#010x}, computed {computed:#010x}"
        findings.append(Finding(FindingKind.CHECKSUM, detail))
    for index, entry in enumerate(entries):
        if entry.padding_issue is not None:
            findings.append(
                Finding(FindingKind.PADDING, f"WIN_CERTIFICATE {index}: {entry.padding_issue}")
            )
    return findings


_STRICT_FAILURES = {
    FindingKind.CHECKSUM: Failure.CHECKSUM_MISMATCH,
    FindingKind.PADDING: Failure.PADDING,
}


def _from_signature(result: VerificationResult, sig: SignatureResult) -> VerificationResult:
    return replace(
        result,
        failure=sig.failure,
        detail=sig.detail,
        digest_algorithm=sig.digest_algorithm,
        image_digest=sig.image_digest,
        chain=sig.chain,
        ekus=sig.ekus,
        signing_level=sig.signing_level,
        program_name=sig.program_name,
    )


def verify_image(
    data: bytes,
    trust: TrustStore,
    *,
    requirement: SigningRequirement | None = None,
    revocation: RevocationPolicy | None = None,
    at: dt.datetime | None = None,
    parsed: ParsedImage | None = None,
    strict: bool = True,
    timestamp_trust: TrustStore | None = None,
) -> VerificationResult:
    """Verify ``data``; never raises on bad input (a malformed image is a failed result).

    ``requirement`` defaults to the Authenticode baseline (code-signing EKU); pass
    ``requirement_for(kind)`` for per-kind rules.  ``at`` defaults to now (UTC); a verified
    timestamp countersignature replaces it for that signature.  ``parsed``, if given, must be
    ``parse_image(data)`` (saves parsing twice).  ``strict`` (the model's loaders) turns the
    checksum and padding findings into failures; with ``strict=False`` the verdict is
    Authenticode's alone and the findings are only reported.  ``timestamp_trust`` holds the
    roots for timestamp authorities (default: ``trust``).  Raises ``ValueError`` only if a
    root of ``trust`` itself cannot be decoded (a configuration error, not bad input).
    """
    requirement = requirement if requirement is not None else SigningRequirement()
    at = at if at is not None else dt.datetime.now(dt.UTC)
    roots = tuple(load_certificate(root) for root in trust.roots)
    tsa_roots = (
        roots
        if timestamp_trust is None
        else tuple(load_certificate(root) for root in timestamp_trust.roots)
    )
    data = data if isinstance(data, bytes) else bytes(data)
    if parsed is None:
        try:
            parsed = parse_image(data)
        except ImageFormatError as exc:
            return VerificationResult(Failure.MALFORMED_IMAGE, exc.reason)
    result = VerificationResult(None, "valid", image=parsed)
    try:
        entries = read_certificate_entries(data, parsed)
    except CertificateTableError as exc:
        return replace(result, failure=Failure.MALFORMED_CERTIFICATE_TABLE, detail=str(exc))
    findings = _findings(data, parsed, entries)
    result = replace(result, findings=tuple(findings))
    if not entries:
        return replace(result, failure=Failure.NO_SIGNATURE, detail="image is not signed")
    ctx = _Context(data, parsed, roots, tsa_roots, at, requirement)
    signatures: list[SignatureResult] = []
    for index, entry in enumerate(entries):
        _check_signature(
            ctx, entry.pkcs7, "primary" if index == 0 else f"entry {index}", 0, signatures
        )
    decided = next((i for i, s in enumerate(signatures) if s.ok), 0)
    result = replace(result, signatures=tuple(signatures), decided_by=decided)
    result = _from_signature(result, signatures[decided])
    if result.failure is not None:
        return result
    if strict and findings:
        first = findings[0]
        return replace(result, failure=_STRICT_FAILURES[first.kind], detail=first.detail)
    if revocation is not None:
        verdict = check_revocation(
            revocation,
            component=parsed.name,
            version=parsed.version,
            svn=parsed.svn,
            certificate_fingerprints=[c.sha256 for c in result.chain],
            image_hash=None if result.image_digest is None else result.image_digest.hex(),
        )
        result = replace(result, revocation=verdict)
        if verdict.revoked:
            return replace(result, failure=Failure.REVOKED, detail=verdict.detail)
    return result
