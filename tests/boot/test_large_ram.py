"""Large machines boot: NT's PFN database (one entry per page) and HVCI's one-byte-per-page
tables in SK memory are built from the loader's reserve before NT takes over, and the reserve
grows with RAM (16 GiB was OutOfFrames: ntoskrnl; 64 GiB, the policy's largest, was
OutOfFrames: securekernel)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vbsim.boot.chain import boot
from vbsim.invariants.teardown import release
from vbsim.policy import preset


@pytest.mark.parametrize(("name", "mib"), [("vbs", 16384), ("hardened", 65536)])
def test_a_large_machine_boots(name: str, mib: int) -> None:
    system = boot(replace(preset(name), ram_mib=mib))
    try:
        assert system.booted, system.halted
        assert system.machine is not None and system.machine.ram.pages == mib * 256
    finally:
        if system.machine is not None:
            release(system.machine)
