"""Timestamp countersignatures: when a signature was made, vouched for by a timestamp authority.

A signer's certificate expires (Microsoft's code-signing leaves after about a year), yet a file
signed while it was valid stays valid if a trusted timestamp authority (TSA) countersigned the
signature at that time: the chain is then checked at the timestamp's time instead of now.  Two
forms, both unauthenticated attributes of the signer (so outside what the signer signed):

- RFC 3161 token in ``szOID_RFC3161_counterSign`` (1.3.6.1.4.1.311.3.3.1): a ContentInfo
  (SignedData) whose content is a ``TSTInfo`` (RFC 3161 §2.4.2); its ``messageImprint`` is the
  hash of the signer's signature value and ``genTime`` the time.
- legacy PKCS #9 countersignature (1.2.840.113549.1.9.6, RFC 2985 §5.3.6): a SignerInfo whose
  ``messageDigest`` attribute is the hash of the signer's signature value and whose
  ``signingTime`` (RFC 2985 §5.3.3) is the time; its certificate is in the outer SignedData.

The TSA's certificate must chain to a trusted root, be valid at the time it states, and hold
the id-kp-timeStamping EKU (RFC 3161 §2.3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms, tsp
from cryptography import x509

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
from vbsim.image.pkcs7 import (
    DIGESTS,
    ECDSA_SIGNATURES,
    RSA_SIGNATURES,
    check_algorithm,
    check_signature_pair,
)

EKU_TIME_STAMPING = "1.3.6.1.5.5.7.3.8"  # RFC 5280 id-kp-timeStamping
RFC3161 = "rfc3161"
PKCS9 = "pkcs9-countersignature"


class TimestampError(Exception):
    """The countersignature does not verify; ``str()`` says why."""


@dataclass(frozen=True)
class Timestamp:
    kind: str
    #: The time the countersignature states (None if it could not be read).
    time: dt.datetime | None
    #: Subject of the TSA certificate (None if not found).
    authority: str | None
    #: Signature, imprint and TSA chain all verified against the trust store.
    verified: bool
    detail: str
    chain: tuple[CertificateInfo, ...] = ()


def _attribute(signer: cms.SignerInfo, name: str) -> object:
    attrs = signer["signed_attrs"]
    if not isinstance(attrs, cms.CMSAttributes):
        raise TimestampError("countersignature has no signed attributes")
    found = [a for a in attrs if a["type"].native == name]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise TimestampError(f"countersignature needs exactly one {name} attribute")
    return found[0]["values"][0].native


def _signer_certificate(
    signer: cms.SignerInfo, certs: Sequence[LoadedCertificate]
) -> LoadedCertificate:
    sid = signer["sid"]
    for loaded in certs:
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                loaded.info.serial == wanted["serial_number"].native
                and loaded.cert.issuer.public_bytes() == wanted["issuer"].dump()
            ):
                return loaded
        else:
            try:
                ski = loaded.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except (x509.ExtensionNotFound, ValueError):
                continue
            if ski.value.digest == sid.chosen.native:
                return loaded
    raise TimestampError("the timestamp authority's certificate is not in the signature")


def _verify_signer(
    signer: cms.SignerInfo, certs: Sequence[LoadedCertificate], content: bytes
) -> LoadedCertificate:
    """``signer`` signed ``content`` (through its messageDigest attribute); its certificate."""
    digest_name = check_algorithm(signer["digest_algorithm"], DIGESTS)
    signature_algorithm = check_algorithm(
        signer["signature_algorithm"], RSA_SIGNATURES | ECDSA_SIGNATURES
    )
    check_signature_pair(signature_algorithm, digest_name)
    expected = hashlib.new(digest_name, content).digest()
    if not hmac.compare_digest(bytes(_attribute(signer, "message_digest")), expected):  # type: ignore[call-overload]
        raise TimestampError("countersignature messageDigest differs")
    cert = _signer_certificate(signer, certs)
    signed = b"\x31" + signer["signed_attrs"].dump()[1:]
    if not signature_valid(
        cert.cert, signature_algorithm, digest_name, bytes(signer["signature"].native), signed
    ):
        raise TimestampError("the timestamp authority's signature does not verify")
    return cert


def _rfc3161(
    der: bytes, signature: bytes, bag: Sequence[LoadedCertificate]
) -> tuple[dt.datetime, LoadedCertificate, list[LoadedCertificate]]:
    info = cms.ContentInfo.load(der)
    if info["content_type"].native != "signed_data":
        raise TimestampError("timestamp token is not SignedData")
    signed = info["content"]
    content = signed["encap_content_info"]
    if content["content_type"].native != "tst_info":
        raise TimestampError("timestamp token does not hold a TSTInfo")
    tst_der = bytes(content["content"].contents)
    tst = tsp.TSTInfo.load(tst_der)
    imprint = tst["message_imprint"]
    imprint_name = check_algorithm(imprint["hash_algorithm"], DIGESTS)
    if not hmac.compare_digest(
        bytes(imprint["hashed_message"].native), hashlib.new(imprint_name, signature).digest()
    ):
        raise TimestampError("timestamp messageImprint is not the hash of this signature")
    certs = list(bag)
    for choice in signed["certificates"] or []:
        if choice.name == "certificate":
            try:
                certs.append(load_certificate(choice.chosen.dump()))
            except ValueError:
                continue  # skipped, like the signature's own undecodable certificates
    if len(signed["signer_infos"]) != 1:
        raise TimestampError("timestamp token needs exactly one SignerInfo")
    tsa = _verify_signer(signed["signer_infos"][0], certs, tst_der)
    return tst["gen_time"].native, tsa, certs


def _pkcs9(
    der: bytes, signature: bytes, bag: Sequence[LoadedCertificate]
) -> tuple[dt.datetime, LoadedCertificate, list[LoadedCertificate]]:
    signer = cms.SignerInfo.load(der)
    tsa = _verify_signer(signer, bag, signature)
    when = _attribute(signer, "signing_time")
    if not isinstance(when, dt.datetime):
        raise TimestampError("countersignature has no signingTime")
    return when, tsa, list(bag)


def verify_timestamp(
    kind: str,
    der: bytes,
    signature: bytes,
    bag: Sequence[LoadedCertificate],
    roots: Sequence[LoadedCertificate],
) -> Timestamp:
    """Verify one countersignature of ``signature`` (the signer's signature value)."""
    reader = _rfc3161 if kind == RFC3161 else _pkcs9
    try:
        when, tsa, certs = reader(der, signature, bag)
    except TimestampError as exc:
        return Timestamp(kind, None, None, False, str(exc))
    except Exception as exc:  # asn1crypto decodes lazily: any error is a bad token
        return Timestamp(kind, None, None, False, f"undecodable: {type(exc).__name__}: {exc}")
    when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    name = tsa.info.subject
    try:
        chain = build_chain(tsa, certs, roots)
        check_chain(chain, when)
    except ChainError as exc:
        partial = tuple(link.info for link in exc.partial)
        return Timestamp(kind, when, name, False, f"TSA chain: {exc.detail}", partial)
    infos = tuple(link.info for link in chain)
    if EKU_TIME_STAMPING not in effective_ekus(chain):
        return Timestamp(kind, when, name, False, "TSA lacks the time-stamping EKU", infos)
    return Timestamp(kind, when, name, True, "verified", infos)
