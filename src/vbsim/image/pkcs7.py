"""Authenticode PKCS#7 SignedData: strictly decode (building one, i.e. signing, is host side:
:mod:`vbsim.signing.authenticode`).

The SignedData is PKCS#7 v1.5 (version 1) whose contentInfo is ``SpcIndirectDataContent``
(OID 1.3.6.1.4.1.311.2.1.4) holding ``SpcPeImageData`` and the image's DigestInfo; the signer
signs the DER of its signed attributes: contentType (= SpcIndirectDataContent), messageDigest
(hash of the SpcIndirectDataContent value octets, without tag and length), SpcSpOpusInfo and
SpcStatementType.  ASN.1 with asn1crypto, keys and signatures with cryptography.

Decoding is strict about what the signature's meaning depends on (versions, the signer id,
one SignerInfo, DER without trailing bytes) and follows the RFCs where they allow choices: an
algorithm identifier is compared by OID, with NULL or absent parameters both accepted (RFC 5754
§2 for SHA-2; RFC 3370 §2.1 for SHA-1).  The *unauthenticated* attributes (nested signatures,
countersignatures, timestamps) are outside what the signer signed: they can be added, removed
or changed without breaking this signature (each one is verified on its own).  See
:func:`decode_signed_data`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes

from vbsim.image.memo import BytesMemo
from vbsim.image.spc import (
    SPC_INDIRECT_DATA_OID,
    SPC_PE_IMAGE_DATA_OID,
    SPC_SP_OPUS_INFO_OID,
    SpcIndirectDataContent,
    SpcSpOpusInfo,
)

#: Digest algorithms vbsim accepts (hashlib name -> cryptography hash factory).  SHA-1 is
#: verified because dual-signed real files carry a SHA-1 primary signature, but it is reported
#: as weak (:data:`WEAK_DIGESTS`): SHA-1 collisions are practical (SHAttered, 2017).
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
WEAK_DIGESTS = frozenset({"sha1"})
#: What vbsim signs with: never a weak digest.
SIGNING_DIGESTS = frozenset(DIGESTS) - WEAK_DIGESTS
RSA_SIGNATURES = frozenset(
    {"rsassa_pkcs1v15", "sha1_rsa", "sha256_rsa", "sha384_rsa", "sha512_rsa"}
)
ECDSA_SIGNATURES = frozenset({"sha1_ecdsa", "sha256_ecdsa", "sha384_ecdsa", "sha512_ecdsa"})
_NULL_OR_ABSENT = (b"", b"\x05\x00")
#: Unauthenticated attributes vbsim reads (wincrypt.h ``szOID_*``; RFC 2985 §5.3.6).
NESTED_SIGNATURE_OID = "1.3.6.1.4.1.311.2.4.1"  # szOID_NESTED_SIGNATURE
RFC3161_TIMESTAMP_OID = "1.3.6.1.4.1.311.3.3.1"  # szOID_RFC3161_counterSign
COUNTERSIGNATURE_OID = "1.2.840.113549.1.9.6"  # PKCS #9 countersignature


class MalformedSignature(Exception):
    """The certificate table's PKCS#7 is not a well-formed Authenticode signature."""


class UnsupportedAlgorithm(MalformedSignature):
    """Well formed, but uses an algorithm vbsim does not verify."""


@dataclass(frozen=True)
class DecodedSignature:
    """The parts of an Authenticode SignedData that verification needs."""

    digest_algorithm: str
    image_digest: bytes
    #: Value octets of SpcIndirectDataContent: what the messageDigest attribute hashes.
    indirect_data: bytes
    content_type_attr: str
    message_digest_attr: bytes
    #: DER of the signed attributes re-tagged as SET OF: what the signature covers.
    signed_attrs: bytes
    signature_algorithm: str
    signature: bytes
    signer_issuer: bytes
    signer_serial: int
    certificates: tuple[bytes, ...]
    program_name: str | None
    #: CertificateChoices that are not X.509 certificates (attribute certificates...): skipped.
    other_certificates: int = 0
    #: DER of each nested signature (a whole ContentInfo(SignedData)).
    nested: tuple[bytes, ...] = ()
    #: DER of each RFC 3161 timestamp token (a ContentInfo(SignedData) over a TSTInfo).
    timestamps: tuple[bytes, ...] = ()
    #: DER of each legacy PKCS #9 countersignature (a SignerInfo).
    countersignatures: tuple[bytes, ...] = ()

    @property
    def weak(self) -> bool:
        return self.digest_algorithm in WEAK_DIGESTS


def _digest_algorithm(name: str) -> algos.DigestAlgorithm:
    return algos.DigestAlgorithm({"algorithm": name, "parameters": core.Null()})


def check_algorithm(value: core.Asn1Value, allowed: Collection[str]) -> str:
    """The algorithm's name, if it is one of ``allowed`` with NULL or absent parameters.

    RFC 5754 §2: implementations MUST accept SHA-2 AlgorithmIdentifiers with absent parameters
    and with NULL parameters; RFC 3370 §2.1 says the same of SHA-1.  So the OID decides, never
    the bytes of the encoding.
    """
    name = value["algorithm"].native
    if name not in allowed:
        raise UnsupportedAlgorithm(f"algorithm {value['algorithm'].dotted} not supported")
    if value["parameters"].dump() not in _NULL_OR_ABSENT:
        raise MalformedSignature(f"unexpected parameters for {name}")
    return str(name)


def check_signature_pair(signature_algorithm: str, digest_name: str) -> None:
    """A signature algorithm naming a hash (``sha256_rsa``) must name the signer's digest."""
    if (
        signature_algorithm != "rsassa_pkcs1v15"
        and signature_algorithm.split("_")[0] != digest_name
    ):
        raise MalformedSignature("signature algorithm hash differs from the signer digest")


