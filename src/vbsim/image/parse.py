# mypy: disallow-subclassing-any=False
"""Read any PE image with pefile into a :class:`ParsedImage`.

Works on vbsim's images and on real Windows binaries (what an image lacks is None).  On bad
input it raises only :class:`ImageFormatError`: every exception pefile or the decoders raise is
converted.  A ``.tPolicy`` section and the ``s_IumPolicyMetadata`` export must come together and
be well formed (vbs-internals §3.1); otherwise the image is rejected rather than misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pefile

from vbsim.hw.code import THUNK_SIZE, name_of
from vbsim.image.errors import ImageFormatError
from vbsim.image.kinds import ImageKind
from vbsim.image.memo import BytesMemo
from vbsim.image.policy import (
    POLICY_EXPORT_NAMES,
    POLICY_SECTION_NAME,
    TrustletPolicy,
    decode_policy,
)
from vbsim.image.version import KIND_KEY, ComponentVersion, version_from_resource

#: Largest file parse_image accepts (model limit; ntoskrnl.exe is ~11 MiB).
MAX_IMAGE_SIZE = 256 * 1024 * 1024
_SCN_MEM_EXECUTE = 0x20000000
_TPOLICY_CHARACTERISTICS = 0x40000040  # CNT_INITIALIZED_DATA | MEM_READ, exactly (§3.1)
_DIR_EXPORT, _DIR_RESOURCE, _DIR_SECURITY = 0, 2, 4  # IMAGE_DIRECTORY_ENTRY_*


class _PE(pefile.PE):
    """pefile.PE without the full ``gc.collect()`` pefile runs whenever parsing fails.

    We always parse from bytes (never an mmap), so ``_close_data`` has nothing to release, and
    the collection would cost tens of milliseconds per rejected image.
    """

    def _close_data(self) -> None:
        pass


@dataclass(frozen=True)
class SectionInfo:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & _SCN_MEM_EXECUTE)

    def contains_rva(self, rva: int) -> bool:
        return (
            self.virtual_address
            <= rva
            < self.virtual_address + max(self.virtual_size, self.raw_size)
        )


@dataclass(frozen=True)
class ExportInfo:
    name: str | None
    ordinal: int
    rva: int
    forwarder: str | None
    #: The 32 bytes at ``rva`` when it lies in an executable section (a guest-code thunk).
    thunk: bytes | None


@dataclass(frozen=True)
class ParsedImage:
    size: int
    machine: int
    pe32_plus: bool
    image_base: int
    entry_rva: int
    subsystem: int
    file_characteristics: int
    dll_characteristics: int
    size_of_headers: int
    #: File offset and stored value of ``OptionalHeader.CheckSum``.
    checksum_offset: int
    checksum: int
    #: File offset of the Certificate Table data-directory entry (None if the image has < 5).
    security_entry_offset: int | None
    #: (file offset, size) of the certificate table, None when the entry is all zero.
    certificate_table: tuple[int, int] | None
    sections: tuple[SectionInfo, ...]
    exports: tuple[ExportInfo, ...]
    export_dll_name: str | None
    entry_name: str | None
    entry_thunk: bytes | None
    policy: TrustletPolicy | None
    policy_export: str | None
    version: ComponentVersion | None
    version_strings: Mapping[str, str] = field(default_factory=dict, hash=False)
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str | None:
        """``OriginalFilename`` from the version resource, else the export DLL name."""
        return self.version_strings.get("OriginalFilename") or self.export_dll_name

    @property
    def entry_routine(self) -> str | None:
        """The registered guest routine (``vbsim.hw.code``) the entry thunk stands for."""
        return None if self.entry_thunk is None else name_of(self.entry_thunk)

    @property
    def kind(self) -> ImageKind | None:
        try:
            return ImageKind(self.version_strings.get(KIND_KEY, ""))
        except ValueError:
            return None

    @property
    def svn(self) -> int | None:
        """Policy ``Svn`` for trustlets (§3.3), else the version resource's SVN."""
        if self.policy is not None and self.policy.svn is not None:
            return self.policy.svn
        return None if self.version is None else self.version.svn

    @property
    def is_trustlet(self) -> bool:
        return self.policy is not None

    def section(self, name: str) -> SectionInfo | None:
        return next((s for s in self.sections if s.name == name), None)

    def export(self, name: str) -> ExportInfo | None:
        return next((e for e in self.exports if e.name == name), None)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _read_rva(data: bytes, sections: tuple[SectionInfo, ...], rva: int, size: int) -> bytes | None:
    for s in sections:
        if (
            s.executable
            and s.virtual_address <= rva
            and rva + size <= s.virtual_address + min(s.raw_size, s.virtual_size or s.raw_size)
        ):
            start = s.raw_offset + rva - s.virtual_address
            chunk = data[start : start + size]
            return chunk if len(chunk) == size else None
    return None


def _sections(pe: _PE) -> tuple[SectionInfo, ...]:
    return tuple(
        SectionInfo(
            name=s.Name.rstrip(b"\0").decode("latin-1"),
            virtual_address=s.VirtualAddress,
            virtual_size=s.Misc_VirtualSize,
            raw_offset=s.PointerToRawData,
            raw_size=s.SizeOfRawData,
            characteristics=s.Characteristics,
        )
        for s in pe.sections
    )


