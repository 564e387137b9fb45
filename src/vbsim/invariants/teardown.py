"""Releasing a machine the soak or a fuzzer is done with.

``Machine.close()`` now unwinds the hypervisor's suspended VTL contexts and drops the loaded
kernel, which used to keep every closed machine alive (found by the soak: its memory grew by the
machines it rebooted); :func:`release` is kept as the one name the soak and fuzzers call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vbsim.machine import Machine


def release(machine: Machine) -> None:
    machine.close()
