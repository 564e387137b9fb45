# mypy: disallow-subclassing-any=False
"""Authenticode ASN.1 types (Microsoft "Windows Authenticode Portable Executable Signature
Format"), declared with asn1crypto.

::

    SpcIndirectDataContent ::= SEQUENCE { data SpcAttributeTypeAndOptionalValue,
                                          messageDigest DigestInfo }
    SpcAttributeTypeAndOptionalValue ::= SEQUENCE { type OBJECT IDENTIFIER, value ANY OPTIONAL }
    SpcPeImageData ::= SEQUENCE { flags SpcPeImageFlags, file [0] EXPLICIT SpcLink OPTIONAL }
    SpcLink ::= CHOICE { url [0] IMPLICIT IA5String, moniker [1] IMPLICIT SpcSerializedObject,
                         file [2] EXPLICIT SpcString }
    SpcString ::= CHOICE { unicode [0] IMPLICIT BMPString, ascii [1] IMPLICIT IA5String }
    SpcSpOpusInfo ::= SEQUENCE { programName [0] EXPLICIT SpcString OPTIONAL,
                                 moreInfo [1] EXPLICIT SpcLink OPTIONAL }
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeAlias

from asn1crypto import algos, cms, core

_Spec: TypeAlias = list[tuple[Any, ...]]

SPC_INDIRECT_DATA_OID = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA_OID = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO_OID = "1.3.6.1.4.1.311.2.1.12"
SPC_STATEMENT_TYPE_OID = "1.3.6.1.4.1.311.2.1.11"
SPC_INDIVIDUAL_SP_KEY_PURPOSE_OID = "1.3.6.1.4.1.311.2.1.21"
#: The conventional (and, per the Authenticode spec, ignored) SpcPeImageData file link.
OBSOLETE_FILE_LINK = "<<<Obsolete>>>"


class SpcString(core.Choice):
    _alternatives: ClassVar[_Spec] = [
        ("unicode", core.BMPString, {"implicit": 0}),
        ("ascii", core.IA5String, {"implicit": 1}),
    ]


class SpcSerializedObject(core.Sequence):
    _fields: ClassVar[_Spec] = [
        ("class_id", core.OctetString),
        ("serialized_data", core.OctetString),
    ]


class SpcLink(core.Choice):
    _alternatives: ClassVar[_Spec] = [
        ("url", core.IA5String, {"implicit": 0}),
        ("moniker", SpcSerializedObject, {"implicit": 1}),
        ("file", SpcString, {"explicit": 2}),
    ]


class SpcPeImageFlags(core.BitString):
    _map: ClassVar[dict[int, str]] = {
        0: "include_resources",
        1: "include_debug_info",
        2: "include_import_address_table",
    }


class SpcPeImageData(core.Sequence):
    _fields: ClassVar[_Spec] = [
        ("flags", SpcPeImageFlags),
        ("file", SpcLink, {"explicit": 0, "optional": True}),
    ]


class SpcAttributeTypeAndOptionalValue(core.Sequence):
    _fields: ClassVar[_Spec] = [
        ("type", core.ObjectIdentifier),
        ("value", core.Any, {"optional": True}),
    ]


class SpcIndirectDataContent(core.Sequence):
    _fields: ClassVar[_Spec] = [
        ("data", SpcAttributeTypeAndOptionalValue),
        ("message_digest", algos.DigestInfo),
    ]


class SpcSpOpusInfo(core.Sequence):
    _fields: ClassVar[_Spec] = [
        ("program_name", SpcString, {"explicit": 0, "optional": True}),
        ("more_info", SpcLink, {"explicit": 1, "optional": True}),
    ]


class SpcStatementType(core.SequenceOf):
    _child_spec = core.ObjectIdentifier


class SpcContentInfo(cms.ContentInfo):
    """PKCS#7 ContentInfo whose content is SpcIndirectDataContent (for encoding)."""

    _oid_specs: ClassVar[dict[str, Any]] = {SPC_INDIRECT_DATA_OID: SpcIndirectDataContent}
