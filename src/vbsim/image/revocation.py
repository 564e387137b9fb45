"""A ``SkuSiPolicy``-like revocation policy (vbs-internals §1.1 row 4, §6 A15/A23).

Secure Boot accepts an *old but validly signed* component (§1.2, §3.6 last bullet); the
Downdate fix is an opt-in policy that revokes such versions.  vbsim models it as data: per
component (matched case-insensitively on the image's ``OriginalFilename``) a minimum version
and/or SVN, plus revoked signer-certificate fingerprints and revoked image hashes.  Which file
version rules the real ``SkuSiPolicy.p7b`` holds is not in the reference; the shape is a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from vbsim.image.version import ComponentVersion


class RevocationReason(StrEnum):
    CERTIFICATE_REVOKED = "certificate-revoked"
    IMAGE_HASH_REVOKED = "image-hash-revoked"
    VERSION_BELOW_MINIMUM = "version-below-minimum"
    SVN_BELOW_MINIMUM = "svn-below-minimum"
    VERSION_UNKNOWN = "version-unknown"


@dataclass(frozen=True)
class ComponentFloor:
    """The oldest version and/or SVN of one component that may still load."""

    min_version: tuple[int, int, int, int] | None = None
    min_svn: int | None = None


@dataclass(frozen=True)
class RevocationPolicy:
    #: Component file name (e.g. ``securekernel.exe``) -> floor; names compare case-insensitively.
    components: Mapping[str, ComponentFloor] = field(default_factory=dict, hash=False)
    #: SHA-256 fingerprints (lower-case hex of the DER) of revoked certificates.
    revoked_certificates: frozenset[str] = frozenset()
    #: Authenticode SHA-256 digests (lower-case hex) of revoked images.
    revoked_image_hashes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        lower = frozenset(f.lower() for f in self.revoked_certificates)
        object.__setattr__(self, "revoked_certificates", lower)
        hashes = frozenset(h.lower() for h in self.revoked_image_hashes)
        object.__setattr__(self, "revoked_image_hashes", hashes)

    def floor(self, component: str | None) -> ComponentFloor | None:
        if component is None:
            return None
        wanted = component.lower()
        return next((f for n, f in self.components.items() if n.lower() == wanted), None)


@dataclass(frozen=True)
class RevocationVerdict:
    reason: RevocationReason | None = None
    detail: str = "not revoked"

    @property
    def revoked(self) -> bool:
        return self.reason is not None


def check_revocation(
    policy: RevocationPolicy,
    *,
    component: str | None,
    version: ComponentVersion | None,
    svn: int | None,
    certificate_fingerprints: Iterable[str] = (),
    image_hash: str | None = None,
) -> RevocationVerdict:
    """Why ``policy`` revokes this image, or a verdict with ``reason=None``."""
    for fingerprint in certificate_fingerprints:
        if fingerprint.lower() in policy.revoked_certificates:
            return RevocationVerdict(
                RevocationReason.CERTIFICATE_REVOKED, f"certificate {fingerprint} is revoked"
            )
    if image_hash is not None and image_hash.lower() in policy.revoked_image_hashes:
        return RevocationVerdict(RevocationReason.IMAGE_HASH_REVOKED, f"image {image_hash}")
    floor = policy.floor(component)
    if floor is None:
        return RevocationVerdict()
    if floor.min_version is not None:
        if version is None:
            return RevocationVerdict(RevocationReason.VERSION_UNKNOWN, f"{component}: no version")
        if version.numbers < floor.min_version:
            wanted = ".".join(map(str, floor.min_version))
            return RevocationVerdict(
                RevocationReason.VERSION_BELOW_MINIMUM,
                f"{component} {'.'.join(map(str, version.numbers))} < {wanted}",
            )
    if floor.min_svn is not None:
        if svn is None:
            return RevocationVerdict(RevocationReason.VERSION_UNKNOWN, f"{component}: no SVN")
        if svn < floor.min_svn:
            return RevocationVerdict(
                RevocationReason.SVN_BELOW_MINIMUM, f"{component} SVN {svn} < {floor.min_svn}"
            )
    return RevocationVerdict()