def _unsigned(signer: core.Asn1Value) -> dict[str, list[bytes]]:
    """DER of every value of the unauthenticated attributes vbsim reads, by OID."""
    found: dict[str, list[bytes]] = {
        NESTED_SIGNATURE_OID: [],
        RFC3161_TIMESTAMP_OID: [],
        COUNTERSIGNATURE_OID: [],
    }
    attrs = signer["unsigned_attrs"]
    if not isinstance(attrs, cms.CMSAttributes):
        return found
    for attr in attrs:
        oid = attr["type"].dotted
        if oid in found:
            found[oid].extend(value.dump() for value in attr["values"])
    return found


def _single(attrs: core.Asn1Value, name: str) -> core.Asn1Value:
    found = [a for a in attrs if a["type"].native == name]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise MalformedSignature(f"signed attributes need exactly one {name}")
    return found[0]["values"][0]


def _program_name(attrs: core.Asn1Value) -> str | None:
    for attr in attrs:
        if attr["type"].dotted == SPC_SP_OPUS_INFO_OID and len(attr["values"]) == 1:
            opus = attr["values"][0].parse(SpcSpOpusInfo)
            if opus["program_name"].native is not None:
                return str(opus["program_name"].native)
    return None


def _decode(der: bytes) -> DecodedSignature:
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise MalformedSignature("ContentInfo is not signedData")
    signed = info["content"]
    if signed["version"].native != "v1":
        raise MalformedSignature("SignedData version is not 1 (PKCS#7 v1.5)")
    content = signed["encap_content_info"]
    if content["content_type"].dotted != SPC_INDIRECT_DATA_OID:
        raise MalformedSignature("contentInfo is not SpcIndirectDataContent")
    indirect = content["content"].parse(SpcIndirectDataContent)
    if indirect["data"]["type"].dotted != SPC_PE_IMAGE_DATA_OID:
        raise MalformedSignature("SpcIndirectDataContent does not describe a PE image")
    digest_info = indirect["message_digest"]
    digest_name = check_algorithm(digest_info["digest_algorithm"], DIGESTS)
    if len(signed["signer_infos"]) != 1:
        raise MalformedSignature("Authenticode needs exactly one SignerInfo")
    signer = signed["signer_infos"][0]
    if signer["version"].native != "v1" or signer["sid"].name != "issuer_and_serial_number":
        raise MalformedSignature("SignerInfo must be v1 with issuerAndSerialNumber")
    if check_algorithm(signer["digest_algorithm"], DIGESTS) != digest_name:
        raise MalformedSignature("signer digest differs from the image digest algorithm")
    # The Authenticode spec: digestAlgorithms "MUST contain only one" (the signer's); compared
    # by OID, whatever the parameters' encoding.
    listed = [check_algorithm(a, DIGESTS) for a in signed["digest_algorithms"]]
    if listed != [digest_name]:
        raise MalformedSignature("SignedData digestAlgorithms must list the signer's digest")
    signature_algorithm = check_algorithm(
        signer["signature_algorithm"], RSA_SIGNATURES | ECDSA_SIGNATURES
    )
    check_signature_pair(signature_algorithm, digest_name)
    attrs = signer["signed_attrs"]
    if not isinstance(attrs, cms.CMSAttributes) or len(attrs) == 0:
        raise MalformedSignature("SignerInfo has no signed attributes")
    message_digest = _single(attrs, "message_digest").native
    content_type = _single(attrs, "content_type").dotted
    certificates, others = [], 0
    for choice in signed["certificates"] or []:
        if choice.name == "certificate":
            certificates.append(choice.chosen.dump())
        else:
            others += 1  # attribute certificates etc.: not part of any chain vbsim builds
    sid = signer["sid"].chosen
    serial = sid["serial_number"]
    if core.Integer(serial.native).dump() != serial.dump():
        raise MalformedSignature("signer serial number is not canonical DER")
    unsigned = _unsigned(signer)
    return DecodedSignature(
        digest_algorithm=digest_name,
        image_digest=bytes(digest_info["digest"].native),
        indirect_data=bytes(indirect.contents),
        content_type_attr=str(content_type),
        message_digest_attr=bytes(message_digest),
        signed_attrs=b"\x31" + attrs.dump()[1:],
        signature_algorithm=signature_algorithm,
        signature=bytes(signer["signature"].native),
        signer_issuer=sid["issuer"].dump(),
        signer_serial=int(serial.native),
        certificates=tuple(certificates),
        program_name=_program_name(attrs),
        other_certificates=others,
        nested=tuple(unsigned[NESTED_SIGNATURE_OID]),
        timestamps=tuple(unsigned[RFC3161_TIMESTAMP_OID]),
        countersignatures=tuple(unsigned[COUNTERSIGNATURE_OID]),
    )


def decode_signed_data(der: bytes) -> DecodedSignature:
    """Decode and sanity-check; raises only :class:`MalformedSignature` (or its subclass)."""
    der = bytes(der)
    cached = _DECODED.get(der)
    if cached is not None:
        return cached
    try:
        decoded = _decode(der)
    except MalformedSignature:
        raise
    except Exception as exc:  # asn1crypto raises ValueError/TypeError/KeyError/... lazily
        raise MalformedSignature(f"{type(exc).__name__}: {exc}") from exc
    _DECODED.put(der, decoded)
    return decoded


#: Decoded SignedData by its exact DER (bytes, str, int and tuples: immutable); every digest
#: and signature check still runs on each verification (``vbsim.image.memo``).
_DECODED: BytesMemo[DecodedSignature] = BytesMemo(128)
