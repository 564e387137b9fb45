"""Authenticode signing (host side): build a PKCS#7 SignedData over an image digest with a
private key and attach it to the image.

The format is what :mod:`vbsim.image.pkcs7` decodes and :mod:`vbsim.image.authenticode`
describes.  Only host-side tools (the disk builders, the CLI, tests) sign.
"""

from __future__ import annotations

import hashlib

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vbsim.image.authenticode import _prepare, attach_signature, authenticode_digest
from vbsim.image.pkcs7 import DIGESTS, SIGNING_DIGESTS, _digest_algorithm
from vbsim.image.spc import (
    OBSOLETE_FILE_LINK,
    SPC_INDIRECT_DATA_OID,
    SPC_INDIVIDUAL_SP_KEY_PURPOSE_OID,
    SPC_PE_IMAGE_DATA_OID,
    SPC_SP_OPUS_INFO_OID,
    SPC_STATEMENT_TYPE_OID,
    SpcContentInfo,
    SpcIndirectDataContent,
    SpcLink,
    SpcPeImageData,
    SpcSpOpusInfo,
    SpcStatementType,
    SpcString,
)
from vbsim.signing.signer import Signer


def build_signed_data(
    image_digest: bytes,
    signer: Signer,
    *,
    digest_name: str = "sha256",
    program_name: str | None = None,
    more_info_url: str | None = None,
) -> bytes:
    """DER of a ContentInfo(SignedData) signing ``image_digest`` (the Authenticode hash)."""
    if digest_name not in SIGNING_DIGESTS:
        raise ValueError(f"unsupported digest {digest_name} (signing: {sorted(SIGNING_DIGESTS)})")
    indirect = SpcIndirectDataContent(
        {
            "data": {
                "type": SPC_PE_IMAGE_DATA_OID,
                "value": SpcPeImageData(
                    {
                        "flags": set(),
                        "file": SpcLink({"file": SpcString({"unicode": OBSOLETE_FILE_LINK})}),
                    }
                ),
            },
            "message_digest": {
                "digest_algorithm": _digest_algorithm(digest_name),
                "digest": image_digest,
            },
        }
    )
    indirect.dump()
    message_digest = hashlib.new(digest_name, indirect.contents).digest()
    opus: dict[str, object] = {}
    if program_name is not None:
        opus["program_name"] = SpcString({"unicode": program_name})
    if more_info_url is not None:
        opus["more_info"] = SpcLink({"url": more_info_url})
    # asn1crypto cannot encode an empty Sequence built from {}; load the empty DER instead.
    opus_info = SpcSpOpusInfo(opus) if opus else SpcSpOpusInfo.load(b"\x30\x00")
    signed_attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": [SPC_INDIRECT_DATA_OID]},
            {"type": "message_digest", "values": [message_digest]},
            {"type": SPC_SP_OPUS_INFO_OID, "values": [opus_info]},
            {
                "type": SPC_STATEMENT_TYPE_OID,
                "values": [SpcStatementType([SPC_INDIVIDUAL_SP_KEY_PURPOSE_OID])],
            },
        ]
    )
    to_sign = signed_attrs.dump()
    hash_algorithm = DIGESTS[digest_name]()
    if isinstance(signer.key, rsa.RSAPrivateKey):
        signature = signer.key.sign(to_sign, padding.PKCS1v15(), hash_algorithm)
        signature_algorithm = {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
    else:
        signature = signer.key.sign(to_sign, ec.ECDSA(hash_algorithm))
        signature_algorithm = {"algorithm": f"{digest_name}_ecdsa"}
    certificates = [
        asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
        for c in (signer.certificate, *signer.chain)
    ]
    leaf = certificates[0]
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": leaf.issuer,
                        "serial_number": leaf.serial_number,
                    }
                }
            ),
            "digest_algorithm": _digest_algorithm(digest_name),
            "signed_attrs": signed_attrs,
            "signature_algorithm": signature_algorithm,
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [_digest_algorithm(digest_name)],
            "encap_content_info": SpcContentInfo(
                {"content_type": SPC_INDIRECT_DATA_OID, "content": indirect}
            ),
            "certificates": certificates,
            "signer_infos": [signer_info],
        }
    )
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return der


def sign_image(
    data: bytes,
    signer: Signer,
    *,
    digest_name: str = "sha256",
    program_name: str | None = None,
    more_info_url: str | None = None,
) -> bytes:
    """Authenticode-sign ``data`` (replacing any existing signature).

    Raises :class:`ImageFormatError` if ``data`` is not a PE, ``ValueError`` if it cannot
    carry a signature.
    """
    buf, parsed = _prepare(data)
    digest = authenticode_digest(bytes(buf), parsed, digest_name)
    der = build_signed_data(
        digest,
        signer,
        digest_name=digest_name,
        program_name=program_name,
        more_info_url=more_info_url,
    )
    return attach_signature(bytes(buf), der)
