"""Test trustlets and VTL0 helpers for the IUM tests.

Test trustlet code is guest code (``vbsim.hw.code``): one routine, ``test.ium.main``, registered
below, runs at VTL1 CPL3 inside the trustlet's own address space and dispatches on the first u32
of the message NT hands it (the model's stand-in for an ALPC request):

====  ==========  ==================================================================================
op    name        payload → reply
====  ==========  ==================================================================================
0     ECHO        any bytes → the same bytes
1     SYSCALLS    records of five u64 (number, R10, RDX, R8, R9) → one u64 RAX per record, then
                  ``OUT_LEN`` bytes read back from ``OUT_VA`` (where services write their output)
2     READ        u64 VA, u64 length → the bytes read at VA (a #PF ends the thread, no reply)
3     ENCRYPT     u32 key, data → u32 status, then the blob (Iumbase ``EncryptData``)
4     DECRYPT     u32 key, blob → u32 status, then the data (Iumbase ``DecryptData``)
5     STORE       u32 slot, data → u32 status of ``SecureStoragePut``, u32 status of the Get
====  ==========  ==================================================================================

VTL0 side: :func:`spawn` starts an ordinary NT process with the VTL0 test routines mapped (they
run at VTL0 CPL3 and reach NT only through ``syscall``).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

from vbsim.boot.chain import System, boot
from vbsim.boot.trustlets import trustlet_image
from vbsim.hw.code import guest_code
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.ium import iumbase
from vbsim.ium import lsaiso as _lsaiso  # noqa: F401  (registers lsaiso.main)
from vbsim.ium import vmsp as _vmsp  # noqa: F401  (registers vmsp.main)
from vbsim.nt.kernel import NtKernel, UserRun
from vbsim.nt.process import Process, Region, Token
from vbsim.nt.secure_process import TrustletRun, create_secure_process, run_trustlet
from vbsim.nt.syscalls import syscall
from vbsim.ntstatus import NtStatus
from vbsim.policy import Policy, preset
from vbsim.sk.ium.process import HEAP_VA, SecureProcess
from vbsim.trace import Event

ENTRY = "test.ium.main"
OP_ECHO, OP_SYSCALLS, OP_READ, OP_ENCRYPT, OP_DECRYPT, OP_STORE = range(6)
#: Where SYSCALLS records point services' output (a private heap page of the trustlet).
OUT_VA = HEAP_VA + 0x800
OUT_LEN = 64
RECORD = struct.Struct("<5Q")
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _u32(value: int) -> bytes:
    return (value & 0xFFFF_FFFF).to_bytes(4, "little")


def _raw_syscall(vp: VirtualProcessor, number: int, args: tuple[int, ...]) -> int:
    vp.rax = number & MASK64
    vp.r10, vp.rdx, vp.r8, vp.r9 = (a & MASK64 for a in args)
    vp.syscall()
    return vp.rax


@guest_code(ENTRY)
def _main(vp: VirtualProcessor, message: int, length: int, reply: int) -> int:
    if length < 8:
        return 0
    op = vp.read_u32(message)
    payload = vp.read(message + 8, length - 8)
    out = b""
    if op == OP_ECHO:
        out = payload
    elif op == OP_SYSCALLS:
        statuses = []
        for i in range(len(payload) // RECORD.size):
            number, *args = RECORD.unpack_from(payload, i * RECORD.size)
            statuses.append(_raw_syscall(vp, number, tuple(args)))
        out = b"".join(s.to_bytes(8, "little") for s in statuses) + vp.read(OUT_VA, OUT_LEN)
    elif op == OP_READ:
        va, size = struct.unpack_from("<QQ", payload)
        out = vp.read(va, min(size, PAGE_SIZE))
    elif op in (OP_ENCRYPT, OP_DECRYPT):
        key = int.from_bytes(payload[:4], "little")
        try:
            if op == OP_ENCRYPT:
                data = iumbase.encrypt_data(vp, payload[4:], key)
            else:
                data = iumbase.decrypt_data(vp, payload[4:], key)
            out = _u32(NtStatus.SUCCESS) + data
        except iumbase.IumError as error:
            out = _u32(error.status)
    elif op == OP_STORE:
        slot = int.from_bytes(payload[:4], "little")
        statuses = []
        for action in (
            lambda: iumbase.secure_storage_put(vp, slot, payload[4:]),
            lambda: iumbase.secure_storage_get(vp, slot),
        ):
            try:
                action()
                statuses.append(int(NtStatus.SUCCESS))
            except iumbase.IumError as error:
                statuses.append(error.status)
        out = b"".join(_u32(s) for s in statuses)
    vp.write(reply, out[:PAGE_SIZE])
    return len(out[:PAGE_SIZE])


def message(op: int, payload: bytes = b"") -> bytes:
    return struct.pack("<II", op, 0) + payload


def syscalls_message(*calls: tuple[int, ...]) -> bytes:
    records = b""
    for number, *args in calls:
        padded = [*args, 0, 0, 0, 0][:4]
        records += RECORD.pack(number & MASK64, *(a & MASK64 for a in padded))
    return message(OP_SYSCALLS, records)


def syscall_statuses(reply: bytes, count: int) -> list[int]:
    return [int.from_bytes(reply[i * 8 : i * 8 + 8], "little") for i in range(count)]


@functools.lru_cache(maxsize=16)
def test_image(trustlet_id: int, debug: bool = False, name: str = "Test.exe") -> bytes:
    """A signed test trustlet (entry ``test.ium.main``) with ``trustlet_id`` in its policy."""
    return trustlet_image(name, trustlet_id=trustlet_id, entry=ENTRY, debug=debug)


# -- a booted machine and NT-side helpers --------------------------------------------------------
@dataclass
class Machine:
    """A booted system as the IUM tests use it."""

    system: System

    @property
    def nt(self) -> NtKernel:
        assert self.system.nt is not None
        return self.system.nt

    @property
    def vp(self) -> VirtualProcessor:
        assert self.system.machine is not None
        return self.system.machine.bsp

    def mark(self) -> int:
        return len(self.system.trace.events)

    def events_since(self, mark: int, kind: str | None = None) -> list[Event]:
        return [e for e in self.system.trace.events[mark:] if kind is None or e.kind == kind]

    def skci_events(self, mark: int) -> list[Event]:
        """The deciding SKCI events (refusals and the admission); checks passed on the way are
        traced too (``passed``), see :meth:`skci_passed`."""
        return [
            e
            for e in self.events_since(mark, "ium")
            if e.mechanism.startswith("skci.") and e.outcome != "passed"
        ]

    def skci_passed(self, mark: int) -> list[str]:
        return [
            e.mechanism.removeprefix("skci.")
            for e in self.events_since(mark, "ium")
            if e.mechanism.startswith("skci.") and e.outcome == "passed"
        ]

    def start(
        self, image: bytes, trustlet_id: int, name: str = "Test.exe", mailbox_key: int = 0
    ) -> tuple[int, Process | None]:
        return create_secure_process(
            self.nt, self.vp.cpu, name, trustlet_id, mailbox_key=mailbox_key, image=image
        )

    def started(
        self, image: bytes, trustlet_id: int, name: str = "Test.exe", mailbox_key: int = 0
    ) -> Process:
        status, process = self.start(image, trustlet_id, name, mailbox_key)
        assert status == NtStatus.SUCCESS, NtStatus.name_of(status)
        assert process is not None
        return process

    def run(self, process: Process, data: bytes = b"") -> TrustletRun:
        return run_trustlet(self.nt, self.vp.cpu, process, data)

    def secure_processes(self) -> dict[int, SecureProcess]:
        """The SK's table of secure processes (what a VTL1 debugger would show)."""
        assert self.system.sk is not None
        assert self.system.machine is not None
        table: dict[int, SecureProcess] = self.system.sk.host_processes(self.system.machine.ram)
        return table

    def terminated(self, process: Process) -> bool:
        """Whether the SKPROCESS (in VTL1 RAM) of ``process`` says it was terminated."""
        assert self.system.machine is not None
        return self.secure_process(process).host_terminated(self.system.machine.ram)

    def secure_process(self, process: Process) -> SecureProcess:
        return self.secure_processes()[process.secure_pid]

    def close(self) -> None:
        if self.system.machine is not None:
            self.system.machine.close()


