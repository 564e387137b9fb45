"""parse_image rejects bad input with ImageFormatError only, and reads any PE."""

from __future__ import annotations

import contextlib
import importlib.util
import struct
from pathlib import Path

import image_testkit as kit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbsim.image import (
    ImageFormatError,
    PolicyEntry,
    PolicyEntryType,
    PolicyId,
    TrustletPolicy,
    build_image,
    parse_image,
)
from vbsim.image import parse as parse_module
from vbsim.image.parse import MAX_IMAGE_SIZE
from vbsim.image.policy import decode_policy, encode_policy

IMAGE_BASE = 0x140000000


def _policy_bytes(data: bytes) -> tuple[int, bytes]:
    offset, size = kit.section_raw(data, ".tPolicy")
    return offset, data[offset : offset + size]


def test_garbage_and_truncation(unsigned_trustlet: bytes) -> None:
    for bad in (b"", b"MZ", b"\0" * 4096, unsigned_trustlet[:64], unsigned_trustlet[:300]):
        with pytest.raises(ImageFormatError):
            parse_image(bad)


def test_oversized(monkeypatch: pytest.MonkeyPatch, unsigned_trustlet: bytes) -> None:
    assert MAX_IMAGE_SIZE >= 64 * 1024 * 1024
    monkeypatch.setattr(parse_module, "MAX_IMAGE_SIZE", len(unsigned_trustlet) - 1)
    with pytest.raises(ImageFormatError, match="exceeds"):
        parse_image(unsigned_trustlet)


def test_not_bytes() -> None:
    with pytest.raises(ImageFormatError):
        parse_image("MZ")  # type: ignore[arg-type]


def test_corrupt_pe_signature(unsigned_trustlet: bytes) -> None:
    e_lfanew = struct.unpack_from("<I", unsigned_trustlet, 0x3C)[0]
    with pytest.raises(ImageFormatError):
        parse_image(kit.patch(unsigned_trustlet, e_lfanew, b"XX\0\0"))


def test_policy_version_must_be_one(unsigned_trustlet: bytes) -> None:
    offset, _ = _policy_bytes(unsigned_trustlet)
    with pytest.raises(ImageFormatError, match="Version 2"):
        parse_image(kit.patch(unsigned_trustlet, offset, b"\x02"))


def test_wrong_tpolicy_characteristics(unsigned_trustlet: bytes) -> None:
    header = kit.section_header_offset(unsigned_trustlet, ".tPolicy")
    writable = struct.pack("<I", 0xC0000040)  # + IMAGE_SCN_MEM_WRITE
    with pytest.raises(ImageFormatError, match="characteristics"):
        parse_image(kit.patch(unsigned_trustlet, header + 36, writable))


def test_export_outside_tpolicy(unsigned_trustlet: bytes) -> None:
    eat = kit.export_address_offset(unsigned_trustlet, "s_IumPolicyMetadata")
    text = parse_image(unsigned_trustlet).section(".text")
    assert text is not None
    moved = kit.patch(unsigned_trustlet, eat, struct.pack("<I", text.virtual_address))
    with pytest.raises(ImageFormatError, match="does not point into"):
        parse_image(moved)


def test_tpolicy_without_export() -> None:
    data = kit.trustlet(size=None)
    renamed = data.replace(b"s_IumPolicyMetadata\0", b"s_IumPolicyMetadatX\0")
    with pytest.raises(ImageFormatError, match="without s_IumPolicyMetadata"):
        parse_image(renamed)


def test_no_policy_is_not_a_trustlet() -> None:
    image = parse_image(kit.trustlet(size=None, trustlet_policy=None))
    assert image.policy is None and image.section(".tPolicy") is None


def test_legacy_export_name_is_accepted() -> None:
    data = build_image(
        "trustlet", "old.exe", "main", ["main"], kit.policy(), policy_export="__ImagePolicyMetadata"
    )
    image = parse_image(data)
    assert image.policy == kit.policy()
    assert image.policy_export == "__ImagePolicyMetadata"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (struct.pack("<IIQ", 99, 1, 0), "unknown policy entry type"),
        (struct.pack("<IIQ", PolicyEntryType.BOOL, 1, 2), "neither 0 nor 1"),
        (struct.pack("<IIQ", PolicyEntryType.UINT8, 1, 256), "out of range"),
        (struct.pack("<IIQ", PolicyEntryType.INT8, 1, 2**63), "out of range"),
        (struct.pack("<IIQ", PolicyEntryType.ANSI_STRING, 1, 0x1234), "outside .tPolicy"),
        (struct.pack("<IIQ", 0, 5, 0), "terminator"),
    ],
)
def test_corrupt_policy_entries(entry: bytes, message: str) -> None:
    section = struct.pack("<B7xQ", 1, 1) + entry + b"\0" * 16
    with pytest.raises(ImageFormatError, match=message):
        decode_policy(section, 0x3000, 0x3000, IMAGE_BASE)


def test_unterminated_policy_and_strings() -> None:
    entry = struct.pack("<IIQ", PolicyEntryType.UINT32, PolicyId.ETW, 1)
    with pytest.raises(ImageFormatError, match="terminator"):
        decode_policy(struct.pack("<B7xQ", 1, 1) + entry, 0x3000, 0x3000, IMAGE_BASE)
    with pytest.raises(ImageFormatError, match="does not fit"):
        decode_policy(b"\1" * 8, 0x3000, 0x3000, IMAGE_BASE)
    ansi = PolicyEntry(PolicyEntryType.ANSI_STRING, PolicyId.SCENARIO_ID, "abc")
    blob = encode_policy(TrustletPolicy(1, (ansi,)), 0x3000, IMAGE_BASE)
    with pytest.raises(ImageFormatError, match="unterminated ANSI"):
        decode_policy(blob[:-1], 0x3000, 0x3000, IMAGE_BASE)
    wide = PolicyEntry(PolicyEntryType.UNICODE_STRING, PolicyId.PARENT_SD, "S-1")
    blob = encode_policy(TrustletPolicy(1, (wide,)), 0x3000, IMAGE_BASE)
    with pytest.raises(ImageFormatError, match="unterminated Unicode"):
        decode_policy(blob[:-2], 0x3000, 0x3000, IMAGE_BASE)
    lone_surrogate = blob[:-8] + b"\x00\xd8" + b"\0\0"
    with pytest.raises(ImageFormatError, match="UTF-16"):
        decode_policy(lone_surrogate, 0x3000, 0x3000, IMAGE_BASE)


def test_signed_values_sign_extend() -> None:
    entry = PolicyEntry(PolicyEntryType.INT16, PolicyId.DEBUG, -2)
    blob = encode_policy(TrustletPolicy(7, (entry,)), 0x3000, IMAGE_BASE)
    assert struct.unpack_from("<Q", blob, 24)[0] == 2**64 - 2
    assert decode_policy(blob, 0x3000, 0x3000, IMAGE_BASE).entries == (entry,)


def _real_windows_binaries() -> list[Path]:
    """pip vendors distlib's Windows launchers: real PE32/PE32+ files built by MSVC."""
    spec = importlib.util.find_spec("pip")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "_vendor" / "distlib").glob("*.exe"))


@pytest.mark.parametrize("path", _real_windows_binaries(), ids=lambda p: p.name)
def test_real_windows_binaries_parse(path: Path) -> None:
    image = parse_image(path.read_bytes())
    assert image.policy is None and image.policy_export is None
    assert image.kind is None
    assert image.certificate_table is None
    assert image.sections


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_image_format_error(data: bytes) -> None:
    with contextlib.suppress(ImageFormatError):
        parse_image(b"MZ" + data)
