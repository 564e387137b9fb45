"""Code integrity's trust anchor lives in guest RAM (``vbsim.image.anchors``), not in Python.

NT's CI (DSE, ci.dll in VTL0) reads the root it trusts and the driver requirement from its
CiPolicy section at each check; SKCI reads its own copy from an SK data page.  So a K0 write of
NT's copy, where nothing protects it, changes what NT's CI trusts; HVCI's SKCI, in VTL1, keeps
trusting the root in its own memory, which VTL0 cannot write.
"""

from __future__ import annotations

import pytest

from vbsim.hw.faults import Bugcheck
from vbsim.image import EKU_IUM, ImageKind, anchors, model_pki, requirement_for
from vbsim.image.pki import other_root
from vbsim.nt import drivers
from vbsim.nt.drivers import OTHER_ROOT_DRIVER, SAMPLE_DRIVER
from vbsim.ntstatus import NtStatus
from vbsim.policy import preset

from .kit import Env, direct_va, make_env


def _attacker_record() -> bytes:
    """The anchor record with the attacker's root (the "other" hierarchy, whose key it holds)
    and the same driver requirement: what a K0 attacker writes over NT's copy."""
    record = anchors.encode(
        other_root().root_der, {ImageKind.DRIVER: requirement_for(ImageKind.DRIVER)}
    )
    size = int.from_bytes(record[:4], "little")
    return record[: anchors.ANCHOR_AT + size]


def _k0_write_bytes(env: Env, va: int, data: bytes) -> None:
    """The vulnerable driver's WRITE8, eight bytes at a time (the K0 primitive of A3/A6)."""
    padded = data + b"\0" * (-len(data) % 8)
    for offset in range(0, len(padded), 8):
        value = int.from_bytes(padded[offset : offset + 8], "little")
        assert env.k0_write(va + offset, value) == NtStatus.SUCCESS


def _dse_failures(env: Env) -> list[str]:
    return [str(e.detail.get("failure")) for e in env.events("driver", "dse")]


def test_nt_ci_trusts_the_root_its_cipolicy_section_holds() -> None:
    env = make_env("vbs-off")
    record = env.vp.cpu.read(drivers.ci_trust_va(env.nt), anchors.RECORD_SIZE)
    assert record == anchors.model_record(model_pki().root_der, (ImageKind.DRIVER,))
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert _dse_failures(env)[-1] == "untrusted-root"


@pytest.mark.parametrize("name", ["vbs-off", "legacy-2019"])
def test_a_k0_write_of_nts_anchor_makes_dse_trust_the_attackers_root(name: str) -> None:
    env = make_env(name)
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    _k0_write_bytes(env, drivers.ci_trust_va(env.nt), _attacker_record())
    # CI decides from what RAM holds now: the attacker's root, not the model's.
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.SUCCESS
    assert [e.outcome for e in env.events("driver", "dse")][-1] == "verified"
    assert env.load(SAMPLE_DRIVER) == NtStatus.INVALID_IMAGE_HASH  # model-signed: untrusted now
    assert _dse_failures(env)[-1] == "untrusted-root"


