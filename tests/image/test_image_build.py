"""Building PE32+ images and reading them back."""

from __future__ import annotations

import image_testkit as kit
import pefile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.hw.code import THUNK_SIZE, encode_thunk
from vbsim.image import (
    ComponentVersion,
    ImageKind,
    PolicyEntry,
    PolicyEntryType,
    PolicyId,
    SectionSpec,
    TrustletPolicy,
    build_image,
    parse_image,
)
from vbsim.image.builder import TPOLICY_CHARACTERISTICS
from vbsim.image.checksum import pe_checksum


def test_trustlet_round_trip(unsigned_trustlet: bytes) -> None:
    image = parse_image(unsigned_trustlet)
    assert image.size == len(unsigned_trustlet) == 65536
    assert image.pe32_plus and image.machine == 0x8664
    assert [s.name for s in image.sections][:3] == [".text", ".data", ".tPolicy"]
    assert {".rsrc", ".edata"} <= {s.name for s in image.sections}
    assert image.entry_name == "main"
    assert image.entry_thunk == encode_thunk(kit.ROUTINES["main"])
    for export_name, routine in kit.ROUTINES.items():
        export = image.export(export_name)
        assert export is not None and export.thunk == encode_thunk(routine)
    text = image.section(".text")
    assert text is not None and text.executable
    assert image.entry_rva == text.virtual_address  # "main" is the first routine
    assert image.policy == kit.policy()
    assert image.policy_export == "s_IumPolicyMetadata"
    assert image.version == kit.VERSION
    assert image.svn == 3
    assert image.kind is ImageKind.TRUSTLET
    assert image.name == "LsaIso.exe"
    assert image.is_trustlet
    assert image.certificate_table is None


def test_tpolicy_section_layout(unsigned_trustlet: bytes) -> None:
    image = parse_image(unsigned_trustlet)
    section = image.section(".tPolicy")
    assert section is not None
    assert section.characteristics == TPOLICY_CHARACTERISTICS == 0x40000040
    export = image.export("s_IumPolicyMetadata")
    assert export is not None and export.rva == section.virtual_address
    raw = unsigned_trustlet[section.raw_offset : section.raw_offset + 16]
    assert raw[0] == 1 and raw[1:8] == b"\0" * 7  # Version, Reserved0 (§3.1)
    assert int.from_bytes(raw[8:16], "little") == 1  # ApplicationId = LsaIso


@pytest.mark.parametrize("kind", list(ImageKind))
def test_every_kind_builds(kind: ImageKind) -> None:
    data = build_image(kind, f"{kind.value}.exe", "start", ["start"])
    image = parse_image(data)
    assert image.kind is kind
    assert image.policy is None and not image.is_trustlet
    assert image.entry_name == "start"
    assert image.subsystem == kind.subsystem
    assert image.version == ComponentVersion()


def test_pefile_agrees_and_checksum_matches_pefile(unsigned_trustlet: bytes) -> None:
    pe = pefile.PE(data=unsigned_trustlet)
    assert pe.OPTIONAL_HEADER.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS
    assert pe.FILE_HEADER.Characteristics & 0x0002  # IMAGE_FILE_EXECUTABLE_IMAGE
    offset = parse_image(unsigned_trustlet).checksum_offset
    assert pe_checksum(unsigned_trustlet, offset) == pe.generate_checksum()


def test_extra_sections_and_data() -> None:
    extra = SectionSpec(".vbsim", b"hello", 0x40000040)
    data = build_image(
        "driver", "d.sys", "entry", ["entry", "other"], data=b"x" * 10, extra_sections=[extra]
    )
    image = parse_image(data)
    section = image.section(".vbsim")
    assert section is not None and section.characteristics == 0x40000040
    assert data[section.raw_offset : section.raw_offset + 5] == b"hello"
    dsec = image.section(".data")
    assert dsec is not None and data[dsec.raw_offset : dsec.raw_offset + 10] == b"x" * 10


