"""Legacy switches reproduce real Secure Kernel bugs, and the monitor reports them.

legacy-2019 (``unchecked_securecall_params``, CVE-2020-0917/0918 class, vbs-internals §6 A8) and
the double-fetch switch (A9): a crafted FILL_SECURE_ALLOCATION writes past its allocation into the
Secure Kernel's policy page — invariant 6.  The same calls on today's Secure Kernel are refused or
harmless, and the monitor stays silent.
"""

from __future__ import annotations

import pytest

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.invariants import InvariantViolation
from vbsim.nt import kdp
from vbsim.ntstatus import NtStatus
from vbsim.policy import Legacy, preset
from vbsim.sk.services.allocation import mdl_bytes

from .kit import Rig, attached


def _overflow(rig: Rig) -> int:
    nt, vp = rig.nt, rig.vp
    with rig.monitor.step("create a one-page secure allocation"):
        status, handle = kdp.create_secure_allocation(nt, vp.cpu, PAGE_SIZE)
    assert status == NtStatus.SUCCESS
    source = kdp.stage_buffer(nt, vp.cpu, b"\x41" * (2 * PAGE_SIZE))
    _, mdl_pfn = kdp._staged(nt, vp.cpu, mdl_bytes(source, 24))
    with rig.monitor.step("fill 24 bytes at offset 4088"):
        return kdp.fill_secure_allocation_raw(nt, vp.cpu, handle, PAGE_SIZE - 8, 0, mdl_pfn)


@pytest.mark.parametrize(
    "policy",
    [
        preset("legacy-2019"),
        preset("hardened").with_changes(legacy=Legacy(unchecked_securecall_params=True)),
    ],
    ids=["legacy-2019", "hardened+unchecked"],
)
def test_the_unchecked_fill_breaks_invariant_6(policy: object) -> None:
    rig = attached(policy)  # type: ignore[arg-type]
    try:
        with pytest.raises(InvariantViolation) as caught:
            _overflow(rig)
        violation = caught.value.violation
        assert violation.invariant == 6 and "hvci-hash-records" in violation.message
        assert violation.label == "fill 24 bytes at offset 4088"
        assert any(e.mechanism == "securecall.legacy" for e in violation.events)
    finally:
        rig.close()


@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "hardened"])
def test_the_same_fill_is_refused_today(name: str) -> None:
    rig = attached(name)
    try:
        assert _overflow(rig) == NtStatus.INVALID_PARAMETER
        assert rig.monitor.violations == []
    finally:
        rig.close()