def _exports(
    pe: _PE, data: bytes, sections: tuple[SectionInfo, ...]
) -> tuple[tuple[ExportInfo, ...], str | None]:
    directory = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    if directory is None:
        return (), None
    exports = tuple(
        ExportInfo(
            name=_text(sym.name),
            ordinal=sym.ordinal,
            rva=sym.address or 0,
            forwarder=_text(sym.forwarder),
            thunk=None if sym.forwarder else _read_rva(data, sections, sym.address, THUNK_SIZE),
        )
        for sym in directory.symbols
    )
    return exports, _text(getattr(directory, "name", None))


def _version_strings(pe: _PE) -> dict[str, str]:
    strings: dict[str, str] = {}
    for file_info in getattr(pe, "FileInfo", None) or []:
        for entry in file_info:
            for table in getattr(entry, "StringTable", None) or []:
                for key, value in table.entries.items():
                    k, v = (x.decode("utf-8", "replace") for x in (key, value))
                    strings.setdefault(k, v)
    return strings


def _version(pe: _PE, strings: dict[str, str]) -> ComponentVersion | None:
    fixed = getattr(pe, "VS_FIXEDFILEINFO", None)
    ms = ls = None
    if fixed:
        ms, ls = fixed[0].FileVersionMS, fixed[0].FileVersionLS
    return version_from_resource(ms, ls, strings)


def _policy(
    data: bytes, image_base: int, sections: tuple[SectionInfo, ...], exports: tuple[ExportInfo, ...]
) -> tuple[TrustletPolicy | None, str | None]:
    candidates = [s for s in sections if s.name == POLICY_SECTION_NAME]
    by_name = {e.name: e for e in exports if e.name in POLICY_EXPORT_NAMES}
    export = next((by_name[n] for n in POLICY_EXPORT_NAMES if n in by_name), None)
    if not candidates and export is None:
        return None, None
    if export is None:
        raise ImageFormatError(f"{POLICY_SECTION_NAME} section without s_IumPolicyMetadata export")
    if len(candidates) != 1:
        raise ImageFormatError(
            f"expected one {POLICY_SECTION_NAME} section, found {len(candidates)}"
        )
    section = candidates[0]
    if section.characteristics != _TPOLICY_CHARACTERISTICS:
        raise ImageFormatError(
            f"{POLICY_SECTION_NAME} characteristics {section.characteristics:#x}, "
            f"expected {_TPOLICY_CHARACTERISTICS:#x}"
        )
    if export.forwarder is not None or not section.contains_rva(export.rva):
        raise ImageFormatError(f"{export.name} does not point into {POLICY_SECTION_NAME}")
    raw = data[section.raw_offset : section.raw_offset + section.raw_size]
    policy = decode_policy(raw, section.virtual_address, export.rva, image_base)
    return policy, export.name


def _security_entry(pe: _PE) -> tuple[int | None, tuple[int, int] | None]:
    directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(directories) <= _DIR_SECURITY:
        return None, None
    entry = directories[_DIR_SECURITY]
    table = (entry.VirtualAddress, entry.Size) if entry.VirtualAddress or entry.Size else None
    return entry.get_file_offset(), table


def _parse(data: bytes) -> ParsedImage:
    pe = _PE(data=data, fast_load=True)
    optional = getattr(pe, "OPTIONAL_HEADER", None)
    if optional is None or getattr(pe, "FILE_HEADER", None) is None:
        raise ImageFormatError("no PE optional header")
    pe.parse_data_directories(directories=[_DIR_EXPORT, _DIR_RESOURCE])
    sections = _sections(pe)
    exports, dll_name = _exports(pe, data, sections)
    entry_rva = optional.AddressOfEntryPoint
    entry = next((e for e in exports if e.rva == entry_rva and e.forwarder is None), None)
    strings = _version_strings(pe)
    policy, policy_export = _policy(data, optional.ImageBase, sections, exports)
    security_offset, table = _security_entry(pe)
    return ParsedImage(
        size=len(data),
        machine=pe.FILE_HEADER.Machine,
        pe32_plus=optional.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS,
        image_base=optional.ImageBase,
        entry_rva=entry_rva,
        subsystem=optional.Subsystem,
        file_characteristics=pe.FILE_HEADER.Characteristics,
        dll_characteristics=optional.DllCharacteristics,
        size_of_headers=optional.SizeOfHeaders,
        checksum_offset=optional.get_field_absolute_offset("CheckSum"),
        checksum=optional.CheckSum,
        security_entry_offset=security_offset,
        certificate_table=table,
        sections=sections,
        exports=exports,
        export_dll_name=dll_name,
        entry_name=None if entry is None else entry.name,
        entry_thunk=_read_rva(data, sections, entry_rva, THUNK_SIZE),
        policy=policy,
        policy_export=policy_export,
        version=_version(pe, strings),
        version_strings=MappingProxyType(strings),
        warnings=tuple(pe.get_warnings()),
    )


def parse_image(data: bytes) -> ParsedImage:
    """Parse a PE image; raises only :class:`ImageFormatError` on bad input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageFormatError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_IMAGE_SIZE:
        raise ImageFormatError(f"image of {len(data)} bytes exceeds {MAX_IMAGE_SIZE}")
    data = bytes(data)
    cached = _PARSED.get(data)
    if cached is not None:
        return cached
    try:
        parsed = _parse(data)
    except ImageFormatError:
        raise
    except Exception as exc:  # pefile raises many types; the contract is one error type
        raise ImageFormatError(f"{type(exc).__name__}: {exc}") from exc
    _PARSED.put(data, parsed)
    return parsed


#: Parsed images by their exact bytes (the result is frozen dataclasses and tuples); every
#: caller still hashes and verifies the bytes it holds (``vbsim.image.memo``).
_PARSED: BytesMemo[ParsedImage] = BytesMemo(64)
