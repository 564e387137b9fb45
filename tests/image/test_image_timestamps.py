"""Timestamp countersignatures set the time a signature's chain is checked at.

A test-only timestamp authority (its own root; never the model PKI, which signs images only)
countersigns: with osslsigncode's built-in TSA for RFC 3161 tokens (``-TSA-certs -TSA-key
-TSA-time``), and by hand for the legacy PKCS #9 countersignature.  The model leaves are valid
2020-2070; verifying "in 2080" fails unless a trusted timestamp says the file was signed before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from dataclasses import dataclass

import image_testkit as kit
import pytest
from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vbsim.image import Failure, TrustStore, parse_image, verify_image
from vbsim.image.authenticode import read_certificate_table
from vbsim.image.timestamp import PKCS9, RFC3161
from vbsim.signing import Pki, sign_image

OSSLSIGNCODE = shutil.which("osslsigncode")
SIGNED_AT = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
LATER = dt.datetime(2080, 1, 1, tzinfo=dt.UTC)  # after the model leaves expire (2070)


@dataclass(frozen=True)
class Tsa:
    root: x509.Certificate
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _cert(
    name: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    eku: bool = True,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2090, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca and eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _tsa(eku: bool = True) -> Tsa:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = _cert("test TSA root", root_key, None, root_key, ca=True)
    return Tsa(root, _cert("test TSA", key, root, root_key, ca=False, eku=eku), key)


@pytest.fixture(scope="module")
def tsa() -> Tsa:
    return _tsa()


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _der(signed: bytes) -> bytes:
    entry = read_certificate_table(signed, parse_image(signed))
    assert entry is not None
    return entry.pkcs7


@pytest.fixture(scope="module")
def rfc3161_signed(
    pki: Pki, tsa: Tsa, unsigned_trustlet: bytes, tmp_path_factory: pytest.TempPathFactory
) -> bytes:
    if OSSLSIGNCODE is None:
        pytest.skip("osslsigncode is not installed (apt-get install osslsigncode)")
    work = tmp_path_factory.mktemp("tsa")
    (work / "tsa.pem").write_bytes(_pem(tsa.cert, tsa.root))
    (work / "tsa.key").write_bytes(
        tsa.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (work / "in.exe").write_bytes(unsigned_trustlet)
    done = subprocess.run(
        [
            OSSLSIGNCODE,
            *("sign", "-certs", str(pki.path("chain-codesign.pem"))),
            *("-key", str(pki.path("leaf.key"))),
            *("-TSA-certs", str(work / "tsa.pem"), "-TSA-key", str(work / "tsa.key")),
            *("-TSA-time", str(int(SIGNED_AT.timestamp()))),
            *("-in", str(work / "in.exe"), "-out", str(work / "out.exe")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return (work / "out.exe").read_bytes()


def test_an_rfc3161_timestamp_keeps_an_expired_signature_valid(
    rfc3161_signed: bytes, trust: TrustStore, tsa: Tsa
) -> None:
    with_tsa = trust + TrustStore((tsa.root,))
    result = verify_image(rfc3161_signed, with_tsa, at=LATER)
    assert result.ok, result.detail
    stamp = result.signatures[0].timestamps[0]
    assert (stamp.kind, stamp.verified, stamp.time) == (RFC3161, True, SIGNED_AT)
    assert stamp.authority == "CN=test TSA"
    assert result.signatures[0].validity_time == SIGNED_AT
    # An untrusted TSA proves nothing: the chain is checked "now" (2080) and has expired.
    alone = verify_image(rfc3161_signed, trust, at=LATER)
    assert alone.failure is Failure.CERTIFICATE_NOT_TIME_VALID
    assert not alone.signatures[0].timestamps[0].verified
    assert "TSA chain" in alone.signatures[0].timestamps[0].detail
    # And the timestamp does not make a valid file invalid today.
    assert verify_image(rfc3161_signed, trust).ok


def test_a_timestamp_of_another_signature_is_not_honoured(
    rfc3161_signed: bytes, trust: TrustStore, tsa: Tsa, pki: Pki, unsigned_trustlet: bytes
) -> None:
    """The token's messageImprint must be the hash of *this* signature value."""
    token_attrs = cms.ContentInfo.load(_der(rfc3161_signed))["content"]["signer_infos"][0][
        "unsigned_attrs"
    ]
    other = cms.ContentInfo.load(_der(sign_image(unsigned_trustlet, pki.signer("codesign"))))
    other["content"]["signer_infos"][0]["unsigned_attrs"] = token_attrs
    grafted = kit.attach_entries(unsigned_trustlet, [other.dump(force=True)])
    result = verify_image(grafted, trust + TrustStore((tsa.root,)), at=LATER)
    assert result.failure is Failure.CERTIFICATE_NOT_TIME_VALID
    assert "messageImprint" in result.signatures[0].timestamps[0].detail


