"""Component version and SVN, carried in a real ``VS_VERSIONINFO`` resource.

vbs-internals §6 (notes after the catalogue) asks for every component to have a version and an
SVN so that downgrades (A15, Windows Downdate) and their ``SkuSiPolicy`` revocation (§1.1 row 4)
can be modelled.  The version is the standard ``FileVersion`` (``VS_FIXEDFILEINFO`` plus the
``FileVersion`` string).  Windows has no version-resource field for an SVN, so vbsim adds a
StringFileInfo string ``VbsimSvn`` (a model choice); for trustlets the policy ``Svn`` entry
(§3.1, id 8) is authoritative.  The image kind is recorded as ``VbsimKind``.

The resource layout follows the documented Win32 structures ``VS_VERSIONINFO``,
``VS_FIXEDFILEINFO``, ``StringFileInfo``/``StringTable``/``String`` and ``VarFileInfo``/``Var``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from vbsim.image.errors import ImageFormatError

SVN_KEY = "VbsimSvn"
KIND_KEY = "VbsimKind"
_FIXED_SIGNATURE = 0xFEEF04BD  # VS_FIXEDFILEINFO.dwSignature
_FIXED_STRUC_VERSION = 0x00010000
_VOS_NT_WINDOWS32 = 0x00040004
_LANG_CODEPAGE = "040904B0"  # en-US, Unicode (1200)
_VERSION_RE = re.compile(r"\s*([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")
_SVN_RE = re.compile(r"[0-9]{1,10}")

#: ``VS_FIXEDFILEINFO.dwFileType``: VFT_APP, VFT_DLL, VFT_DRV.
VFT_APP, VFT_DLL, VFT_DRV = 1, 2, 3
#: ``dwFileSubtype`` for system drivers (VFT2_DRV_SYSTEM).
VFT2_DRV_SYSTEM = 7


@dataclass(frozen=True, order=True)
class ComponentVersion:
    """``major.minor.build.revision`` plus the security version number (SVN)."""

    major: int = 10
    minor: int = 0
    build: int = 0
    revision: int = 0
    svn: int = 0

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.build, self.revision):
            if not 0 <= part <= 0xFFFF:
                raise ValueError("version parts are 16-bit (VS_FIXEDFILEINFO)")
        if not 0 <= self.svn <= 0xFFFFFFFF:
            raise ValueError("SVN must fit 32 bits")

    @property
    def numbers(self) -> tuple[int, int, int, int]:
        return (self.major, self.minor, self.build, self.revision)

    def __str__(self) -> str:
        return ".".join(map(str, self.numbers)) + f" (svn {self.svn})"

    @classmethod
    def parse(cls, text: str, svn: int = 0) -> ComponentVersion:
        """``"10.0.19041.1"`` -> ComponentVersion."""
        match = _VERSION_RE.match(text)
        if match is None:
            raise ValueError(f"not a four-part version: {text!r}")
        major, minor, build, revision = (int(g) for g in match.groups())
        return cls(major, minor, build, revision, svn)


def _node(key: str, value: bytes, value_length: int, text: bool, children: bytes = b"") -> bytes:
    """One version-resource block: wLength, wValueLength, wType, szKey, Padding, Value, Children."""
    body = key.encode("utf-16-le") + b"\0\0"
    head_len = 6 + len(body)
    body += b"\0" * (-head_len % 4)
    body += value
    if children:
        body += b"\0" * (-(6 + len(body)) % 4)
        body += children
    return struct.pack("<HHH", 6 + len(body), value_length, int(text)) + body


def _align4(blocks: list[bytes]) -> bytes:
    return b"".join(b + b"\0" * (-len(b) % 4) for b in blocks)


def encode_version_resource(
    version: ComponentVersion, name: str, kind: str, file_type: int, file_subtype: int = 0
) -> bytes:
    """The bytes of an ``RT_VERSION`` resource for ``name``."""
    ms = (version.major << 16) | version.minor
    ls = (version.build << 16) | version.revision
    fixed = struct.pack(
        "<13I",
        _FIXED_SIGNATURE,
        _FIXED_STRUC_VERSION,
        ms,
        ls,
        ms,
        ls,
        0x3F,  # dwFileFlagsMask
        0,  # dwFileFlags
        _VOS_NT_WINDOWS32,
        file_type,
        file_subtype,
        0,
        0,
    )
    dotted = ".".join(map(str, version.numbers))
    strings = {
        "CompanyName": "vbsim model",
        "FileDescription": f"vbsim {kind} image",
        "FileVersion": dotted,
        "InternalName": name,
        "OriginalFilename": name,
        "ProductName": "vbsim",
        "ProductVersion": dotted,
        SVN_KEY: str(version.svn),
        KIND_KEY: kind,
    }
    string_nodes = [
        _node(k, v.encode("utf-16-le") + b"\0\0", len(v) + 1, True) for k, v in strings.items()
    ]
    table = _node(_LANG_CODEPAGE, b"", 0, True, _align4(string_nodes))
    string_file_info = _node("StringFileInfo", b"", 0, True, table)
    translation = _node("Translation", struct.pack("<HH", 0x0409, 1200), 4, False)
    var_file_info = _node("VarFileInfo", b"", 0, True, translation)
    children = _align4([string_file_info, var_file_info])
    return _node("VS_VERSION_INFO", fixed, len(fixed), False, children)


def version_from_resource(
    file_version_ms: int | None, file_version_ls: int | None, strings: Mapping[str, str]
) -> ComponentVersion | None:
    """Rebuild the version from what a PE library decoded (None if the image has none)."""
    svn_text = strings.get(SVN_KEY, "0")
    if _SVN_RE.fullmatch(svn_text) is None or int(svn_text) > 0xFFFFFFFF:
        raise ImageFormatError(f"bad {SVN_KEY} string {svn_text!r}")
    svn = int(svn_text)
    if file_version_ms is not None and file_version_ls is not None:
        return ComponentVersion(
            file_version_ms >> 16,
            file_version_ms & 0xFFFF,
            file_version_ls >> 16,
            file_version_ls & 0xFFFF,
            svn,
        )
    text = strings.get("FileVersion")
    if text is None:
        return None
    try:
        return ComponentVersion.parse(text, svn)
    except ValueError:
        return None
