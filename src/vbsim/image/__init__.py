"""PE32+ images for vbsim: build, parse, ``.tPolicy``, Authenticode verification, the model
PKI's public certificates, trust anchors in guest memory, revocation.

Nothing here holds a private key or signs: that is host side, :mod:`vbsim.signing`.  Guest code
may import this package (a kernel contains a verifier); it verifies against the root it reads
from its own memory (:mod:`vbsim.image.anchors`).

See vbs-internals §3 (trustlets, ``.tPolicy``, signing requirements) and §1/§6 (component
versions, SVNs, ``SkuSiPolicy`` revocation).
"""

from typing import TYPE_CHECKING

from vbsim.image.authenticode import (
    attach_signature,
    authenticode_digest,
    strip_signature,
)
from vbsim.image.chain import CertificateInfo
from vbsim.image.errors import ImageFormatError
from vbsim.image.kinds import ImageKind
from vbsim.image.parse import ExportInfo, ParsedImage, SectionInfo, parse_image
from vbsim.image.pki import PkiError, PublicPki, data_dir, model_pki
from vbsim.image.policy import (
    PolicyEntry,
    PolicyEntryType,
    PolicyId,
    TrustletId,
    TrustletPolicy,
)
from vbsim.image.revocation import (
    ComponentFloor,
    RevocationPolicy,
    RevocationReason,
    RevocationVerdict,
    check_revocation,
)
from vbsim.image.signing_level import (
    EKU_CODE_SIGNING,
    EKU_ENCLAVE,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    SigningLevel,
    SigningRequirement,
    level_for,
    requirement_for,
)
from vbsim.image.trust import TrustStore
from vbsim.image.verify import (
    Failure,
    Finding,
    FindingKind,
    SignatureResult,
    VerificationResult,
    verify_image,
)
from vbsim.image.version import ComponentVersion

if TYPE_CHECKING:
    from vbsim.image.builder import SectionSpec, build_image

#: Names served by :mod:`vbsim.image.builder`, imported on first use: it loads LIEF (~0.3 s),
#: which reading and verifying images (``inspect``, ``verify``, the loaders) do not need.
_BUILDER_NAMES = frozenset({"SectionSpec", "build_image"})


def __getattr__(name: str) -> object:
    if name in _BUILDER_NAMES:
        from vbsim.image import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'vbsim.image' has no attribute {name!r}")


__all__ = [
    "EKU_CODE_SIGNING",
    "EKU_ENCLAVE",
    "EKU_IUM",
    "EKU_WINDOWS_SYSTEM_COMPONENT",
    "CertificateInfo",
    "ComponentFloor",
    "ComponentVersion",
    "ExportInfo",
    "Failure",
    "Finding",
    "FindingKind",
    "ImageFormatError",
    "ImageKind",
    "ParsedImage",
    "PkiError",
    "PolicyEntry",
    "PolicyEntryType",
    "PolicyId",
    "PublicPki",
    "RevocationPolicy",
    "RevocationReason",
    "RevocationVerdict",
    "SectionInfo",
    "SectionSpec",
    "SignatureResult",
    "SigningLevel",
    "SigningRequirement",
    "TrustStore",
    "TrustletId",
    "TrustletPolicy",
    "VerificationResult",
    "attach_signature",
    "authenticode_digest",
    "build_image",
    "check_revocation",
    "data_dir",
    "level_for",
    "model_pki",
    "parse_image",
    "requirement_for",
    "strip_signature",
    "verify_image",
]
