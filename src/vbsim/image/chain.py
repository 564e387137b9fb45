"""Certificate chains: build signer -> ... -> trusted root, check them, and compute EKUs.

Effective EKUs follow the CryptoAPI convention that an issuing CA with an EKU extension
restricts what its subordinates may be used for: the leaf's EKUs intersected with each CA's
(a CA without the extension, or with anyExtendedKeyUsage, does not restrict).  A leaf without
an EKU extension has *no* EKU in the model (Windows would treat it as valid for any purpose;
vbsim is stricter so that a missing EKU is always visible).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vbsim.image.memo import BytesMemo
from vbsim.image.pkcs7 import DIGESTS

_ANY_EKU = "2.5.29.37.0"
MAX_CHAIN_DEPTH = 8


class ChainFailure(StrEnum):
    UNTRUSTED_ROOT = "untrusted-root"
    INVALID_CHAIN = "invalid-chain"
    NOT_TIME_VALID = "certificate-not-time-valid"


class ChainError(Exception):
    def __init__(self, failure: ChainFailure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        #: The links built before the failure (shown to people, never trusted).
        self.partial: tuple[LoadedCertificate, ...] = ()


@dataclass(frozen=True)
class CertificateInfo:
    """What a verification result reports about each certificate of the chain."""

    subject: str
    issuer: str
    serial: int
    sha256: str
    #: The certificate's own EKU OIDs, None when it has no EKU extension.
    ekus: tuple[str, ...] | None
    is_ca: bool
    not_before: dt.datetime
    not_after: dt.datetime


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_ekus(cert: x509.Certificate) -> tuple[str, ...] | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return None
    return tuple(oid.dotted_string for oid in ext.value)


def _basic_constraints(cert: x509.Certificate) -> tuple[bool, int | None]:
    try:
        value = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return value.ca, value.path_length


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


@dataclass(frozen=True, eq=False)
class LoadedCertificate:
    """A certificate with every field the checks use decoded up front.

    cryptography parses lazily, so a corrupt field would otherwise raise (anything from
    ``ValueError`` to ``KeyError``) in the middle of a check; :func:`load_certificate` turns all
    of that into one ``ValueError``.
    """

    cert: x509.Certificate
    info: CertificateInfo
    path_length: int | None
    key_usage: x509.KeyUsage | None
    #: Warnings cryptography gave while decoding (a negative serial, a long name attribute):
    #: reported, not errors; real Microsoft and legacy roots carry them.
    notes: tuple[str, ...] = ()


def load_certificate(source: bytes | x509.Certificate) -> LoadedCertificate:
    """Decode (DER or an already-loaded certificate); raises only ``ValueError``."""
    if isinstance(source, bytes):
        known = _LOADED.get(source)
        if known is not None:
            # A new wrapper each time: the chain builder tells certificates apart by identity.
            return LoadedCertificate(*known)
    loaded = _load_certificate(source)
    if isinstance(source, bytes):
        _LOADED.put(
            source,
            (loaded.cert, loaded.info, loaded.path_length, loaded.key_usage, loaded.notes),
        )
    return loaded


#: Decoded certificates by exact DER: the decoder's immutable products (cryptography's
#: Certificate, the frozen info, constraints, notes).  Decoding is a pure function of the bytes
#: and decides nothing: chains and signatures are still checked on every verification.
_LOADED: BytesMemo[
    tuple[x509.Certificate, CertificateInfo, int | None, x509.KeyUsage | None, tuple[str, ...]]
] = BytesMemo(256)


def _load_certificate(source: bytes | x509.Certificate) -> LoadedCertificate:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cert = (
                source
                if isinstance(source, x509.Certificate)
                else x509.load_der_x509_certificate(source)
            )
            cert.public_key()
            cert.signature_hash_algorithm  # noqa: B018 - force decoding
            ca, path_length = _basic_constraints(cert)
            info = CertificateInfo(
                subject=cert.subject.rfc4514_string(),
                issuer=cert.issuer.rfc4514_string(),
                serial=cert.serial_number,
                sha256=fingerprint(cert),
                ekus=certificate_ekus(cert),
                is_ca=ca,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
            )
            usage = _key_usage(cert)
        notes = tuple(dict.fromkeys(str(w.message) for w in caught))
        return LoadedCertificate(cert, info, path_length, usage, notes)
    except Exception as exc:  # see class docstring
        raise ValueError(f"undecodable certificate: {type(exc).__name__}: {exc}") from exc


def issued_by(child: LoadedCertificate, parent: LoadedCertificate) -> bool:
    """``parent``'s name and key issued ``child``."""
    try:
        child.cert.verify_directly_issued_by(parent.cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _names_issuer(child: LoadedCertificate, parent: LoadedCertificate) -> bool:
    return child.cert.issuer == parent.cert.subject


def build_chain(
    leaf: LoadedCertificate,
    bag: Sequence[LoadedCertificate],
    roots: Sequence[LoadedCertificate],
    *,
    skipped: int = 0,
) -> tuple[LoadedCertificate, ...]:
    """leaf, intermediates from ``bag``, then one of ``roots``; raises :class:`ChainError`.

    The failure says what went wrong: an issuer that is simply not there and not trusted is an
    *untrusted root*; a certificate whose named issuer is present (in the bag or trusted) but
    whose signature that issuer's key does not verify is an *invalid chain* (corrupted or
    forged), and so is a missing issuer when ``skipped`` undecodable certificates may have been
    it.  A trust anchor need not be self-signed (UEFI's db holds CAs such as Microsoft
    Corporation UEFI CA 2011).
    """
    chain = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        root = next((r for r in roots if issued_by(current, r)), None)
        if root is not None:
            if root.cert != current.cert:
                chain.append(root)
            return tuple(chain)
        issuer = next((c for c in bag if c not in chain and issued_by(current, c)), None)
        if issuer is None:
            raise _missing_issuer(current, bag, roots, chain, skipped)
        chain.append(issuer)
        current = issuer
    raise ChainError(ChainFailure.INVALID_CHAIN, "certificate chain too long")


def _missing_issuer(
    current: LoadedCertificate,
    bag: Sequence[LoadedCertificate],
    roots: Sequence[LoadedCertificate],
    chain: list[LoadedCertificate],
    skipped: int,
) -> ChainError:
    name, issuer = current.info.subject, current.info.issuer
    if any(_names_issuer(current, r) for r in roots):
        error = ChainError(
            ChainFailure.INVALID_CHAIN,
            f"{name} names the trusted root {issuer} as its issuer, but that root's key does "
            "not verify its signature (corrupted or forged certificate)",
        )
    elif any(_names_issuer(current, c) for c in bag if c not in chain):
        error = ChainError(
            ChainFailure.INVALID_CHAIN,
            f"{name} is not verified by its issuer {issuer} carried in the signature "
            "(corrupted or forged certificate)",
        )
    elif skipped:
        error = ChainError(
            ChainFailure.INVALID_CHAIN,
            f"the issuer of {name} ({issuer}) is missing; {skipped} undecodable certificate(s) "
            "in the signature were skipped and may be it",
        )
    else:
        error = ChainError(
            ChainFailure.UNTRUSTED_ROOT,
            f"{name} is issued by {issuer}, which is neither trusted nor in the signature",
        )
    error.partial = tuple(chain)  # what was built: worth showing, never trusted
    return error


def check_chain(chain: Sequence[LoadedCertificate], at: dt.datetime) -> None:
    """Validity periods, CA constraints and key usages; raises :class:`ChainError`."""
    for depth, link in enumerate(chain):
        name, usage = link.info.subject, link.key_usage
        if not link.info.not_before <= at <= link.info.not_after:
            raise ChainError(ChainFailure.NOT_TIME_VALID, f"{name} is not valid at {at}")
        if depth == 0:
            if usage is not None and not usage.digital_signature:
                raise ChainError(ChainFailure.INVALID_CHAIN, f"{name} may not sign data")
            continue
        if not link.info.is_ca:
            raise ChainError(ChainFailure.INVALID_CHAIN, f"{name} is not a CA")
        if link.path_length is not None and depth - 1 > link.path_length:
            raise ChainError(ChainFailure.INVALID_CHAIN, f"{name} path length exceeded")
        if usage is not None and not usage.key_cert_sign:
            raise ChainError(ChainFailure.INVALID_CHAIN, f"{name} may not sign certificates")


def effective_ekus(chain: Sequence[LoadedCertificate]) -> frozenset[str]:
    """The leaf's EKUs as restricted by its issuers (see module docstring)."""
    if not chain:
        return frozenset()
    ekus = frozenset(chain[0].info.ekus or ())
    for ca in chain[1:]:
        allowed = ca.info.ekus
        if allowed is not None and _ANY_EKU not in allowed:
            ekus &= frozenset(allowed)
    return ekus


def signature_valid(
    cert: x509.Certificate,
    signature_algorithm: str,
    digest_name: str,
    signature: bytes,
    message: bytes,
) -> bool:
    """``cert``'s key made ``signature`` over ``message`` (PKCS #1 v1.5 RSA or ECDSA)."""
    key = cert.public_key()
    algorithm = DIGESTS[digest_name]()
    try:
        if signature_algorithm.endswith("_ecdsa"):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(signature, message, ec.ECDSA(algorithm))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            key.verify(signature, message, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True