def test_routine_mapping_names_exports() -> None:
    data = build_image("application", "a.exe", "go", {"go": "app.go", "aux": "app.aux"})
    image = parse_image(data)
    go, aux = image.export("go"), image.export("aux")
    assert go is not None and aux is not None
    assert go.thunk == encode_thunk("app.go") and aux.thunk == encode_thunk("app.aux")
    assert aux.rva - go.rva == THUNK_SIZE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entry": "missing"}, "entry"),
        ({"size": 1000}, "multiple of 512"),
        ({"size": 512}, "multiple of 512"),
        ({"extra_sections": [SectionSpec(".text", b"")]}, "reserved"),
        ({"extra_sections": [SectionSpec(".waytoolong", b"")]}, "section name"),
        ({"code_routines": {"main": "m", "s_IumPolicyMetadata": "x"}}, "reserved"),
        ({"policy_export": "IumPolicy"}, "policy export"),
        ({"name": ""}, "name"),
    ],
)
def test_builder_rejects_misuse(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "kind": "trustlet",
        "name": "t.exe",
        "entry": "main",
        "code_routines": ["main"],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_image(**args)  # type: ignore[arg-type]


def test_policy_entry_validation() -> None:
    with pytest.raises(ValueError):
        PolicyEntry(PolicyEntryType.UINT8, PolicyId.ETW, 256)
    with pytest.raises(ValueError):
        PolicyEntry(PolicyEntryType.BOOL, PolicyId.ETW, 1)
    with pytest.raises(ValueError):
        PolicyEntry(PolicyEntryType.ANSI_STRING, PolicyId.SCENARIO_ID, "\u20ac")
    with pytest.raises(ValueError):
        PolicyEntry(PolicyEntryType.NONE, PolicyId.NONE, 0)
    assert PolicyEntry(PolicyEntryType.INT8, 99, -128).policy_name == "UNKNOWN_99"


_int_types = {
    PolicyEntryType.INT8: (-(2**7), 2**7 - 1),
    PolicyEntryType.UINT8: (0, 2**8 - 1),
    PolicyEntryType.INT16: (-(2**15), 2**15 - 1),
    PolicyEntryType.UINT16: (0, 2**16 - 1),
    PolicyEntryType.INT32: (-(2**31), 2**31 - 1),
    PolicyEntryType.UINT32: (0, 2**32 - 1),
    PolicyEntryType.INT64: (-(2**63), 2**63 - 1),
    PolicyEntryType.UINT64: (0, 2**64 - 1),
    PolicyEntryType.OVERRIDE: (0, 2**64 - 1),
}
_ids = st.integers(0, 2**32 - 1)


@st.composite
def _entries(draw: st.DrawFn) -> PolicyEntry:
    kind = draw(st.sampled_from([t for t in PolicyEntryType if t is not PolicyEntryType.NONE]))
    if kind is PolicyEntryType.BOOL:
        return PolicyEntry(kind, draw(_ids), draw(st.booleans()))
    if kind is PolicyEntryType.ANSI_STRING:
        text = draw(st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=40))
        return PolicyEntry(kind, draw(_ids), text)
    if kind is PolicyEntryType.UNICODE_STRING:
        alphabet = st.characters(min_codepoint=1, exclude_categories=["Cs"])
        return PolicyEntry(kind, draw(_ids), draw(st.text(alphabet, max_size=40)))
    low, high = _int_types[kind]
    return PolicyEntry(kind, draw(_ids), draw(st.integers(low, high)))


@settings(max_examples=60, deadline=None)
@given(
    application_id=st.integers(0, 2**64 - 1),
    entries=st.lists(_entries(), max_size=12),
    version=st.builds(
        ComponentVersion,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 2**32 - 1),
    ),
)
def test_policy_and_version_round_trip(
    application_id: int, entries: list[PolicyEntry], version: ComponentVersion
) -> None:
    policy = TrustletPolicy(application_id, tuple(entries))
    data = build_image("trustlet", "t.exe", "main", ["main"], policy, version)
    image = parse_image(data)
    assert image.policy == policy
    assert image.version == version


def test_entry_routine_resolves_through_the_thunk_registry() -> None:
    from vbsim.hw.code import register

    register("tests.image.entry-probe", lambda: None)
    data = build_image("application", "p.exe", "go", {"go": "tests.image.entry-probe"})
    image = parse_image(bytearray(data))
    assert image.entry_name == "go"
    assert image.entry_routine == "tests.image.entry-probe"