def test_a_k0_write_of_a_garbage_anchor_refuses_everything_without_a_python_error() -> None:
    env = make_env("vbs-off")
    _k0_write_bytes(env, drivers.ci_trust_va(env.nt), (64).to_bytes(4, "little") + bytes(60))
    assert env.load(SAMPLE_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert _dse_failures(env)[-1] == "untrusted-root"


def test_a_k0_write_of_nts_requirement_is_honoured_by_nts_ci() -> None:
    """The requirement is RAM too: demanding the IUM EKU of drivers refuses the sample driver
    (code signing only) that the shipped requirement admits."""
    env = make_env("vbs-off")
    slot = anchors.REQUIREMENTS_AT + anchors.SLOTS[ImageKind.DRIVER] * anchors.REQUIREMENT.size
    stricter = anchors.REQUIREMENT.pack(anchors.EKU_BITS[EKU_IUM], 4, 1, 0)
    _k0_write_bytes(env, drivers.ci_trust_va(env.nt) + slot, stricter)
    assert env.load(SAMPLE_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert _dse_failures(env)[-1] == "missing-eku"


def test_under_kdp_nts_anchor_is_read_only() -> None:
    """Where KDP runs, CiPolicy is KDP read-only: the anchor write is an EPT violation."""
    env = make_env("vbs")
    va = drivers.ci_trust_va(env.nt)
    env.ensure_vulnerable()
    with pytest.raises(Bugcheck):
        env.k0_write(va + anchors.ANCHOR_AT, 0)


def test_under_hvci_skci_keeps_trusting_its_own_root() -> None:
    """KDP off, so NT's copy *can* be written; with HVCI the decision is SKCI's, from the SK's
    copy: the attacker's root gets it nothing."""
    env = make_env(preset("vbs-hvci").with_changes(kdp=False))
    _k0_write_bytes(env, drivers.ci_trust_va(env.nt), _attacker_record())
    assert (
        env.vp.cpu.read(drivers.ci_trust_va(env.nt) + anchors.ANCHOR_AT, 8)
        == (other_root().root_der[:8])
    )
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    refused = [e for e in env.events("skci", "skci.signature") if e.outcome == "refused"]
    assert refused and refused[-1].detail["failure"] == "untrusted-root"
    assert env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS  # SKCI still trusts the model root


def test_the_sks_anchor_cannot_be_written_from_vtl0() -> None:
    env = make_env(preset("vbs-hvci").with_changes(kdp=False))
    assert env.system.sk is not None and env.system.machine is not None
    gpa = env.system.sk.hvci.ci_gpa
    ram = env.system.machine.ram
    before = ram.read(gpa, anchors.RECORD_SIZE)
    assert before == anchors.model_record(
        model_pki().root_der, (ImageKind.DRIVER, ImageKind.TRUSTLET)
    )
    env.ensure_vulnerable()
    with pytest.raises(Bugcheck):  # NT's direct map of the SK page: no VTL0 access in SLAT
        env.k0_write(direct_va(gpa >> 12) + anchors.ANCHOR_AT, 0)
    assert ram.read(gpa, anchors.RECORD_SIZE) == before


def test_a_k1_write_of_skcis_anchor_is_what_skci_then_trusts() -> None:
    """K1 (the SK compromised) can patch SKCI's roots: the SK's copy in its own memory is what
    it verifies against, so the attacker's driver passes SKCI."""
    env = make_env("vbs-hvci")
    assert env.system.sk is not None
    record = anchors.encode(
        other_root().root_der,
        {
            ImageKind.DRIVER: requirement_for(ImageKind.DRIVER),
            ImageKind.TRUSTLET: requirement_for(ImageKind.TRUSTLET),
        },
    )
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    previous = env.vp.host_entry(1)
    try:
        env.vp.cpu.write(env.system.sk.hvci.ci_va, record)
    finally:
        env.vp.host_entry(previous)
    assert env.load(OTHER_ROOT_DRIVER) == NtStatus.SUCCESS


def test_a_signing_level_no_signer_reaches_refuses_every_driver() -> None:
    """The level is the number RAM holds: 13 is above any level a signer reaches."""
    env = make_env("vbs-off")
    slot = anchors.REQUIREMENTS_AT + anchors.SLOTS[ImageKind.DRIVER] * anchors.REQUIREMENT.size
    _k0_write_bytes(env, drivers.ci_trust_va(env.nt) + slot, anchors.REQUIREMENT.pack(0, 13, 1, 0))
    assert env.load(SAMPLE_DRIVER) == NtStatus.INVALID_IMAGE_HASH
    assert _dse_failures(env)[-1] == "signing-level-too-low"
