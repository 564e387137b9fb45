"""Build PE32+ images with LIEF.

An image has ``.text`` (one 32-byte guest-code thunk per routine, see ``vbsim.hw.code``),
``.data``, for trustlets an optional ``.tPolicy`` (vbs-internals §3.1), ``.rsrc`` with the
version resource (see :mod:`vbsim.image.version`), ``.edata`` with the exports, and any extra
sections.  ``AddressOfEntryPoint`` is the RVA of the entry routine's thunk; every routine is
exported under its name, and the policy under ``s_IumPolicyMetadata``.

Builder misuse (bad names, sizes, values) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lief

from vbsim.hw.code import THUNK_SIZE, encode_thunk
from vbsim.image.kinds import ImageKind
from vbsim.image.policy import (
    POLICY_EXPORT_NAME,
    POLICY_EXPORT_NAMES,
    POLICY_SECTION_NAME,
    TrustletPolicy,
    encode_policy,
)
from vbsim.image.version import ComponentVersion, encode_version_resource

# Section characteristics (PE/COFF spec, IMAGE_SCN_*).
SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_EXECUTE = 0x20000000
SCN_MEM_READ = 0x40000000
SCN_MEM_WRITE = 0x80000000
TEXT_CHARACTERISTICS = SCN_CNT_CODE | SCN_MEM_EXECUTE | SCN_MEM_READ
DATA_CHARACTERISTICS = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ | SCN_MEM_WRITE
#: "characteristics exactly IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ" (§3.1).
TPOLICY_CHARACTERISTICS = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ

FILE_ALIGNMENT = 0x200  # LIEF's default FileAlignment
_RT_VERSION = 16
_LANG_EN_US = 0x0409
_IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
_IMAGE_FILE_LARGE_ADDRESS_AWARE = 0x0020
_IMAGE_DLLCHARACTERISTICS_NX_COMPAT = 0x0100
_RESERVED_NAMES = (".text", ".data", POLICY_SECTION_NAME, ".rsrc", ".edata")

lief.logging.disable()


@dataclass(frozen=True)
class SectionSpec:
    """An extra section: name (at most 8 bytes), raw content, IMAGE_SCN_* characteristics."""

    name: str
    data: bytes
    characteristics: int = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ


def _routine_map(code_routines: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(code_routines, Mapping):
        return dict(code_routines)
    if isinstance(code_routines, str):
        raise ValueError("code_routines must be a mapping or a sequence of names")
    return {name: name for name in code_routines}


def _check_name(name: str) -> None:
    if not name or len(name.encode("utf-8")) > 8 or "\0" in name:
        raise ValueError(f"bad section name {name!r}")


def _add(binary: lief.PE.Binary, name: str, data: bytes, characteristics: int) -> lief.PE.Section:
    section = lief.PE.Section(name)
    section.content = memoryview(data)
    section.characteristics = characteristics
    added = binary.add_section(section)
    if added is None:
        raise ValueError(f"LIEF could not add section {name}")
    return added


def _version_tree(resource: bytes) -> lief.PE.ResourceDirectory:
    root = lief.PE.ResourceDirectory(0)
    by_type = lief.PE.ResourceDirectory(_RT_VERSION)
    by_name = lief.PE.ResourceDirectory(1)
    leaf = lief.PE.ResourceData(memoryview(resource), 0)
    leaf.id = _LANG_EN_US
    by_name.add_child(leaf)
    by_type.add_child(by_name)
    root.add_child(by_type)
    return root


def _assemble(
    kind: ImageKind,
    name: str,
    entry: str,
    routines: dict[str, str],
    policy: TrustletPolicy | None,
    version: ComponentVersion,
    data: bytes,
    extra_sections: Sequence[SectionSpec],
    policy_export: str,
) -> bytes:
    factory = lief.PE.Factory.create(lief.PE.PE_TYPE.PE32_PLUS)
    binary = factory.get() if factory is not None else None
    if binary is None:
        raise ValueError("LIEF could not create a PE32+ image")
    text_bytes = b"".join(encode_thunk(r) for r in routines.values())
    text = _add(binary, ".text", text_bytes, TEXT_CHARACTERISTICS)
    _add(binary, ".data", data, DATA_CHARACTERISTICS)
    exports = {n: text.virtual_address + i * THUNK_SIZE for i, n in enumerate(routines)}
    if policy is not None:
        placeholder = encode_policy(policy, 0, 0)
        tpolicy = _add(binary, POLICY_SECTION_NAME, placeholder, TPOLICY_CHARACTERISTICS)
        tpolicy.content = memoryview(
            encode_policy(policy, tpolicy.virtual_address, binary.imagebase)
        )
        exports[policy_export] = tpolicy.virtual_address
    for spec in extra_sections:
        _add(binary, spec.name, spec.data, spec.characteristics)
    entries = [lief.PE.ExportEntry(n, rva) for n, rva in sorted(exports.items())]
    binary.set_export(lief.PE.Export(name, entries))
    file_type, file_subtype = kind.file_type
    resource = encode_version_resource(version, name, kind.value, file_type, file_subtype)
    binary.set_resources(_version_tree(resource))

    header, optional = binary.header, binary.optional_header
    header.characteristics = _IMAGE_FILE_EXECUTABLE_IMAGE | _IMAGE_FILE_LARGE_ADDRESS_AWARE
    optional.addressof_entrypoint = exports[entry]
    optional.baseof_code = text.virtual_address
    optional.sizeof_code = len(text_bytes) + (-len(text_bytes) % FILE_ALIGNMENT)
    optional.subsystem = lief.PE.OptionalHeader.SUBSYSTEM.from_value(kind.subsystem)
    optional.dll_characteristics = _IMAGE_DLLCHARACTERISTICS_NX_COMPAT
    optional.major_image_version, optional.minor_image_version = version.major, version.minor

    config = lief.PE.Builder.config_t()
    config.exports = True
    config.resources = True
    config.overlay = False
    config.export_section = ".edata"
    config.rsrc_section = ".rsrc"
    return bytes(binary.write_to_bytes(config))


def build_image(
    kind: ImageKind | str,
    name: str,
    entry: str,
    code_routines: Mapping[str, str] | Sequence[str],
    policy: TrustletPolicy | None = None,
    version: ComponentVersion | None = None,
    *,
    data: bytes = b"",
    extra_sections: Sequence[SectionSpec] = (),
    size: int | None = None,
    policy_export: str = POLICY_EXPORT_NAME,
) -> bytes:
    """Build an unsigned PE32+ image.

    ``code_routines`` maps export names to registered guest-routine names (``vbsim.hw.code``);
    a plain sequence uses each name for both.  ``entry`` is the export the entry point runs.
    ``size`` pads ``.data`` so that the file is exactly ``size`` bytes (a multiple of 512).
    ``policy_export`` may be the pre-16215 name ``__ImagePolicyMetadata`` (§3.1).
    """
    kind = ImageKind(kind)
    routines = _routine_map(code_routines)
    if entry not in routines:
        raise ValueError(f"entry {entry!r} is not one of the code routines")
    if not routines or any(not r or "\0" in r for r in routines):
        raise ValueError("routine export names must be non-empty and NUL-free")
    if policy_export not in POLICY_EXPORT_NAMES:
        raise ValueError(f"policy export must be one of {POLICY_EXPORT_NAMES}")
    if set(POLICY_EXPORT_NAMES) & set(routines):
        raise ValueError("the policy export names are reserved")
    if not name or "\0" in name:
        raise ValueError("image name must be non-empty and NUL-free")
    names = [s.name for s in extra_sections]
    for section_name in names:
        _check_name(section_name)
    if len(set(names)) != len(names) or set(names) & set(_RESERVED_NAMES):
        raise ValueError("extra section names must be unique and not reserved")
    version = version if version is not None else ComponentVersion()
    data = data + b"\0" * (-len(data) % FILE_ALIGNMENT) if data else b"\0" * FILE_ALIGNMENT
    args = (kind, name, entry, routines, policy, version)
    image = _assemble(*args, data, extra_sections, policy_export)
    if size is None or size == len(image):
        return image
    if size % FILE_ALIGNMENT or size < len(image):
        raise ValueError(f"size must be a multiple of {FILE_ALIGNMENT} and >= {len(image)}")
    image = _assemble(*args, data + b"\0" * (size - len(image)), extra_sections, policy_export)
    if len(image) != size:  # pragma: no cover - LIEF layout changed under us
        raise ValueError(f"could not pad image to {size} bytes (got {len(image)})")
    return image
