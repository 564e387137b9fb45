"""SkuSiPolicy-like revocation checks."""

from __future__ import annotations

from vbsim.image import (
    ComponentFloor,
    ComponentVersion,
    RevocationPolicy,
    RevocationReason,
    check_revocation,
)

SK = "securekernel.exe"
POLICY = RevocationPolicy(
    {SK: ComponentFloor(min_version=(10, 0, 22621, 3000), min_svn=5)},
    revoked_certificates=frozenset({"AA" * 32}),
    revoked_image_hashes=frozenset({"BB" * 32}),
)


def test_current_version_passes() -> None:
    verdict = check_revocation(
        POLICY, component=SK, version=ComponentVersion(10, 0, 22621, 3000, 5), svn=5
    )
    assert not verdict.revoked and verdict.reason is None


def test_old_version_is_revoked() -> None:
    verdict = check_revocation(
        POLICY, component="SecureKernel.EXE", version=ComponentVersion(10, 0, 22621, 2999), svn=9
    )
    assert verdict.reason is RevocationReason.VERSION_BELOW_MINIMUM


def test_old_svn_is_revoked() -> None:
    verdict = check_revocation(
        POLICY, component=SK, version=ComponentVersion(10, 0, 26100, 1, 4), svn=4
    )
    assert verdict.reason is RevocationReason.SVN_BELOW_MINIMUM


def test_unknown_version_is_revoked() -> None:
    verdict = check_revocation(POLICY, component=SK, version=None, svn=None)
    assert verdict.reason is RevocationReason.VERSION_UNKNOWN


def test_unlisted_component_passes() -> None:
    verdict = check_revocation(POLICY, component="ntoskrnl.exe", version=None, svn=None)
    assert not verdict.revoked


def test_certificate_and_hash_revocation() -> None:
    by_cert = check_revocation(
        POLICY, component=None, version=None, svn=None, certificate_fingerprints=["aa" * 32]
    )
    assert by_cert.reason is RevocationReason.CERTIFICATE_REVOKED
    by_hash = check_revocation(POLICY, component=None, version=None, svn=None, image_hash="bb" * 32)
    assert by_hash.reason is RevocationReason.IMAGE_HASH_REVOKED