def _pkcs9(signature_value: bytes, tsa: Tsa, when: dt.datetime) -> cms.SignerInfo:
    """A legacy countersignature (RFC 2985 §5.3.6) over ``signature_value``."""
    attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "signing_time", "values": [cms.Time({"utc_time": when})]},
            {"type": "message_digest", "values": [hashlib.sha256(signature_value).digest()]},
        ]
    )
    signature = tsa.key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
    cert = asn1_x509.Certificate.load(tsa.cert.public_bytes(serialization.Encoding.DER))
    return cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": cert.issuer,
                        "serial_number": cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": {"algorithm": "sha256", "parameters": core.Null()},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()},
            "signature": signature,
        }
    )


def _countersigned(signed: bytes, tsa: Tsa, unsigned: bytes, tamper: bool = False) -> bytes:
    info = cms.ContentInfo.load(_der(signed))
    content = info["content"]
    signer = content["signer_infos"][0]
    value = bytes(signer["signature"].native)
    counter = _pkcs9(value + (b"x" if tamper else b""), tsa, SIGNED_AT)
    signer["unsigned_attrs"] = [{"type": "counter_signature", "values": [counter]}]
    certs = list(content["certificates"])
    certs.append(
        cms.CertificateChoices(
            name="certificate",
            value=asn1_x509.Certificate.load(tsa.cert.public_bytes(serialization.Encoding.DER)),
        )
    )
    content["certificates"] = certs
    return kit.attach_entries(unsigned, [info.dump(force=True)])


def test_a_legacy_pkcs9_countersignature_sets_the_validity_time(
    signed_trustlet: bytes, unsigned_trustlet: bytes, trust: TrustStore, tsa: Tsa
) -> None:
    image = _countersigned(signed_trustlet, tsa, unsigned_trustlet)
    with_tsa = trust + TrustStore((tsa.root,))
    result = verify_image(image, with_tsa, at=LATER)
    assert result.ok, result.detail
    stamp = result.signatures[0].timestamps[0]
    assert (stamp.kind, stamp.verified, stamp.time) == (PKCS9, True, SIGNED_AT)
    forged = _countersigned(signed_trustlet, tsa, unsigned_trustlet, tamper=True)
    refused = verify_image(forged, with_tsa, at=LATER)
    assert refused.failure is Failure.CERTIFICATE_NOT_TIME_VALID
    assert "messageDigest" in refused.signatures[0].timestamps[0].detail


def test_a_tsa_without_the_time_stamping_eku_is_not_honoured(
    signed_trustlet: bytes, unsigned_trustlet: bytes, trust: TrustStore
) -> None:
    plain = _tsa(eku=False)
    image = _countersigned(signed_trustlet, plain, unsigned_trustlet)
    result = verify_image(image, trust + TrustStore((plain.root,)), at=LATER)
    assert result.failure is Failure.CERTIFICATE_NOT_TIME_VALID
    assert "time-stamping EKU" in result.signatures[0].timestamps[0].detail
