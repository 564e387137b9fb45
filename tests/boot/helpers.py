"""Helpers for the boot tests: run an administrator's program in VTL0, persist the registry.

How a registry change survives a reboot in the model: NT keeps its live configuration in
the SYSTEM hive in VTL0 RAM (``vbsim.nt.registry``); the disk keeps the persistent copy in
``Disk.registry``, which winload's ``OslSetVsmPolicy`` reads at the next boot (vbs-internals §1.1
row 3).  Windows flushes the hive to disk lazily and at shutdown; :func:`shut_down` plays that
part, copying the values the boot path reads from the running kernel to the disk.
"""

from __future__ import annotations

from vbsim.boot.chain import System
from vbsim.boot.chain import system_values as hive
from vbsim.boot.disk import VBS_REGISTRY_KEY, Disk
from vbsim.boot.logon import DEFAULT_LOGON
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.nt import lsass
from vbsim.nt.kernel import UserRun
from vbsim.nt.process import Token
from vbsim.nt.syscalls import syscall
from vbsim.ntstatus import NtStatus

#: The registry values that live in the SYSTEM hive and are read by the boot path.
PERSISTED_KEYS = (VBS_REGISTRY_KEY,)

ADMIN = Token("Administrator", admin=True, debug_privilege=True)


@guest_code("tests.boot.set_value")
def _set_value(vp: VirtualProcessor, key: str, value: int, buffer: int) -> int:
    """``reg add HKLM\\...\\DeviceGuard /v EnableVirtualizationBasedSecurity /d 0`` at CPL3."""
    raw = key.encode("utf-8")
    vp.write(buffer, raw)
    return syscall(vp, "NtSetValueKey", buffer, len(raw), value)


@guest_code("tests.boot.read_process")
def _read_process(
    vp: VirtualProcessor, pid: int, va: int, length: int, buffer: int
) -> tuple[int, bytes]:
    status = syscall(vp, "NtReadVirtualMemory", pid, va, buffer, length)
    return status, vp.read(buffer, length)


def run_as_admin(system: System, routine: str, *args: object) -> UserRun:
    """Start an administrator's process (with a 64 KiB buffer passed last) and run ``routine``."""
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None and system.booted
    vp = machine.bsp
    process = nt.create_process(vp.cpu, "admin.exe", ADMIN)
    entry = nt.map_code(vp.cpu, process, [routine])[routine]
    buffer = nt.allocate(vp.cpu, process, 16 * 4096)
    return nt.run_user(vp.cpu, process, entry, *args, buffer.base)


def set_registry_value(system: System, key: str, value: int) -> int:
    outcome = run_as_admin(system, "tests.boot.set_value", key, value)
    assert outcome.terminated is None
    status = outcome.returned
    assert isinstance(status, int)
    return status


def shut_down(system: System) -> Disk:
    """Flush the persisted registry values of the running kernel to the disk (a clean
    shutdown), and return the disk for the next boot."""
    assert system.nt is not None
    for key in PERSISTED_KEYS:
        values = hive(system)
        if key in values:
            system.disk.registry[key] = int(values[key])
    if system.machine is not None:
        system.machine.close()
    return system.disk


def dump_lsass(system: System) -> bytes:
    """An administrator with SeDebugPrivilege reads lsass's credential record (mimikatz)."""
    assert system.nt is not None
    pid, va, length = lsass.credential_region(system.nt)
    outcome = run_as_admin(system, "tests.boot.read_process", pid, va, length)
    assert outcome.terminated is None
    status, data = outcome.returned
    assert status == NtStatus.SUCCESS
    assert isinstance(data, bytes)
    return data


def finds_nt_owf(system: System) -> bool:
    return lsass.nt_owf(DEFAULT_LOGON.password) in dump_lsass(system)
