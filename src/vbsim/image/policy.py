"""Trustlet policy: ``IMAGE_POLICY_METADATA`` in the ``.tPolicy`` section (vbs-internals §3.1).

Layout (x64, little endian), as documented in §3.1::

    IMAGE_POLICY_METADATA { UCHAR Version (=1); UCHAR Reserved0[7]; ULONGLONG ApplicationId;
                            IMAGE_POLICY_ENTRY Policies[] }   // terminated by a None entry
    IMAGE_POLICY_ENTRY    { ULONG Type; ULONG PolicyId; union { ... } u }  // 16 bytes

The union is 8 bytes: the WDK macros initialise it through its pointer member, so integers are
stored as (sign-extended) 64-bit values and strings as virtual addresses.  vbsim places the
strings inside ``.tPolicy`` itself, right after the entry array.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from vbsim.image.errors import ImageFormatError

#: ``IMAGE_POLICY_METADATA_VERSION`` (§3.1).
POLICY_METADATA_VERSION = 1
#: ``IMAGE_POLICY_SECTION_NAME`` (§3.1).
POLICY_SECTION_NAME = ".tPolicy"
#: Export names of the policy variable: build >= 16215, and the older name (<= 16193) (§3.1).
POLICY_EXPORT_NAME = "s_IumPolicyMetadata"
LEGACY_POLICY_EXPORT_NAME = "__ImagePolicyMetadata"
POLICY_EXPORT_NAMES = (POLICY_EXPORT_NAME, LEGACY_POLICY_EXPORT_NAME)

_HEADER = struct.Struct("<B7xQ")  # Version, Reserved0[7], ApplicationId (§3.1)
_ENTRY = struct.Struct("<IIQ")  # Type, PolicyId, u (§3.1: 16 bytes on x64)
_U64 = (1 << 64) - 1


class PolicyEntryType(IntEnum):
    """``IMAGE_POLICY_ENTRY_TYPE`` (§3.1 table)."""

    NONE = 0
    BOOL = 1
    INT8 = 2
    UINT8 = 3
    INT16 = 4
    UINT16 = 5
    INT32 = 6
    UINT32 = 7
    INT64 = 8
    UINT64 = 9
    ANSI_STRING = 10
    UNICODE_STRING = 11
    OVERRIDE = 12  # newer headers only; its value is kept as a raw 64-bit number


class PolicyId(IntEnum):
    """``IMAGE_POLICY_ID`` (§3.1 table; 12 and 13 exist in newer headers only)."""

    NONE = 0
    ETW = 1
    DEBUG = 2
    CRASH_DUMP = 3
    CRASH_DUMP_KEY = 4
    CRASH_DUMP_KEY_GUID = 5
    PARENT_SD = 6
    PARENT_SD_REV = 7
    SVN = 8
    DEVICE_ID = 9
    CAPABILITY = 10
    SCENARIO_ID = 11
    CAPABILITY_OVERRIDABLE = 12
    TRUSTLET_ID_OVERRIDABLE = 13


class TrustletId(IntEnum):
    """Known trustlet IDs (§3.2); the policy ``ApplicationId`` carries one."""

    SECURE_KERNEL = 0
    LSAISO = 1
    VMSP = 2
    VTPM_PROVISIONING = 3
    BIOISO = 4
    FSISO = 5


# (bits, signed) for the integer entry types.
_INT_TYPES: dict[PolicyEntryType, tuple[int, bool]] = {
    PolicyEntryType.INT8: (8, True),
    PolicyEntryType.UINT8: (8, False),
    PolicyEntryType.INT16: (16, True),
    PolicyEntryType.UINT16: (16, False),
    PolicyEntryType.INT32: (32, True),
    PolicyEntryType.UINT32: (32, False),
    PolicyEntryType.INT64: (64, True),
    PolicyEntryType.UINT64: (64, False),
    PolicyEntryType.OVERRIDE: (64, False),
}
_STRING_TYPES = (PolicyEntryType.ANSI_STRING, PolicyEntryType.UNICODE_STRING)

PolicyValue = bool | int | str


def _value_problem(entry_type: PolicyEntryType, value: PolicyValue) -> str | None:
    """Why ``value`` cannot be stored as ``entry_type`` (None if it can)."""
    if entry_type is PolicyEntryType.NONE:
        return "a None entry only terminates the policy list"
    if entry_type is PolicyEntryType.BOOL:
        return None if isinstance(value, bool) else "Bool entries take a bool"
    if entry_type in _STRING_TYPES:
        if not isinstance(value, str):
            return "string entries take a str"
        if "\0" in value:
            return "policy strings cannot contain NUL"
        codec = "latin-1" if entry_type is PolicyEntryType.ANSI_STRING else "utf-16-le"
        try:
            value.encode(codec)
        except UnicodeEncodeError:
            return f"string not encodable as {codec}"
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return "integer entries take an int"
    bits, signed = _INT_TYPES[entry_type]
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return None if low <= value <= high else f"{value} out of range for {entry_type.name}"


@dataclass(frozen=True)
class PolicyEntry:
    """One ``IMAGE_POLICY_ENTRY``; ``policy_id`` may be a value no header names yet."""

    type: PolicyEntryType
    policy_id: int
    value: PolicyValue

    def __post_init__(self) -> None:
        problem = _value_problem(self.type, self.value)
        if problem is not None:
            raise ValueError(f"policy entry {self.policy_name}: {problem}")
        if not 0 <= self.policy_id <= 0xFFFFFFFF:
            raise ValueError("policy id must fit a ULONG")

    @property
    def policy_name(self) -> str:
        try:
            return PolicyId(self.policy_id).name
        except ValueError:
            return f"UNKNOWN_{self.policy_id}"


@dataclass(frozen=True)
class TrustletPolicy:
    """``IMAGE_POLICY_METADATA``: the trustlet ID plus its policy entries (§3.1, §3.3)."""

    application_id: int
    entries: tuple[PolicyEntry, ...] = ()
    #: Must be 1 (§3.1); settable only to build deliberately invalid images.
    version: int = POLICY_METADATA_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.application_id <= _U64:
            raise ValueError("ApplicationId must fit a ULONGLONG")
        if not 0 <= self.version <= 0xFF:
            raise ValueError("Version must fit a UCHAR")

    def find(self, policy_id: int) -> PolicyEntry | None:
        """The first entry with ``policy_id``, if any."""
        return next((e for e in self.entries if e.policy_id == policy_id), None)

    @property
    def svn(self) -> int | None:
        """The policy ``Svn`` (§3.3: mixed into key derivation and signed reports)."""
        entry = self.find(PolicyId.SVN)
        return None if entry is None or isinstance(entry.value, str) else int(entry.value)

    @classmethod
    def standard(
        cls,
        application_id: int,
        *,
        svn: int | None = None,
        etw: bool = True,
        debug: bool = False,
        crash_dump: bool = False,
        capabilities: int | None = None,
        scenario_id: str | None = None,
        parent_sd: str | None = None,
    ) -> TrustletPolicy:
        """A policy shaped like the public samples in §3.1 (``IMAGE_POLICY_START`` ...)."""
        u32, u64 = PolicyEntryType.UINT32, PolicyEntryType.UINT64
        entries = [
            PolicyEntry(u32, PolicyId.ETW, int(etw)),
            PolicyEntry(u32, PolicyId.DEBUG, int(debug)),
            PolicyEntry(u32, PolicyId.CRASH_DUMP, int(crash_dump)),
        ]
        if svn is not None:
            entries.append(PolicyEntry(u32, PolicyId.SVN, svn))
        if capabilities is not None:
            entries.append(PolicyEntry(u64, PolicyId.CAPABILITY, capabilities))
        if parent_sd is not None:
            entries.append(
                PolicyEntry(PolicyEntryType.UNICODE_STRING, PolicyId.PARENT_SD, parent_sd)
            )
        if scenario_id is not None:
            entries.append(
                PolicyEntry(PolicyEntryType.ANSI_STRING, PolicyId.SCENARIO_ID, scenario_id)
            )
        return cls(application_id, tuple(entries))


def _encode_string(entry: PolicyEntry) -> bytes:
    assert isinstance(entry.value, str)
    if entry.type is PolicyEntryType.ANSI_STRING:
        return entry.value.encode("latin-1") + b"\0"
    return entry.value.encode("utf-16-le") + b"\0\0"


def encode_policy(policy: TrustletPolicy, section_rva: int, image_base: int) -> bytes:
    """The bytes of ``.tPolicy``: metadata at offset 0, then the strings it points to."""
    strings = bytearray()
    table = len(policy.entries) + 1  # + the None terminator
    strings_at = _HEADER.size + table * _ENTRY.size
    out = bytearray(_HEADER.pack(policy.version, policy.application_id))
    for entry in policy.entries:
        if entry.type in _STRING_TYPES:
            strings += b"\0" * (-len(strings) % 8)  # keep every string 8-byte aligned
            raw = image_base + section_rva + strings_at + len(strings)
            strings += _encode_string(entry)
        else:
            raw = int(entry.value) & _U64  # signed values are sign-extended (pointer cast)
        out += _ENTRY.pack(entry.type, entry.policy_id, raw)
    out += _ENTRY.pack(PolicyEntryType.NONE, PolicyId.NONE, 0)
    return bytes(out + strings)


def _read_string(
    kind: PolicyEntryType, va: int, section: bytes, section_rva: int, image_base: int
) -> str:
    start = va - image_base - section_rva
    if not 0 <= start < len(section):
        raise ImageFormatError(f"policy string VA {va:#x} is outside {POLICY_SECTION_NAME}")
    if kind is PolicyEntryType.ANSI_STRING:
        end = section.find(b"\0", start)
        if end < 0:
            raise ImageFormatError("unterminated ANSI policy string")
        return section[start:end].decode("latin-1")
    end = section.find(b"\0\0", start)
    while end >= 0 and (end - start) % 2:
        end = section.find(b"\0\0", end + 1)
    if end < 0:
        raise ImageFormatError("unterminated Unicode policy string")
    try:
        return section[start:end].decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise ImageFormatError(f"invalid UTF-16 policy string: {exc.reason}") from None


def _decode_value(
    kind: PolicyEntryType, raw: int, section: bytes, section_rva: int, image_base: int
) -> PolicyValue:
    if kind in _STRING_TYPES:
        return _read_string(kind, raw, section, section_rva, image_base)
    if kind is PolicyEntryType.BOOL:
        if raw not in (0, 1):
            raise ImageFormatError(f"Bool policy value {raw:#x} is neither 0 nor 1")
        return bool(raw)
    signed = _INT_TYPES[kind][1]
    value = raw - (1 << 64) if signed and raw >> 63 else raw
    if _value_problem(kind, value) is not None:
        raise ImageFormatError(f"policy value {raw:#x} out of range for {kind.name}")
    return value


def decode_policy(
    section: bytes, section_rva: int, metadata_rva: int, image_base: int
) -> TrustletPolicy:
    """Decode the metadata at ``metadata_rva`` from the raw ``.tPolicy`` bytes.

    Raises :class:`ImageFormatError` for anything that is not a well-formed policy.
    """
    pos = metadata_rva - section_rva
    if not 0 <= pos <= len(section) - _HEADER.size:
        raise ImageFormatError(f"policy metadata does not fit in {POLICY_SECTION_NAME}")
    version, application_id = _HEADER.unpack_from(section, pos)
    if version != POLICY_METADATA_VERSION:
        raise ImageFormatError(f"policy metadata Version {version}, expected 1")
    pos += _HEADER.size
    entries: list[PolicyEntry] = []
    while True:
        if pos + _ENTRY.size > len(section):
            raise ImageFormatError("policy entry list has no None terminator")
        type_value, policy_id, raw = _ENTRY.unpack_from(section, pos)
        pos += _ENTRY.size
        if type_value == PolicyEntryType.NONE:
            if policy_id or raw:
                raise ImageFormatError("malformed None terminator entry")
            return TrustletPolicy(application_id, tuple(entries), version)
        try:
            kind = PolicyEntryType(type_value)
        except ValueError:
            raise ImageFormatError(f"unknown policy entry type {type_value}") from None
        value = _decode_value(kind, raw, section, section_rva, image_base)
        entries.append(PolicyEntry(kind, policy_id, value))
