"""Authenticode signing and verification: the valid case and one test per failed check."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct

import image_testkit as kit
import pytest
from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vbsim.image import (
    EKU_CODE_SIGNING,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    ComponentFloor,
    Failure,
    FindingKind,
    RevocationPolicy,
    RevocationReason,
    SigningLevel,
    SigningRequirement,
    TrustStore,
    attach_signature,
    authenticode_digest,
    parse_image,
    requirement_for,
    strip_signature,
    verify_image,
)
from vbsim.image.authenticode import read_certificate_table
from vbsim.image.spc import SpcIndirectDataContent
from vbsim.signing import Pki, Signer, build_signed_data, sign_image

TRUSTLET = requirement_for("trustlet")


def _pkcs7(signed: bytes) -> bytes:
    table = read_certificate_table(signed, parse_image(signed))
    assert table is not None
    return table.pkcs7


def _reattach(signed: bytes, der: bytes) -> bytes:
    return attach_signature(strip_signature(signed), der)


def test_valid_trustlet(signed_trustlet: bytes, trust: TrustStore) -> None:
    result = verify_image(signed_trustlet, trust, requirement=TRUSTLET)
    assert result.ok, result.detail
    assert result.failure is None and result.detail == "valid"
    assert result.signing_level is SigningLevel.WINDOWS
    assert result.ekus == {EKU_CODE_SIGNING, EKU_WINDOWS_SYSTEM_COMPONENT, EKU_IUM}
    assert [c.subject.split(",")[0] for c in result.chain] == [
        "CN=vbsim model ium signer",
        "CN=vbsim model intermediate CA",
        "CN=vbsim model root",
    ]
    assert result.chain[0].ekus == (EKU_CODE_SIGNING, EKU_WINDOWS_SYSTEM_COMPONENT, EKU_IUM)
    assert result.chain[1].ekus is None and result.chain[1].is_ca
    assert result.program_name == "LsaIso"
    assert result.digest_algorithm == "sha256"
    assert result.image_digest == authenticode_digest(signed_trustlet)
    assert result.image is not None and result.image.policy == kit.policy()


def test_certificate_table_layout(signed_trustlet: bytes, unsigned_trustlet: bytes) -> None:
    image = parse_image(signed_trustlet)
    assert image.certificate_table is not None
    offset, size = image.certificate_table
    assert offset == len(unsigned_trustlet) and offset % 8 == 0 and size % 8 == 0
    assert offset + size == len(signed_trustlet)
    length, revision, cert_type = struct.unpack_from("<IHH", signed_trustlet, offset)
    assert (length, revision, cert_type) == (size, 0x0200, 0x0002)
    assert signed_trustlet[:offset] != unsigned_trustlet  # directory entry and checksum set
    assert strip_signature(signed_trustlet)[:offset] == kit.fix_checksum(unsigned_trustlet)


def test_digest_excludes_checksum_entry_and_table(signed_trustlet: bytes) -> None:
    image = parse_image(signed_trustlet)
    assert image.certificate_table is not None and image.security_entry_offset is not None
    offset, _ = image.certificate_table
    body = bytearray(signed_trustlet[:offset])
    body[image.checksum_offset : image.checksum_offset + 4] = b""
    entry = image.security_entry_offset - 4
    body[entry : entry + 8] = b""
    assert authenticode_digest(signed_trustlet) == hashlib.sha256(body).digest()


@pytest.mark.parametrize("profile", ["ium", "windows", "codesign"])
def test_profiles_and_levels(pki: Pki, unsigned_trustlet: bytes, profile: str) -> None:
    result = verify_image(sign_image(unsigned_trustlet, pki.signer(profile)), pki.trust_store())
    assert result.ok
    expected = SigningLevel.AUTHENTICODE if profile == "codesign" else SigningLevel.WINDOWS
    assert result.signing_level is expected


@pytest.mark.parametrize("digest", ["sha384", "sha512"])
def test_other_digests(pki: Pki, unsigned_trustlet: bytes, digest: str) -> None:
    signed = sign_image(unsigned_trustlet, pki.signer(), digest_name=digest)
    result = verify_image(signed, pki.trust_store(), requirement=TRUSTLET)
    assert result.ok and result.digest_algorithm == digest


def test_ecdsa_signer(pki: Pki, unsigned_trustlet: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ium = pki.signer("ium").certificate
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=vbsim model ecdsa signer"))
        .issuer_name(pki.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ium.not_valid_before_utc)
        .not_valid_after(ium.not_valid_after_utc)
        .add_extension(ium.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value, False)
        .sign(pki.intermediate_key, hashes.SHA256())
    )
    signed = sign_image(unsigned_trustlet, Signer(key, cert, (pki.intermediate,)))
    assert verify_image(signed, pki.trust_store(), requirement=TRUSTLET).ok


def test_resigning_replaces_the_signature(pki: Pki, signed_trustlet: bytes) -> None:
    again = sign_image(signed_trustlet, pki.signer("codesign"))
    assert len(again) < 2 * len(signed_trustlet)
    result = verify_image(again, pki.trust_store())
    assert result.ok and result.signing_level is SigningLevel.AUTHENTICODE


# --- one test per failed check ----------------------------------------------------------------


def test_unsigned(unsigned_trustlet: bytes, signed_trustlet: bytes, trust: TrustStore) -> None:
    assert verify_image(unsigned_trustlet, trust).failure is Failure.NO_SIGNATURE
    stripped = strip_signature(signed_trustlet)
    assert verify_image(stripped, trust).failure is Failure.NO_SIGNATURE


@pytest.mark.parametrize("section", [".text", ".data", ".tPolicy", ".rsrc", ".edata"])
def test_tampered_section_byte(signed_trustlet: bytes, trust: TrustStore, section: str) -> None:
    offset, _ = kit.section_raw(signed_trustlet, section)
    tampered = kit.fix_checksum(kit.patch(signed_trustlet, offset + 1, b"\x42"))
    assert verify_image(tampered, trust).failure is Failure.DIGEST_MISMATCH


@pytest.mark.parametrize("offset", [0x2, 0x40, 0x80])  # DOS header, DOS stub, PE headers
def test_tampered_header_byte(signed_trustlet: bytes, trust: TrustStore, offset: int) -> None:
    tampered = bytearray(signed_trustlet)
    tampered[offset] ^= 0x01
    assert verify_image(bytes(tampered), trust).failure is Failure.DIGEST_MISMATCH


def test_tampered_checksum(signed_trustlet: bytes, trust: TrustStore) -> None:
    offset = parse_image(signed_trustlet).checksum_offset
    tampered = kit.patch(signed_trustlet, offset, b"\0\0\0\0")
    strict = verify_image(tampered, trust)
    assert strict.failure is Failure.CHECKSUM_MISMATCH
    # The checksum is a finding apart from the Authenticode verdict (signtool, osslsigncode).
    lenient = verify_image(tampered, trust, strict=False)
    assert lenient.ok and lenient.signature is not None and lenient.signature.ok
    assert [f.kind for f in lenient.findings] == [FindingKind.CHECKSUM]
    assert "stored 0x00000000" in lenient.findings[0].detail
    assert verify_image(signed_trustlet, trust).findings == ()


def test_truncated(signed_trustlet: bytes, trust: TrustStore) -> None:
    assert verify_image(signed_trustlet[:-8], trust).failure is (
        Failure.MALFORMED_CERTIFICATE_TABLE
    )
    assert verify_image(signed_trustlet[:200], trust).failure is Failure.MALFORMED_IMAGE
    assert verify_image(b"", trust).failure is Failure.MALFORMED_IMAGE


def test_appended_data(signed_trustlet: bytes, trust: TrustStore) -> None:
    result = verify_image(signed_trustlet + b"\0" * 8, trust)
    assert result.failure is Failure.MALFORMED_CERTIFICATE_TABLE


def test_bad_win_certificate_header(signed_trustlet: bytes, trust: TrustStore) -> None:
    image = parse_image(signed_trustlet)
    assert image.certificate_table is not None
    offset = image.certificate_table[0]
    for field, value in ((4, b"\x00\x01"), (6, b"\x01\x00"), (0, b"\x08\x00\x00\x00")):
        tampered = kit.patch(signed_trustlet, offset + field, value)
        assert verify_image(tampered, trust).failure is Failure.MALFORMED_CERTIFICATE_TABLE


def test_padding_is_a_finding_apart_from_the_verdict(
    signed_trustlet: bytes, trust: TrustStore
) -> None:
    der = _pkcs7(signed_trustlet)
    padded = attach_signature(strip_signature(signed_trustlet), der + b"\0" * 8)
    assert verify_image(padded, trust).failure is Failure.PADDING
    lenient = verify_image(padded, trust, strict=False)
    assert lenient.ok
    assert [f.kind for f in lenient.findings] == [FindingKind.PADDING]
    # the 8 extra bytes plus attach_signature's own alignment to 8 (the DER's length varies
    # with the test certificate's random serial number)
    extra = 8 + -(len(der) + 8) % 8
    assert f"{extra} bytes after the PKCS#7" in lenient.findings[0].detail
    dirty = bytearray(attach_signature(strip_signature(signed_trustlet), der + b"\0"))
    dirty[-1 - (-(len(der) + 1) % 8)] = 0x5A
    dirty_image = kit.fix_checksum(bytes(dirty))
    assert verify_image(dirty_image, trust).failure is Failure.PADDING
    assert verify_image(dirty_image, trust, strict=False).ok


def test_dwlength_without_the_padding_is_a_padding_finding(
    pki: Pki, unsigned_trustlet: bytes, trust: TrustStore
) -> None:
    # A program name of the right length makes the PKCS#7 need padding (its length mod 8 != 0).
    image = next(
        signed
        for size in range(1, 9)
        if len(
            _pkcs7(
                signed := sign_image(
                    unsigned_trustlet, pki.signer("codesign"), program_name="p" * size
                )
            )
        )
        % 8
    )
    der = _pkcs7(image)
    parsed = parse_image(image)
    assert parsed.certificate_table is not None
    offset = parsed.certificate_table[0]
    (length,) = struct.unpack_from("<I", image, offset)
    assert length == 8 + len(der) + (-len(der) % 8) and length > 8 + len(der)
    tampered = kit.fix_checksum(kit.patch(image, offset, struct.pack("<I", 8 + len(der))))
    assert verify_image(tampered, trust).failure is Failure.PADDING
    lenient = verify_image(tampered, trust, strict=False)
    assert lenient.ok and "does not include the padding" in lenient.findings[0].detail


def test_malformed_pkcs7(signed_trustlet: bytes, trust: TrustStore) -> None:
    garbage = _reattach(signed_trustlet, b"\x30\x03\x02\x01\x01")
    assert verify_image(garbage, trust).failure is Failure.MALFORMED_PKCS7
    not_der = _reattach(signed_trustlet, b"not a signature!")
    assert verify_image(not_der, trust).failure is Failure.MALFORMED_PKCS7


def _modified(signed: bytes, edit: object) -> bytes:
    info = cms.ContentInfo.load(_pkcs7(signed))
    edit(info["content"])  # type: ignore[operator]
    return _reattach(signed, info.dump(force=True))


def test_unsupported_algorithm(signed_trustlet: bytes, trust: TrustStore) -> None:
    def to_md5(signed_data: cms.SignedData) -> None:
        content = signed_data["encap_content_info"]["content"]
        indirect = content.parse(SpcIndirectDataContent)
        indirect["message_digest"]["digest_algorithm"] = algos.DigestAlgorithm({"algorithm": "md5"})

    result = verify_image(_modified(signed_trustlet, to_md5), trust)
    assert result.failure is Failure.UNSUPPORTED_ALGORITHM


def test_message_digest_mismatch(signed_trustlet: bytes, trust: TrustStore) -> None:
    der = _pkcs7(signed_trustlet)
    obsolete = "<<<Obsolete>>>".encode("utf-16-be")
    assert obsolete in der
    tampered = der.replace(obsolete, "<<<0bsolete>>>".encode("utf-16-be"))
    result = verify_image(_reattach(signed_trustlet, tampered), trust)
    assert result.failure is Failure.MESSAGE_DIGEST_MISMATCH


def test_signer_not_found(signed_trustlet: bytes, trust: TrustStore) -> None:
    def drop_leaf(signed_data: cms.SignedData) -> None:
        keep = [
            c
            for c in signed_data["certificates"]
            if "signer" not in c.chosen.subject.native["common_name"]
        ]
        assert len(keep) == 1
        signed_data["certificates"] = keep

    result = verify_image(_modified(signed_trustlet, drop_leaf), trust)
    assert result.failure is Failure.SIGNER_NOT_FOUND


def test_bad_signature(pki: Pki, other: Pki, unsigned_trustlet: bytes) -> None:
    wrong_key = Signer(other.leaf_key, pki.signer().certificate, (pki.intermediate,))
    result = verify_image(sign_image(unsigned_trustlet, wrong_key), pki.trust_store())
    assert result.failure is Failure.BAD_SIGNATURE


def test_chain_to_another_root(other: Pki, unsigned_trustlet: bytes, trust: TrustStore) -> None:
    signed = sign_image(unsigned_trustlet, other.signer("ium"))
    result = verify_image(signed, trust, requirement=TRUSTLET)
    assert result.failure is Failure.UNTRUSTED_ROOT
    assert "vbsim other root" in result.detail
    assert verify_image(signed, other.trust_store(), requirement=TRUSTLET).ok
    assert verify_image(signed, TrustStore(()), requirement=TRUSTLET).failure is (
        Failure.UNTRUSTED_ROOT
    )


def test_missing_intermediate(pki: Pki, unsigned_trustlet: bytes) -> None:
    leaf_only = Signer(pki.leaf_key, pki.signer().certificate, ())
    result = verify_image(sign_image(unsigned_trustlet, leaf_only), pki.trust_store())
    assert result.failure is Failure.UNTRUSTED_ROOT


def test_intermediate_that_is_not_a_ca(pki: Pki, unsigned_trustlet: bytes) -> None:
    not_ca = pki.make_leaf([EKU_CODE_SIGNING], "vbsim model not-a-CA").certificate
    ium = pki.signer("ium").certificate
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=issued by a non-CA"))
        .issuer_name(not_ca.subject)
        .public_key(pki.leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ium.not_valid_before_utc)
        .not_valid_after(ium.not_valid_after_utc)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(EKU_CODE_SIGNING)]), False)
        .sign(pki.leaf_key, hashes.SHA256())
    )
    signer = Signer(pki.leaf_key, leaf, (not_ca, pki.intermediate))
    result = verify_image(sign_image(unsigned_trustlet, signer), pki.trust_store())
    assert result.failure is Failure.INVALID_CHAIN
    assert "not a CA" in result.detail


@pytest.mark.parametrize("year", [2010, 2090])
def test_certificate_not_time_valid(signed_trustlet: bytes, trust: TrustStore, year: int) -> None:
    at = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    result = verify_image(signed_trustlet, trust, at=at)
    assert result.failure is Failure.CERTIFICATE_NOT_TIME_VALID


def test_missing_eku(pki: Pki, unsigned_trustlet: bytes) -> None:
    no_ium = sign_image(unsigned_trustlet, pki.signer("windows"))
    result = verify_image(no_ium, pki.trust_store(), requirement=TRUSTLET)
    assert result.failure is Failure.MISSING_EKU and EKU_IUM in result.detail
    no_codesign = sign_image(unsigned_trustlet, pki.make_leaf([EKU_IUM]))
    assert verify_image(no_codesign, pki.trust_store()).failure is Failure.MISSING_EKU
    no_eku = sign_image(unsigned_trustlet, pki.make_leaf([]))
    assert verify_image(no_eku, pki.trust_store()).failure is Failure.MISSING_EKU


def test_signing_level_too_low(pki: Pki, unsigned_trustlet: bytes) -> None:
    # IUM EKU present, but no Windows System Component Verification: level 4, not 12.  The
    # trustlet requirement names WSCV itself (issue 11 item 14), so it is a missing EKU there;
    # a requirement of IUM alone at level 12 shows the level check.
    signer = pki.make_leaf([EKU_CODE_SIGNING, EKU_IUM])
    signed = sign_image(unsigned_trustlet, signer)
    result = verify_image(signed, pki.trust_store(), requirement=TRUSTLET)
    assert result.failure is Failure.MISSING_EKU and EKU_WINDOWS_SYSTEM_COMPONENT in result.detail
    ium_at_12 = SigningRequirement(frozenset({EKU_IUM}), SigningLevel.WINDOWS)
    result = verify_image(signed, pki.trust_store(), requirement=ium_at_12)
    assert result.failure is Failure.SIGNING_LEVEL_TOO_LOW
    assert result.signing_level is SigningLevel.AUTHENTICODE


def test_custom_requirement(signed_trustlet: bytes, trust: TrustStore) -> None:
    enclave = SigningRequirement(frozenset({"1.3.6.1.4.1.311.10.3.42"}))
    assert verify_image(signed_trustlet, trust, requirement=enclave).failure is (
        Failure.MISSING_EKU
    )


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (RevocationPolicy({"lsaiso.exe": ComponentFloor(min_svn=4)}), "svn-below-minimum"),
        (
            RevocationPolicy({"LSAISO.EXE": ComponentFloor(min_version=(10, 0, 19041, 2000))}),
            "version-below-minimum",
        ),
    ],
)
def test_revoked_by_version(
    signed_trustlet: bytes, trust: TrustStore, policy: RevocationPolicy, reason: str
) -> None:
    result = verify_image(signed_trustlet, trust, revocation=policy)
    assert result.failure is Failure.REVOKED
    assert result.revocation is not None and result.revocation.reason == reason


def test_revoked_certificate_and_hash(signed_trustlet: bytes, trust: TrustStore) -> None:
    valid = verify_image(signed_trustlet, trust)
    assert valid.image_digest is not None
    by_cert = RevocationPolicy(revoked_certificates=frozenset({valid.chain[1].sha256.upper()}))
    result = verify_image(signed_trustlet, trust, revocation=by_cert)
    assert result.revocation is not None
    assert result.revocation.reason is RevocationReason.CERTIFICATE_REVOKED
    by_hash = RevocationPolicy(revoked_image_hashes=frozenset({valid.image_digest.hex()}))
    result = verify_image(signed_trustlet, trust, revocation=by_hash)
    assert result.revocation is not None
    assert result.revocation.reason is RevocationReason.IMAGE_HASH_REVOKED
    current = RevocationPolicy({"lsaiso.exe": ComponentFloor((10, 0, 19041, 1234), 3)})
    result = verify_image(signed_trustlet, trust, revocation=current)
    assert result.ok and result.revocation is not None and not result.revocation.revoked


def test_build_signed_data_rejects_unknown_digest(pki: Pki) -> None:
    with pytest.raises(ValueError):
        build_signed_data(b"\0" * 20, pki.signer(), digest_name="sha1")


def test_accepts_bytes_like_input(signed_trustlet: bytes, trust: TrustStore) -> None:
    assert verify_image(bytearray(signed_trustlet), trust).ok  # type: ignore[arg-type]
    assert verify_image(memoryview(signed_trustlet), trust).ok  # type: ignore[arg-type]