def booted(policy: str | Policy = "vbs") -> Machine:
    system = boot(preset(policy) if isinstance(policy, str) else policy)
    assert system.booted and system.vbs_running, system.halted
    return Machine(system)


# -- VTL0 user programs ------------------------------------------------------------------------
@guest_code("tests.ium.vtl0.syscall")
def _vtl0_syscall(vp: VirtualProcessor, number: int, args: tuple[int, ...]) -> int:
    return _raw_syscall(vp, number, (*args, 0, 0, 0, 0)[:4])


@guest_code("tests.ium.vtl0.read_process")
def _vtl0_read_process(
    vp: VirtualProcessor, pid: int, va: int, length: int, buffer: int
) -> tuple[int, bytes]:
    status = syscall(vp, "NtReadVirtualMemory", pid, va, buffer, length)
    return status, vp.read(buffer, length)


@guest_code("tests.ium.vtl0.query_process")
def _vtl0_query_process(vp: VirtualProcessor, pid: int, buffer: int) -> tuple[int, int]:
    status = syscall(vp, "NtQueryInformationProcess", pid, 0x3F, buffer)
    return status, vp.read_u64(buffer)


VTL0_ROUTINES = [
    "tests.ium.vtl0.syscall",
    "tests.ium.vtl0.read_process",
    "tests.ium.vtl0.query_process",
]
ADMIN_DEBUG = Token("Administrator", admin=True, debug_privilege=True)


@dataclass
class User:
    machine: Machine
    process: Process
    entries: dict[str, int]
    scratch: Region

    def run(self, routine: str, *args: Any) -> UserRun:
        return self.machine.nt.run_user(
            self.machine.vp.cpu, self.process, self.entries[routine], *args
        )

    def returned(self, routine: str, *args: Any) -> Any:
        outcome = self.run(routine, *args)
        assert outcome.terminated is None, outcome.terminated
        return outcome.returned


def spawn(machine: Machine, name: str = "debugger.exe", token: Token = ADMIN_DEBUG) -> User:
    nt, vp = machine.nt, machine.vp
    process = nt.create_process(vp.cpu, name, token)
    entries = nt.map_code(vp.cpu, process, VTL0_ROUTINES)
    scratch = nt.allocate(vp.cpu, process, 4 * PAGE_SIZE)
    return User(machine, process, entries, scratch)
