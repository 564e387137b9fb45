"""Issue 11 item 14: a trustlet is admitted on the two EKUs the public record names (IUM and
Windows System Component Verification, signing level 12: Ionescu, Black Hat 2015), not on code
signing."""

from __future__ import annotations

from vbsim.image import requirement_for, verify_image
from vbsim.image.signing_level import (
    EKU_CODE_SIGNING,
    EKU_IUM,
    EKU_WINDOWS_SYSTEM_COMPONENT,
    SigningLevel,
)
from vbsim.signing import Pki, sign_image


def test_the_trustlet_requirement_is_ium_and_wscv_at_level_12() -> None:
    requirement = requirement_for("trustlet")
    assert requirement is not None
    assert requirement.ekus == {EKU_IUM, EKU_WINDOWS_SYSTEM_COMPONENT}
    assert requirement.min_level == SigningLevel.WINDOWS


def test_a_signer_without_code_signing_is_admitted(pki: Pki, unsigned_trustlet: bytes) -> None:
    signer = pki.make_leaf([EKU_IUM, EKU_WINDOWS_SYSTEM_COMPONENT])
    image = sign_image(unsigned_trustlet, signer, program_name="LsaIso")
    result = verify_image(image, pki.trust_store(), requirement=requirement_for("trustlet"))
    assert result.ok, (result.failure, result.detail)
    assert result.signing_level == SigningLevel.WINDOWS


def test_either_ium_or_wscv_missing_is_refused(pki: Pki, unsigned_trustlet: bytes) -> None:
    for ekus in ([EKU_CODE_SIGNING, EKU_IUM], [EKU_CODE_SIGNING, EKU_WINDOWS_SYSTEM_COMPONENT]):
        image = sign_image(unsigned_trustlet, pki.make_leaf(ekus), program_name="LsaIso")
        result = verify_image(image, pki.trust_store(), requirement=requirement_for("trustlet"))
        assert not result.ok, ekus
