"""EKUs, signing levels, and what each kind of image must be signed with.

EKU OIDs (vbs-internals §3.4): IUM ``1.3.6.1.4.1.311.10.3.37`` [V wincrypt.h], Windows System
Component Verification ``1.3.6.1.4.1.311.10.3.6`` [S], enclave ``1.3.6.1.4.1.311.10.3.42`` [V];
code signing ``1.3.6.1.5.5.7.3.3`` is RFC 5280's id-kp-codeSigning.

**Model choice.** The reference gives only "signing level 12 (Windows)" for trustlets, and marks
it [S] (§3.4).  vbsim derives a level from the signer's effective EKUs after the chain to a
trusted root has been verified: Windows System Component Verification -> 12 (WINDOWS); code
signing -> 4 (AUTHENTICODE); anything else -> 1 (UNSIGNED).  The numbers follow winnt.h's
``SE_SIGNING_LEVEL_*`` values, which the reference does not list [U] except 12.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from vbsim.image.kinds import ImageKind

EKU_CODE_SIGNING = "1.3.6.1.5.5.7.3.3"
EKU_WINDOWS_SYSTEM_COMPONENT = "1.3.6.1.4.1.311.10.3.6"
EKU_IUM = "1.3.6.1.4.1.311.10.3.37"
EKU_ENCLAVE = "1.3.6.1.4.1.311.10.3.42"

EKU_NAMES = {
    EKU_CODE_SIGNING: "code signing",
    EKU_WINDOWS_SYSTEM_COMPONENT: "Windows System Component Verification",
    EKU_IUM: "Isolated User Mode",
    EKU_ENCLAVE: "VBS enclave",
}


class SigningLevel(IntEnum):
    UNCHECKED = 0
    UNSIGNED = 1
    AUTHENTICODE = 4
    WINDOWS = 12  # §3.4: the level for Windows-signed system components [S]


def level_for(ekus: Iterable[str]) -> SigningLevel:
    """The signing level a trusted signer with these effective EKUs reaches (model choice)."""
    found = set(ekus)
    if EKU_WINDOWS_SYSTEM_COMPONENT in found:
        return SigningLevel.WINDOWS
    if EKU_CODE_SIGNING in found:
        return SigningLevel.AUTHENTICODE
    return SigningLevel.UNSIGNED


@dataclass(frozen=True)
class SigningRequirement:
    """What a verifier demands: EKUs the signer must hold and a minimum signing level (an
    ``SE_SIGNING_LEVEL_*`` number: a kernel's CI reads it from memory, where any value can be,
    ``vbsim.image.anchors``)."""

    ekus: frozenset[str] = frozenset({EKU_CODE_SIGNING})
    min_level: int = SigningLevel.AUTHENTICODE


#: Per-kind requirements.  Trustlets: the two EKUs the public descriptions name — IUM and Windows
#: System Component Verification — at signing level 12 (Ionescu, "Battle of SKM and IUM", Black
#: Hat 2015; vbs-internals §3.4, App. A item 6).  Code signing is not among them: the record does
#: not ask for it, so a trustlet signer need not carry it (issue 11 item 14).  Hypervisor,
#: Secure Kernel and NT kernel are Microsoft-signed components (§1.1 rows 5, 6, 8; §1.2): level
#: 12 in the model.  Drivers need any trusted code-signing signer and applications nothing
#: (model choices).
REQUIREMENTS: dict[ImageKind, SigningRequirement | None] = {
    ImageKind.TRUSTLET: SigningRequirement(
        frozenset({EKU_IUM, EKU_WINDOWS_SYSTEM_COMPONENT}), SigningLevel.WINDOWS
    ),
    ImageKind.HYPERVISOR: SigningRequirement(min_level=SigningLevel.WINDOWS),
    ImageKind.SECURE_KERNEL: SigningRequirement(min_level=SigningLevel.WINDOWS),
    ImageKind.NT_KERNEL: SigningRequirement(min_level=SigningLevel.WINDOWS),
    ImageKind.DRIVER: SigningRequirement(),
    ImageKind.APPLICATION: None,
}


def requirement_for(kind: ImageKind | str) -> SigningRequirement | None:
    return REQUIREMENTS[ImageKind(kind)]
