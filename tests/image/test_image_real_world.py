"""Real-world Authenticode shapes, generated with osslsigncode so that no network is needed.

Each case is one shape the issue found in real files: a SHA-1 primary signature with a nested
SHA-256 one (dual-signed Microsoft files), two WIN_CERTIFICATE entries (Debian's shim), an extra
undecodable certificate (an md2-signed legacy root added with ``osslsigncode -ac``), algorithm
identifiers with absent parameters (RFC 5754), certificates that make cryptography warn.  Where
osslsigncode can verify the same file, its digest and verdict are compared with vbsim's.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import image_testkit as kit
import pytest
from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vbsim.image import Failure, TrustStore, parse_image, strip_signature, verify_image
from vbsim.image.authenticode import read_certificate_entries, read_certificate_table
from vbsim.image.chain import load_certificate
from vbsim.signing import Pki, sign_image
from vbsim.signing import authenticode as signing_module

OSSLSIGNCODE = shutil.which("osslsigncode")
needs_osslsigncode = pytest.mark.skipif(
    OSSLSIGNCODE is None, reason="osslsigncode is not installed (apt-get install osslsigncode)"
)


def osslsigncode(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert OSSLSIGNCODE is not None
    return subprocess.run(
        [OSSLSIGNCODE, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def ossl_digests(path: Path, ca: Path) -> tuple[int, list[str]]:
    """osslsigncode verify's exit status and every "Calculated message digest" it printed."""
    done = osslsigncode("verify", "-CAfile", ca, "-in", path)
    output = done.stdout + done.stderr
    found = re.findall(r"Calculated message digest\s*:\s*([0-9A-F]+)", output)
    return done.returncode, [d.lower() for d in found]


