"""Trustlet admission verifies against SKCI's anchor record in SK memory (``vbsim.image.anchors``):
the root and the trustlet requirement (IUM + Windows System Component Verification EKUs, level
12) are read from there at each admission, so a K1 patch of them is expressible and decides."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vbsim.boot.trustlets import trustlet_image
from vbsim.image import EKU_CODE_SIGNING, ImageKind, SigningRequirement, anchors
from vbsim.image.pki import other_root
from vbsim.ium.images import LSAISO
from vbsim.ntstatus import NtStatus
from vbsim.signing import model_pki, other_pki

from .kit import Machine, booted


@pytest.fixture
def fresh() -> Iterator[Machine]:
    m = booted("vbs")
    yield m
    m.close()


def _k1_write(machine: Machine, va: int, data: bytes) -> None:
    """K1 (the SK compromised): a store through the SK's own translation, in VTL1."""
    previous = machine.vp.host_entry(1)
    try:
        machine.vp.cpu.write(va, data)
    finally:
        machine.vp.host_entry(previous)


def _record_va(machine: Machine) -> int:
    assert machine.system.sk is not None
    return machine.system.sk.hvci.ci_va


def test_a_k1_patch_of_the_trustlet_requirement_admits_a_code_signing_signer(
    fresh: Machine,
) -> None:
    image = trustlet_image(LSAISO, signer=model_pki().make_leaf([EKU_CODE_SIGNING]))
    assert fresh.start(image, 1, LSAISO)[0] == NtStatus.INVALID_IMAGE_HASH
    slot = anchors.REQUIREMENTS_AT + anchors.SLOTS[ImageKind.TRUSTLET] * anchors.REQUIREMENT.size
    weaker = SigningRequirement(frozenset({EKU_CODE_SIGNING}))
    mask = sum(anchors.EKU_BITS[eku] for eku in weaker.ekus)
    _k1_write(fresh, _record_va(fresh) + slot, anchors.REQUIREMENT.pack(mask, 4, 1, 0))
    assert fresh.start(image, 1, LSAISO)[0] == NtStatus.SUCCESS


def test_a_k1_patch_of_the_root_admits_the_attackers_trustlet(fresh: Machine) -> None:
    image = trustlet_image(LSAISO, signer=other_pki().signer("ium"))
    assert fresh.start(image, 1, LSAISO)[0] == NtStatus.INVALID_IMAGE_HASH
    der = other_root().root_der
    _k1_write(fresh, _record_va(fresh), len(der).to_bytes(4, "little"))
    _k1_write(fresh, _record_va(fresh) + anchors.ANCHOR_AT, der)
    assert fresh.start(image, 1, LSAISO)[0] == NtStatus.SUCCESS
    # ... and the model's own LsaIso, chaining to a root SKCI no longer names, is refused.
    assert fresh.start(trustlet_image(LSAISO), 1, LSAISO)[0] == NtStatus.INVALID_IMAGE_HASH
