"""Verify an image's Authenticode signature and report exactly which check failed.

Order of checks (the first failure is reported): PE parses -> a certificate table exists and is
framed correctly -> the PKCS#7 decodes strictly -> the image digest matches the signed
SpcIndirectDataContent -> the signed messageDigest matches that content -> the signer
certificate is present -> its signature over the signed attributes verifies -> the chain reaches
a trusted root and is valid -> the PE checksum (excluded from the digest) matches -> the
effective EKUs and signing level meet the requirement -> the revocation policy does not revoke.

Model choices beyond Authenticode (not from vbs-internals): the PE checksum must be correct
(Windows checks it for boot and kernel-mode images [U]); the certificate table must be the last
thing in the file; and the padding after the PKCS#7 must be at most 7 zero bytes (in the spirit
of Windows' opt-in ``EnableCertPaddingCheck`` [U]).  Together with the strict PKCS#7 decoding,
this makes every byte of a signed image matter: no change to it verifies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, replace
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vbsim.image.authenticode import (
    CertificateTableError,
    authenticode_digest,
    read_certificate_table,
)
from vbsim.image.chain import (
    CertificateInfo,
    ChainError,
    LoadedCertificate,
    build_chain,
    check_chain,
    effective_ekus,
    load_certificate,
)
from vbsim.image.checksum import pe_checksum
from vbsim.image.errors import ImageFormatError
from vbsim.image.parse import ParsedImage, parse_image
from vbsim.image.pkcs7 import (
    DIGESTS,
    DecodedSignature,
    MalformedSignature,
    decode_signed_data,
)
from vbsim.image.pkcs7 import UnsupportedAlgorithm as UnsupportedSignatureAlgorithm
from vbsim.image.revocation import RevocationPolicy, RevocationVerdict, check_revocation
from vbsim.image.signing_level import SigningLevel, SigningRequirement, level_for
from vbsim.image.spc import SPC_INDIRECT_DATA_OID
from vbsim.image.trust import TrustStore


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
    MISSING_EKU = "missing-eku"
    SIGNING_LEVEL_TOO_LOW = "signing-level-too-low"
    REVOKED = "revoked"


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

    @property
    def ok(self) -> bool:
        return self.failure is None


def _find_signer(
    certs: list[LoadedCertificate], signature: DecodedSignature
) -> LoadedCertificate | None:
    for loaded in certs:
        if (
            loaded.info.serial == signature.signer_serial
            and loaded.cert.issuer.public_bytes() == signature.signer_issuer
        ):
            return loaded
    return None


def _signature_valid(cert: x509.Certificate, signature: DecodedSignature) -> bool:
    key = cert.public_key()
    algorithm = DIGESTS[signature.digest_algorithm]()
    try:
        if signature.signature_algorithm.endswith("_ecdsa"):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(signature.signature, signature.signed_attrs, ec.ECDSA(algorithm))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            key.verify(signature.signature, signature.signed_attrs, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_signature(
    data: bytes,
    parsed: ParsedImage,
    signature: DecodedSignature,
    roots: list[LoadedCertificate],
    at: dt.datetime,
    result: VerificationResult,
) -> VerificationResult:
    digest = authenticode_digest(data, parsed, signature.digest_algorithm)
    result = replace(result, image_digest=digest, program_name=signature.program_name)
    if not hmac.compare_digest(digest, signature.image_digest):
        return replace(result, failure=Failure.DIGEST_MISMATCH, detail="image digest differs")
    if signature.content_type_attr != SPC_INDIRECT_DATA_OID:
        return replace(result, failure=Failure.MALFORMED_PKCS7, detail="contentType attribute")
    content_hash = hashlib.new(signature.digest_algorithm, signature.indirect_data).digest()
    if not hmac.compare_digest(content_hash, signature.message_digest_attr):
        return replace(
            result, failure=Failure.MESSAGE_DIGEST_MISMATCH, detail="messageDigest differs"
        )
    try:
        certs = [load_certificate(der) for der in signature.certificates]
    except ValueError as exc:
        return replace(result, failure=Failure.MALFORMED_PKCS7, detail=str(exc))
    signer = _find_signer(certs, signature)
    if signer is None:
        return replace(result, failure=Failure.SIGNER_NOT_FOUND, detail="no signer certificate")
    if not _signature_valid(signer.cert, signature):
        return replace(result, failure=Failure.BAD_SIGNATURE, detail="signature does not verify")
    try:
        chain = build_chain(signer, certs, roots)
        result = replace(result, chain=tuple(link.info for link in chain))
        check_chain(chain, at)
    except ChainError as exc:
        if exc.partial and not result.chain:
            result = replace(result, chain=tuple(link.info for link in exc.partial))
        return replace(result, failure=Failure(exc.failure.value), detail=exc.detail)
    ekus = effective_ekus(chain)
    return replace(result, ekus=ekus, signing_level=level_for(ekus))


def verify_image(
    data: bytes,
    trust: TrustStore,
    *,
    requirement: SigningRequirement | None = None,
    revocation: RevocationPolicy | None = None,
    at: dt.datetime | None = None,
    parsed: ParsedImage | None = None,
) -> VerificationResult:
    """Verify ``data``; never raises on bad input (a malformed image is a failed result).

    ``requirement`` defaults to the Authenticode baseline (code-signing EKU); pass
    ``requirement_for(kind)`` for per-kind rules.  ``at`` defaults to now (UTC).  ``parsed``,
    if given, must be ``parse_image(data)`` (saves parsing twice).  Raises ``ValueError`` only
    if a root of ``trust`` itself cannot be decoded (a configuration error, not bad input).
    """
    requirement = requirement if requirement is not None else SigningRequirement()
    at = at if at is not None else dt.datetime.now(dt.UTC)
    roots = [load_certificate(root) for root in trust.roots]
    data = data if isinstance(data, bytes) else bytes(data)
    if parsed is None:
        try:
            parsed = parse_image(data)
        except ImageFormatError as exc:
            return VerificationResult(Failure.MALFORMED_IMAGE, exc.reason)
    result = VerificationResult(None, "valid", image=parsed)
    try:
        table = read_certificate_table(data, parsed)
    except CertificateTableError as exc:
        return replace(result, failure=Failure.MALFORMED_CERTIFICATE_TABLE, detail=str(exc))
    if table is None:
        return replace(result, failure=Failure.NO_SIGNATURE, detail="image is not signed")
    try:
        signature = decode_signed_data(table.pkcs7)
    except UnsupportedSignatureAlgorithm as exc:
        return replace(result, failure=Failure.UNSUPPORTED_ALGORITHM, detail=str(exc))
    except MalformedSignature as exc:
        return replace(result, failure=Failure.MALFORMED_PKCS7, detail=str(exc))
    result = replace(result, digest_algorithm=signature.digest_algorithm)
    result = _check_signature(data, parsed, signature, roots, at, result)
    if result.failure is not None:
        return result
    if pe_checksum(data, parsed.checksum_offset) != parsed.checksum:
        return replace(result, failure=Failure.CHECKSUM_MISMATCH, detail="PE checksum differs")
    missing = requirement.ekus - result.ekus
    if missing:
        detail = "signer lacks EKU " + ", ".join(sorted(missing))
        return replace(result, failure=Failure.MISSING_EKU, detail=detail)
    if result.signing_level < requirement.min_level:
        detail = f"signing level {result.signing_level} < {requirement.min_level}"
        return replace(result, failure=Failure.SIGNING_LEVEL_TOO_LOW, detail=detail)
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
