"""NT routes a request on LsaIso's port from the EPROCESSes in RAM, read at the moment it decides
(``vbsim.nt.secure_process.nt_alpc_send_wait_receive_port``): the target's TrustletId and the
caller's UniqueProcessId, not NT's Python handles (``Process.trustlet_id``, ``Process.pid``)."""

from __future__ import annotations

from typing import Any

from vbsim.attacks.catalogue.a21_a29_credentials import _pass_the_challenge
from vbsim.attacks.context import AttackContext
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt import lsass
from vbsim.nt.layouts import EPROCESS, NO_TRUSTLET, write_field
from vbsim.nt.process import Process
from vbsim.nt.syscalls import syscall
from vbsim.ntstatus import NtStatus

CHALLENGE = bytes.fromhex("1122334455667788")


def _ask_lsaiso(cpu: Cpu, pid: int, record_va: int, port: int, buffer: int) -> int:
    """A0 at CPL3: copy lsass's record (SeDebugPrivilege), hand its blob to LsaIso's port."""
    status = syscall(cpu, "NtReadVirtualMemory", pid, record_va, buffer, lsass.RECORD_SIZE)
    if status:
        return status
    return _pass_the_challenge(cpu, buffer, port, buffer)  # A21's SSP, on the copy


def _write(cpu: Cpu, eprocess: int, offset: int, size: int, value: int) -> int:
    """K0: one write to an EPROCESS field in RAM (a kernel write primitive)."""
    from vbsim.nt.layouts import Field

    write_field(cpu, eprocess, Field("planted", offset, size), value)
    return 0


def _k0_set(ctx: AttackContext, process: Process, field: Any, value: int) -> None:
    ctx.kernel(_write, process.eprocess, field.offset, field.size, value)


def _request(ctx: AttackContext, caller: Process) -> int:
    nt = ctx.booted.nt
    assert nt is not None
    pid, record_va, _ = lsass.credential_region(nt)
    port = lsass.lsaiso_port(nt, ctx.vp.cpu)
    buffer = ctx.user_buffer(caller, 3 * PAGE_SIZE)
    status = ctx.user(_ask_lsaiso, pid, record_va, port, buffer, process=caller)
    assert isinstance(status, int)
    return status


def _lsaiso(ctx: AttackContext) -> Process:
    nt = ctx.booted.nt
    assert nt is not None
    shadow = nt.lookup_process(ctx.vp.cpu, lsass.lsaiso_port(nt, ctx.vp.cpu))
    assert shadow is not None and shadow.trustlet_id == 1
    return shadow


def test_an_administrator_outside_lsass_is_refused(ctx: AttackContext) -> None:
    assert _request(ctx, ctx.process(admin=True)) == NtStatus.ACCESS_DENIED


def test_the_shadow_s_trustlet_id_is_read_from_ram(ctx: AttackContext) -> None:
    """K0 rewrites LsaIso's shadow EPROCESS.TrustletId: NT follows the bytes."""
    shadow = _lsaiso(ctx)
    nt = ctx.booted.nt
    assert nt is not None
    lsass_process = ctx.booted.process(lsass.credential_region(nt)[0])
    assert _request(ctx, lsass_process) == NtStatus.SUCCESS  # lsass itself is served
    _k0_set(ctx, shadow, EPROCESS.TrustletId, NO_TRUSTLET)
    # Not a trustlet any more: not a port NT delivers to, even for lsass.
    assert _request(ctx, lsass_process) == NtStatus.INVALID_HANDLE
    _k0_set(ctx, shadow, EPROCESS.TrustletId, 2)
    # Trustlet 2 is not LSA_ISO_RPC_SERVER: the lsass-only owner check no longer applies, and an
    # administrator's request reaches the trustlet (still LsaIso's code in VTL1, which answers).
    assert _request(ctx, ctx.process(admin=True)) == NtStatus.SUCCESS
    _k0_set(ctx, shadow, EPROCESS.TrustletId, 1)
    assert _request(ctx, ctx.process(admin=True)) == NtStatus.ACCESS_DENIED


def test_the_caller_s_pid_is_read_from_ram(ctx: AttackContext) -> None:
    """K0 writes lsass's PID into an administrator's EPROCESS.UniqueProcessId: the owner check
    compares the PID the caller's EPROCESS holds now (as ALPC stamps a message with the CLIENT_ID
    kernel memory holds), so the request is admitted; NT's Python ``Process.pid`` is not read."""
    nt = ctx.booted.nt
    assert nt is not None
    lsass_pid = lsass.credential_region(nt)[0]
    attacker = ctx.process(admin=True, name="cid-forger.exe")
    assert _request(ctx, attacker) == NtStatus.ACCESS_DENIED
    _k0_set(ctx, attacker, EPROCESS.UniqueProcessId, lsass_pid)
    assert attacker.pid != lsass_pid  # NT's handle still has the PID it was created with
    assert _request(ctx, attacker) == NtStatus.SUCCESS
