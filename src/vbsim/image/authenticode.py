"""Authenticode for PE images: the image digest and the certificate table (signing is host
side: :mod:`vbsim.signing.authenticode`).

Per Microsoft's "Windows Authenticode Portable Executable Signature Format", the digest covers
the whole file except the ``CheckSum`` field, the Certificate Table data-directory entry, and the
certificate table itself.  vbsim hashes the file in order with those three ranges left out; for
the usual layout (sections contiguous, certificate table last) this is exactly the spec's
header + sorted-sections + trailing-data procedure, and it also covers any gap bytes.

The certificate table is a sequence of ``WIN_CERTIFICATE`` entries {dwLength, wRevision = 0x0200
(WIN_CERT_REVISION_2_0), wCertificateType = 0x0002 (WIN_CERT_TYPE_PKCS_SIGNED_DATA)}, each holding
one DER PKCS#7 and starting on an 8-byte boundary (PE/COFF specification, "The Attribute
Certificate Table").  vbsim signs with one entry, zero-padded to 8 bytes, at the end of the file
(``dwLength`` and the directory size include the padding).  Real files may carry several: UEFI
firmware accepts an image when any entry verifies (EDK II ``DxeImageVerificationLib``), so
Debian's shim carries one signature by Microsoft UEFI CA 2011 and one by 2023.

The padding is not covered by any signature.  A ``dwLength`` that excludes it, or non-zero or
8+ padding bytes, is reported as a *padding finding* (:attr:`WinCertificate.padding_issue`),
which the model's loaders refuse but which is not part of the Authenticode verdict (signtool and
osslsigncode do not fail a signature for it).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from asn1crypto import parser

from vbsim.image.checksum import pe_checksum
from vbsim.image.parse import ParsedImage, parse_image

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
_WIN_CERTIFICATE = struct.Struct("<IHH")  # dwLength, wRevision, wCertificateType
_DIRECTORY_ENTRY = struct.Struct("<II")  # VirtualAddress (a file offset here), Size


class CertificateTableError(Exception):
    """The certificate table or its WIN_CERTIFICATE framing is malformed."""


@dataclass(frozen=True)
class WinCertificate:
    offset: int
    length: int
    revision: int
    certificate_type: int
    #: The PKCS#7 DER (exactly one TLV) and the bytes after it up to the next 8-byte boundary.
    pkcs7: bytes
    padding: bytes
    #: Why the padding is not what the spec asks (None when it is): a padding finding.
    padding_issue: str | None = None


def authenticode_digest(
    data: bytes, parsed: ParsedImage | None = None, digest_name: str = "sha256"
) -> bytes:
    """The Authenticode hash of ``data`` (parsed with :func:`parse_image` if not given)."""
    parsed = parsed if parsed is not None else parse_image(data)
    digest = hashlib.new(digest_name)
    view = memoryview(data)
    skip = [(parsed.checksum_offset, 4)]
    if parsed.security_entry_offset is not None:
        skip.append((parsed.security_entry_offset, _DIRECTORY_ENTRY.size))
    if parsed.certificate_table is not None:
        skip.append(parsed.certificate_table)
    position = 0
    for start, size in sorted(skip):
        start = max(start, position)
        digest.update(view[position : min(start, len(data))])
        position = max(position, start + size)
    digest.update(view[min(position, len(data)) :])
    return digest.digest()


def _split_der(body: bytes) -> tuple[bytes, bytes]:
    try:
        _, _, _, header, contents, trailer = parser.parse(body, strict=False)
    except (ValueError, TypeError):
        return body, b""  # let the PKCS#7 decoder report it
    end = len(header) + len(contents) + len(trailer)
    return body[:end], body[end:]


#: More entries than any real file carries (shim has 2): a bound on work for hostile input.
MAX_CERTIFICATE_ENTRIES = 16


def _entry(data: bytes, offset: int, end: int) -> tuple[WinCertificate, int]:
    """The entry at ``offset`` and where the next one starts (8-byte aligned)."""
    if end - offset < _WIN_CERTIFICATE.size:
        raise CertificateTableError(f"{end - offset} trailing bytes are not a WIN_CERTIFICATE")
    length, revision, cert_type = _WIN_CERTIFICATE.unpack_from(data, offset)
    following = offset + length + (-length % 8)
    if length <= _WIN_CERTIFICATE.size or following > end:
        raise CertificateTableError(
            f"WIN_CERTIFICATE at {offset:#x}: dwLength {length} does not fit the table"
        )
    if revision != WIN_CERT_REVISION_2_0 or cert_type != WIN_CERT_TYPE_PKCS_SIGNED_DATA:
        raise CertificateTableError(
            f"WIN_CERTIFICATE revision {revision:#x} type {cert_type:#x} is not PKCS signed data"
        )
    der, inside = _split_der(data[offset + _WIN_CERTIFICATE.size : offset + length])
    padding = inside + data[offset + length : following]
    issue = None
    if length % 8:
        issue = f"dwLength {length} does not include the padding to 8 bytes"
    if len(padding) >= 8 or padding.strip(b"\0"):
        issue = f"{len(padding)} bytes after the PKCS#7 are not 0-7 zero padding bytes"
    entry = WinCertificate(offset, length, revision, cert_type, der, padding, issue)
    return entry, following


def read_certificate_entries(data: bytes, parsed: ParsedImage) -> tuple[WinCertificate, ...]:
    """Every WIN_CERTIFICATE of the image, in order; () if unsigned.

    Strict about the framing (raises :class:`CertificateTableError`); padding problems are
    recorded on each entry instead (see the module docstring).
    """
    if parsed.certificate_table is None:
        return ()
    offset, size = parsed.certificate_table
    if parsed.security_entry_offset is None:
        raise CertificateTableError("no certificate-table directory entry")
    if offset % 8 or offset < max(parsed.size_of_headers, parsed.security_entry_offset + 8):
        raise CertificateTableError(f"certificate table offset {offset:#x} is invalid")
    if size < _WIN_CERTIFICATE.size or offset + size != len(data):
        raise CertificateTableError("certificate table must end exactly at the end of the file")
    entries: list[WinCertificate] = []
    position, end = offset, offset + size
    while position < end:
        if len(entries) == MAX_CERTIFICATE_ENTRIES:
            raise CertificateTableError(f"more than {MAX_CERTIFICATE_ENTRIES} WIN_CERTIFICATEs")
        entry, position = _entry(data, position, end)
        entries.append(entry)
    return tuple(entries)


def read_certificate_table(data: bytes, parsed: ParsedImage) -> WinCertificate | None:
    """The image's first WIN_CERTIFICATE (the one Windows' WinVerifyTrust reads), or None."""
    entries = read_certificate_entries(data, parsed)
    return entries[0] if entries else None


def strip_signature(data: bytes) -> bytes:
    """``data`` without its certificate table (directory entry zeroed, checksum updated)."""
    parsed = parse_image(data)
    buf = bytearray(data)
    if parsed.certificate_table is not None and parsed.security_entry_offset is not None:
        offset, size = parsed.certificate_table
        if offset + size != len(data) or offset < parsed.size_of_headers:
            raise ValueError("existing certificate table is not at the end of the file")
        del buf[offset:]
        _DIRECTORY_ENTRY.pack_into(buf, parsed.security_entry_offset, 0, 0)
    struct.pack_into("<I", buf, parsed.checksum_offset, pe_checksum(buf, parsed.checksum_offset))
    return bytes(buf)


def _prepare(data: bytes) -> tuple[bytearray, ParsedImage]:
    """Unsigned, 8-byte-aligned copy of ``data`` (the table must start 8-byte aligned)."""
    buf = bytearray(strip_signature(data))
    buf += b"\0" * (-len(buf) % 8)
    parsed = parse_image(bytes(buf))
    if parsed.security_entry_offset is None:
        raise ValueError("image has no certificate-table directory entry")
    return buf, parsed


def attach_signature(data: bytes, pkcs7_der: bytes) -> bytes:
    """Embed an existing PKCS#7 DER as the image's WIN_CERTIFICATE (replacing any signature).

    Updates the Certificate Table directory entry and the PE checksum.  Useful to attach a
    signature made elsewhere; :func:`vbsim.signing.sign_image` signs and attaches in one go.
    """
    buf, parsed = _prepare(data)
    assert parsed.security_entry_offset is not None
    padding = b"\0" * (-len(pkcs7_der) % 8)
    length = _WIN_CERTIFICATE.size + len(pkcs7_der) + len(padding)
    header = _WIN_CERTIFICATE.pack(length, WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA)
    _DIRECTORY_ENTRY.pack_into(buf, parsed.security_entry_offset, len(buf), length)
    buf += header + pkcs7_der + padding
    struct.pack_into("<I", buf, parsed.checksum_offset, pe_checksum(buf, parsed.checksum_offset))
    return bytes(buf)