def _sign(pki: Pki, source: Path, out: Path, *extra: str | Path) -> None:
    done = osslsigncode(
        "sign",
        "-certs",
        pki.path("chain-codesign.pem"),
        "-key",
        pki.path("leaf.key"),
        *extra,
        "-in",
        source,
        "-out",
        out,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def md2_root_pem(tmp_path: Path) -> Path:
    """A legacy root whose signature algorithm is md2WithRSAEncryption (1.2.840.113549.1.1.2).

    OpenSSL 3 cannot sign with MD2, so an MD5-signed self-signed certificate gets its two
    signatureAlgorithm OIDs rewritten: OpenSSL still reads it (osslsigncode -ac embeds it),
    cryptography cannot decode it, like the md2 roots of old Authenticode signatures.
    """
    key, cert = tmp_path / "legacy.key", tmp_path / "legacy.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-md5", "-days", "30"),
            *("-subj", "/CN=legacy md2 root", "-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    md5_rsa = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x04"
    assert der.count(md5_rsa) == 2
    patched = der.replace(md5_rsa, md5_rsa[:-1] + b"\x02")
    out = tmp_path / "md2.pem"
    b64 = base64.encodebytes(patched).decode()
    out.write_text(f"-----BEGIN CERTIFICATE-----\n{b64}-----END CERTIFICATE-----\n")
    return out


@pytest.fixture(scope="module")
def unsigned_file(tmp_path_factory: pytest.TempPathFactory, unsigned_trustlet: bytes) -> Path:
    path = tmp_path_factory.mktemp("real-world") / "unsigned.exe"
    path.write_bytes(unsigned_trustlet)
    return path


# -- SHA-1 primary + nested SHA-256 ---------------------------------------------------------------
@pytest.fixture(scope="module")
def dual_signed(pki: Pki, unsigned_file: Path) -> Path:
    if OSSLSIGNCODE is None:
        pytest.skip("osslsigncode is not installed (apt-get install osslsigncode)")
    sha1, dual = unsigned_file.with_name("sha1.exe"), unsigned_file.with_name("dual.exe")
    _sign(pki, unsigned_file, sha1, "-h", "sha1")
    _sign(pki, sha1, dual, "-h", "sha256", "-nest")
    return dual


def test_sha1_primary_and_nested_sha256_both_verify(
    dual_signed: Path, trust: TrustStore, pki: Pki
) -> None:
    result = verify_image(dual_signed.read_bytes(), trust)
    assert result.ok, result.detail
    assert [s.label for s in result.signatures] == ["primary", "nested 1"]
    primary, nested = result.signatures
    assert (primary.digest_algorithm, primary.weak, primary.ok) == ("sha1", True, True)
    assert (nested.digest_algorithm, nested.weak, nested.ok) == ("sha256", False, True)
    assert result.decided_by == 0 and len(primary.chain) == 3
    status, digests = ossl_digests(dual_signed, pki.path("root.pem"))
    assert status == 0
    assert digests == [primary.image_digest.hex(), nested.image_digest.hex()]  # type: ignore[union-attr]


def test_a_tampered_dual_signed_file_fails_in_every_signature(
    dual_signed: Path, trust: TrustStore, pki: Pki, tmp_path: Path
) -> None:
    data = bytearray(dual_signed.read_bytes())
    text = parse_image(bytes(data)).section(".text")
    assert text is not None
    data[text.raw_offset + 3] ^= 0x40
    result = verify_image(bytes(data), trust, strict=False)
    assert result.failure is Failure.DIGEST_MISMATCH
    assert [s.failure for s in result.signatures] == [Failure.DIGEST_MISMATCH] * 2
    # The chain is still built and reported: the signer does chain to the model root.
    assert all(s.chain_trusted for s in result.signatures)
    tampered = tmp_path / "tampered.exe"
    tampered.write_bytes(bytes(data))
    assert ossl_digests(tampered, pki.path("root.pem"))[0] != 0


def test_a_broken_primary_leaves_the_nested_signature_deciding(
    dual_signed: Path, trust: TrustStore
) -> None:
    data = dual_signed.read_bytes()
    entry = read_certificate_table(data, parse_image(data))
    assert entry is not None
    info = cms.ContentInfo.load(entry.pkcs7)
    signer = info["content"]["signer_infos"][0]
    value = bytearray(signer["signature"].native)
    value[5] ^= 1
    signer["signature"] = bytes(value)
    broken = kit.attach_entries(strip_signature(data), [info.dump(force=True)])
    result = verify_image(broken, trust)
    assert result.ok and result.decided_by == 1
    assert result.signatures[0].failure is Failure.BAD_SIGNATURE
    assert result.digest_algorithm == "sha256"


# -- two WIN_CERTIFICATE entries ------------------------------------------------------------------
def test_two_certificate_table_entries_are_both_read(
    pki: Pki, other: Pki, unsigned_trustlet: bytes, trust: TrustStore
) -> None:
    first = read_certificate_table(
        signed := sign_image(unsigned_trustlet, other.signer("codesign")), parse_image(signed)
    )
    second_image = sign_image(unsigned_trustlet, pki.signer("codesign"), digest_name="sha384")
    second = read_certificate_table(second_image, parse_image(second_image))
    assert first is not None and second is not None
    both = kit.attach_entries(unsigned_trustlet, [first.pkcs7, second.pkcs7])
    entries = read_certificate_entries(both, parse_image(both))
    assert [e.pkcs7 for e in entries] == [first.pkcs7, second.pkcs7]
    result = verify_image(both, trust)
    assert result.ok, result.detail
    assert [s.label for s in result.signatures] == ["primary", "entry 1"]
    assert result.signatures[0].failure is Failure.UNTRUSTED_ROOT
    assert result.decided_by == 1 and result.digest_algorithm == "sha384"
    # Neither entry is trusted by an empty store: the primary's failure is reported.
    none = verify_image(both, TrustStore(()))
    assert none.failure is Failure.UNTRUSTED_ROOT and none.decided_by == 0


def test_a_truncated_second_entry_is_a_malformed_table(
    pki: Pki, unsigned_trustlet: bytes, trust: TrustStore
) -> None:
    signed = sign_image(unsigned_trustlet, pki.signer("codesign"))
    der = _der(signed)
    both = bytearray(kit.attach_entries(unsigned_trustlet, [der, der]))
    offset = len(both) - (8 + len(der) + (-len(der) % 8))
    both[offset : offset + 4] = (10**6).to_bytes(4, "little")
    assert verify_image(bytes(both), trust).failure is Failure.MALFORMED_CERTIFICATE_TABLE


def _der(signed: bytes) -> bytes:
    entry = read_certificate_table(signed, parse_image(signed))
    assert entry is not None
    return entry.pkcs7


# -- an undecodable certificate -------------------------------------------------------------------
def test_an_undecodable_md2_root_is_skipped_and_reported(
    pki: Pki, unsigned_file: Path, trust: TrustStore, tmp_path: Path
) -> None:
    if OSSLSIGNCODE is None:
        pytest.skip("osslsigncode is not installed (apt-get install osslsigncode)")
    md2 = md2_root_pem(tmp_path)
    with pytest.raises(ValueError, match="undecodable"):
        load_certificate(x509.load_pem_x509_certificate(md2.read_bytes()))
    signed = tmp_path / "extra-cert.exe"
    _sign(pki, unsigned_file, signed, "-ac", md2)
    result = verify_image(signed.read_bytes(), trust)
    assert result.ok, result.detail
    primary = result.signatures[0]
    assert len(primary.skipped_certificates) == 1
    assert "1.2.840.113549.1.1.2" in primary.skipped_certificates[0]
    status, digests = ossl_digests(signed, pki.path("root.pem"))
    assert status == 0 and digests == [primary.image_digest.hex()]  # type: ignore[union-attr]


def test_certificates_that_make_cryptography_warn_are_not_errors(pki: Pki) -> None:
    root = asn1_x509.Certificate.load(_root_der(pki))
    root["tbs_certificate"]["serial_number"] = -5
    with pytest.warns(Warning):
        x509.load_der_x509_certificate(root.dump(force=True))
    loaded = load_certificate(root.dump(force=True))
    assert loaded.info.serial == -5 and loaded.notes


def _root_der(pki: Pki) -> bytes:
    cert = x509.load_pem_x509_certificate(pki.path("root.pem").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


# -- algorithm identifiers ------------------------------------------------------------------------
def _absent(name: str) -> algos.DigestAlgorithm:
    """SEQUENCE { OID } with no parameters (asn1crypto would add NULL if built from a dict)."""
    oid = algos.DigestAlgorithmId(name).dump()
    return algos.DigestAlgorithm.load(bytes([0x30, len(oid)]) + oid)


def test_digest_algorithms_with_absent_parameters_verify(
    pki: Pki, unsigned_trustlet: bytes, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5754 §2: absent and NULL parameters are both SHA-2; the OID decides."""
    monkeypatch.setattr(signing_module, "_digest_algorithm", _absent)
    signed = sign_image(unsigned_trustlet, pki.signer("codesign"))
    info = cms.ContentInfo.load(_der(signed))
    assert info["content"]["digest_algorithms"][0]["parameters"].dump() == b""
    assert verify_image(signed, trust).ok
    # Mixed: NULL in the (unsigned) SignerInfo and digestAlgorithms, absent in the signed data.
    content = info["content"]
    null = algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()})
    content["digest_algorithms"] = [null]
    content["signer_infos"][0]["digest_algorithm"] = null
    content["signer_infos"][0]["signature_algorithm"] = {"algorithm": "sha256_rsa"}
    mixed = kit.attach_entries(unsigned_trustlet, [info.dump(force=True)])
    assert verify_image(mixed, trust).ok


# -- labels ---------------------------------------------------------------------------------------
def test_a_corrupted_intermediate_is_an_invalid_chain_not_an_untrusted_root(
    signed_trustlet: bytes, trust: TrustStore
) -> None:
    info = cms.ContentInfo.load(_der(signed_trustlet))
    certs = info["content"]["certificates"]
    index = next(i for i, c in enumerate(certs) if c.chosen.ca)
    intermediate = certs[index].chosen
    intermediate["tbs_certificate"]["serial_number"] = intermediate.serial_number + 1
    certs[index] = cms.CertificateChoices(
        name="certificate", value=asn1_x509.Certificate.load(intermediate.dump(force=True))
    )
    corrupted = kit.attach_entries(strip_signature(signed_trustlet), [info.dump(force=True)])
    result = verify_image(corrupted, trust)
    assert result.failure is Failure.INVALID_CHAIN, result.detail
    assert "does not verify" in result.detail
