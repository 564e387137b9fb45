"""User-mode test programs: guest routines that run at VTL0 ring 3 inside an NT process.

Everything here touches memory only through the processor (``vp.read``/``vp.write`` at CPL3) and
reaches the kernel only through ``syscall``; the harness merely creates the process (as a loader
would) and schedules its thread with ``NtKernel.run_user``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vbsim.boot.chain import System
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt.kernel import NtKernel, UserRun
from vbsim.nt.process import Process, ProcessView, Region, Token, host_view
from vbsim.nt.syscalls import NUMBERS, syscall

SCRATCH_SIZE = 16 * PAGE_SIZE


def raw_syscall(vp: VirtualProcessor, number: int, *args: int) -> int:
    """An ntdll-like stub for any number (the named stub only knows the build's table)."""
    vp.rax = number & 0xFFFF_FFFF_FFFF_FFFF
    regs = [*(a & 0xFFFF_FFFF_FFFF_FFFF for a in args), 0, 0, 0, 0][:4]
    vp.r10, vp.rdx, vp.r8, vp.r9 = regs
    vp.syscall()
    return vp.rax


@guest_code("tests.nt.probe_syscall")
def _probe_syscall(vp: VirtualProcessor, number: int, args: list[int]) -> tuple[int, int, int]:
    """(CPL before, status, CPL after) of one system call."""
    before = vp.cpl
    status = raw_syscall(vp, number, *args)
    return before, status, vp.cpl


@guest_code("tests.nt.syscalls")
def _syscalls(vp: VirtualProcessor, calls: list[tuple[int, list[int]]]) -> list[int]:
    return [raw_syscall(vp, number, *args) for number, args in calls]


@guest_code("tests.nt.read")
def _read(vp: VirtualProcessor, va: int, length: int) -> bytes:
    return vp.read(va, length)


@guest_code("tests.nt.write")
def _write(vp: VirtualProcessor, va: int, data: bytes) -> None:
    vp.write(va, data)


@guest_code("tests.nt.read_process")
def _read_process(
    vp: VirtualProcessor, pid: int, va: int, length: int, buffer: int
) -> tuple[int, bytes]:
    """ReadProcessMemory: NtReadVirtualMemory into ``buffer``, then read the buffer."""
    status = syscall(vp, "NtReadVirtualMemory", pid, va, buffer, length)
    return status, vp.read(buffer, length)


@guest_code("tests.nt.write_process")
def _write_process(vp: VirtualProcessor, pid: int, va: int, data: bytes, buffer: int) -> int:
    vp.write(buffer, data)
    return syscall(vp, "NtWriteVirtualMemory", pid, va, buffer, len(data))


@guest_code("tests.nt.allocate")
def _allocate(vp: VirtualProcessor, size: int, protect: int, out: int) -> tuple[int, int]:
    status = syscall(vp, "NtAllocateVirtualMemory", out, size, protect)
    return status, vp.read_u64(out)


@guest_code("tests.nt.set_value")
def _set_value(vp: VirtualProcessor, key: str, value: int, buffer: int) -> int:
    raw = key.encode("utf-8")
    vp.write(buffer, raw)
    return syscall(vp, "NtSetValueKey", buffer, len(raw), value)


@guest_code("tests.nt.query_value")
def _query_value(vp: VirtualProcessor, key: str, buffer: int) -> tuple[int, int]:
    raw = key.encode("utf-8")
    vp.write(buffer, raw)
    out = buffer + 512
    status = syscall(vp, "NtQueryValueKey", buffer, len(raw), out)
    return status, vp.read_u64(out)


@guest_code("tests.nt.alpc")
def _alpc(vp: VirtualProcessor, port: int, message: bytes, buffer: int) -> tuple[int, bytes]:
    """NtAlpcSendWaitReceivePort: request at ``buffer``, reply page at ``buffer + 0x2000``."""
    vp.write(buffer, message)
    reply = buffer + 0x2000
    status = syscall(vp, "NtAlpcSendWaitReceivePort", port, buffer, len(message), reply)
    length = min(vp.read_u64(reply), PAGE_SIZE - 8)
    return status, vp.read(reply + 8, length)


ROUTINES = [
    "tests.nt.alpc",
    "tests.nt.probe_syscall",
    "tests.nt.syscalls",
    "tests.nt.read",
    "tests.nt.write",
    "tests.nt.read_process",
    "tests.nt.write_process",
    "tests.nt.allocate",
    "tests.nt.set_value",
    "tests.nt.query_value",
]


@dataclass
class User:
    """A VTL0 user process with the test routines mapped and a scratch data region."""

    system: System
    process: Process
    entries: dict[str, int]
    scratch: Region

    @property
    def nt(self) -> NtKernel:
        assert self.system.nt is not None
        return self.system.nt

    @property
    def vp(self) -> VirtualProcessor:
        assert self.system.machine is not None
        return self.system.machine.bsp

    @property
    def view(self) -> ProcessView:
        """The process's EPROCESS and token as RAM holds them now (host side)."""
        assert self.system.machine is not None
        return host_view(self.system.machine.ram, self.process.eprocess)

    def run(self, routine: str, *args: Any) -> UserRun:
        return self.nt.run_user(self.vp.cpu, self.process, self.entries[routine], *args)

    def returned(self, routine: str, *args: Any) -> Any:
        outcome = self.run(routine, *args)
        assert outcome.terminated is None, outcome.terminated
        return outcome.returned


def spawn(system: System, name: str, token: Token) -> User:
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None and system.booted
    vp = machine.bsp
    process = nt.create_process(vp.cpu, name, token)
    entries = nt.map_code(vp.cpu, process, ROUTINES)
    scratch = nt.allocate(vp.cpu, process, SCRATCH_SIZE)
    return User(system, process, entries, scratch)


def inject(system: System, pid: int) -> User:
    """Code running inside an existing process (an injected DLL or SSP, as Pass-the-Challenge
    puts one into lsass)."""
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None and system.booted
    vp = machine.bsp
    process = system.process(pid)
    entries = nt.map_code(vp.cpu, process, ROUTINES)
    scratch = nt.allocate(vp.cpu, process, SCRATCH_SIZE)
    return User(system, process, entries, scratch)


USER = Token("bob")
ADMIN = Token("Administrator", admin=True)
ADMIN_DEBUG = Token("Administrator", admin=True, debug_privilege=True)

__all__ = ["ADMIN", "ADMIN_DEBUG", "NUMBERS", "USER", "User", "inject", "raw_syscall", "spawn"]
