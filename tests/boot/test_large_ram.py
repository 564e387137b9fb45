"""A 16 GiB machine boots: NT's PFN database (one entry per page) is built from the loader's
reserve before NT takes over, and the reserve grows with RAM (it was OutOfFrames: ntoskrnl)."""

from __future__ import annotations

from dataclasses import replace

from vbsim.boot.chain import boot
from vbsim.invariants.teardown import release
from vbsim.policy import preset


def test_a_16_gib_machine_boots() -> None:
    system = boot(replace(preset("vbs"), ram_mib=16384))
    try:
        assert system.booted, system.halted
        assert system.machine is not None and system.machine.ram.pages == 16384 * 256
    finally:
        if system.machine is not None:
            release(system.machine)
