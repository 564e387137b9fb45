"""Helpers shared by the vbsim.image tests (imported by module name; no package needed)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pefile

from vbsim.image import (
    ComponentVersion,
    ImageKind,
    SectionSpec,
    TrustletId,
    TrustletPolicy,
    build_image,
    parse_image,
)
from vbsim.image.checksum import pe_checksum

ROUTINES = {"main": "tests.image.lsaiso.main", "helper": "tests.image.lsaiso.helper"}
VERSION = ComponentVersion(10, 0, 19041, 1234, 3)


def policy() -> TrustletPolicy:
    return TrustletPolicy.standard(
        TrustletId.LSAISO,
        svn=3,
        capabilities=3,
        scenario_id="{8059e825-0000-4000-8000-000000000001}",
        parent_sd="S-1-5-83-0",
    )


_DEFAULT = object()


def trustlet(
    size: int | None = 65536,
    *,
    trustlet_policy: TrustletPolicy | object | None = _DEFAULT,
    version: ComponentVersion = VERSION,
    extra_sections: Sequence[SectionSpec] = (),
) -> bytes:
    """A LsaIso-like trustlet (64 KiB unless ``size`` says otherwise)."""
    chosen = policy() if trustlet_policy is _DEFAULT else trustlet_policy
    assert chosen is None or isinstance(chosen, TrustletPolicy)
    return build_image(
        ImageKind.TRUSTLET,
        "LsaIso.exe",
        "main",
        ROUTINES,
        chosen,
        version,
        extra_sections=extra_sections,
        size=size,
    )


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def fix_checksum(data: bytes) -> bytes:
    """Recompute the PE checksum, so that a test isolates the check it targets."""
    offset = parse_image(data).checksum_offset
    return patch(data, offset, struct.pack("<I", pe_checksum(data, offset)))


def section_header_offset(data: bytes, name: str) -> int:
    pe = pefile.PE(data=data, fast_load=True)
    section = next(s for s in pe.sections if s.Name.rstrip(b"\0") == name.encode())
    return int(section.get_file_offset())


def export_address_offset(data: bytes, name: str) -> int:
    """File offset of ``name``'s entry in the export address table."""
    pe = pefile.PE(data=data)
    symbol = next(s for s in pe.DIRECTORY_ENTRY_EXPORT.symbols if s.name == name.encode())
    return int(symbol.address_offset)


def section_raw(data: bytes, name: str) -> tuple[int, int]:
    """(file offset, raw size) of section ``name``."""
    section = parse_image(data).section(name)
    assert section is not None
    return section.raw_offset, section.raw_size


def attach_entries(unsigned: bytes, ders: Sequence[bytes]) -> bytes:
    """``unsigned`` with one WIN_CERTIFICATE per PKCS#7 of ``ders`` (as Debian's shim has two)."""
    from vbsim.image.authenticode import attach_signature, strip_signature

    single = attach_signature(strip_signature(unsigned), ders[0])
    parsed = parse_image(single)
    assert parsed.certificate_table is not None and parsed.security_entry_offset is not None
    offset, size = parsed.certificate_table
    buf = bytearray(single)
    for der in ders[1:]:
        padding = b"\0" * (-len(der) % 8)
        length = 8 + len(der) + len(padding)
        buf += struct.pack("<IHH", length, 0x0200, 0x0002) + der + padding
        size += length
    struct.pack_into("<II", buf, parsed.security_entry_offset, offset, size)
    return fix_checksum(bytes(buf))
