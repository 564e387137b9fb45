"""Kernel CFG: the bitmap in NT memory, the check at NT's indirect calls, and the Secure Kernel's
protection of the bitmap (vbsim.nt.kcfg, vbsim.sk.services.kcfg)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from vbsim import policy as presets
from vbsim.attacks.context import AttackContext
from vbsim.boot.disk import Disk
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.nt import drivers, kcfg, notify
from vbsim.nt.kernel import NtKernel
from vbsim.nt.layouts import (
    FAST_FAIL_GUARD_ICALL_CHECK_FAILURE,
    KCFG_BITMAP_PAGES,
    KCFG_WINDOWS,
    kcfg_slot,
    kcfg_valid,
)
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.services import kcfg as sk_kcfg
from vbsim.sk.sscn import Service

CHECK_FAILURE = int(BugCheck.KERNEL_SECURITY_CHECK_FAILURE)
Boot = Callable[[str], AttackContext]


@pytest.fixture
def boot() -> Iterator[Boot]:
    """Boot a preset (machines closed afterwards)."""
    booted: list[AttackContext] = []

    def make(preset: str) -> AttackContext:
        policy = presets.preset(preset)
        ctx = AttackContext(policy, preset, Disk.install(policy))
        ctx.boot()
        booted.append(ctx)
        return ctx

    yield make
    for ctx in booted:
        if ctx.system is not None and ctx.system.machine is not None:
            ctx.system.machine.close()


def _nt(ctx: AttackContext) -> NtKernel:
    nt = ctx.booted.nt
    assert nt is not None
    return nt


def _bit(ctx: AttackContext, target: int) -> bool:
    """Host side: ``target``'s bit in the bitmap, read from RAM at the bitmap's GPA."""
    machine = ctx.booted.machine
    assert machine is not None
    slot = kcfg_slot(target)
    assert slot is not None
    gpa = _nt(ctx).variables[kcfg.BITMAP].gpa + slot[0]
    return kcfg_valid(int.from_bytes(machine.ram.read(gpa, 8), "little"), target)


def _routine(ctx: AttackContext, name: str) -> int:
    return _nt(ctx).space.routines[name]


# -- the format -----------------------------------------------------------------------------------
def test_two_bits_per_16_bytes_an_aligned_target_needs_the_first() -> None:
    base = KCFG_WINDOWS[0][0]
    assert kcfg_slot(base) == (0, 0) and kcfg_slot(base + 0x20) == (0, 4)
    assert kcfg_slot(base + 0x200) == (8, 0)  # one u64 covers 512 bytes
    assert kcfg_valid(1 << 4, base + 0x20) and not kcfg_valid(1 << 5, base + 0x20)
    # an unaligned target needs both bits of its pair (guard_check_icall)
    assert not kcfg_valid(1 << 4, base + 0x21) and kcfg_valid(3 << 4, base + 0x21)
    assert kcfg_slot(0xFFFF_8000_0000_0000) is None  # outside the covered windows


def test_the_windows_cover_nt_and_the_driver_region() -> None:
    assert KCFG_WINDOWS[1][0] == drivers.DRIVER_BASE
    assert KCFG_BITMAP_PAGES == 33


# -- where it runs --------------------------------------------------------------------------------
def test_with_hvci_the_bitmap_is_in_ram_and_names_nt_s_and_the_edr_s_targets(boot: Boot) -> None:
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    machine = ctx.booted.machine
    assert machine is not None
    control = nt.variables[kcfg.GUARD_ICALL_BITMAP]
    bitmap = nt.variables[kcfg.BITMAP]
    assert bitmap.gpa == control.gpa + PAGE_SIZE and bitmap.va == control.va + PAGE_SIZE
    assert int.from_bytes(machine.ram.read(control.gpa, 8), "little") == bitmap.va
    assert _bit(ctx, _routine(ctx, drivers.ZW_FLUSH_INSTRUCTION_CACHE))
    assert _bit(ctx, _routine(ctx, "nt.KiSystemCall64"))
    assert not _bit(ctx, _routine(ctx, kcfg.GADGET))  # never address-taken
    edr = _edr(ctx)
    notify_rva, _ = notify.edr_rvas()
    assert _bit(ctx, edr.base + notify_rva)  # ENABLE_CFG_TARGET at the EDR's load


@pytest.mark.parametrize("preset", ["vbs", "legacy-2019"])
def test_without_hvci_the_secure_kernel_refuses_and_only_kernel_addresses_are_checked(
    boot: Boot, preset: str
) -> None:
    ctx = boot(preset)
    nt = _nt(ctx)
    assert ctx.kernel(lambda cpu: kcfg.bitmap_of(nt, cpu)) == 0
    answers = [e for e in ctx.trace.events if e.kind == "kcfg" and e.mechanism == "kcfg.init"]
    assert answers[-1].detail["status"] == "STATUS_NOT_SUPPORTED"
    gadget = _routine(ctx, kcfg.GADGET)
    ctx.kernel(lambda cpu: kcfg.guard_dispatch_icall(nt, cpu, gadget, "test"))
    assert ctx.trace.ran(kcfg.GADGET) == [(0, 0)] and not ctx.crashes


def test_without_a_hypervisor_nothing_is_set_up(boot: Boot) -> None:
    ctx = boot("vbs-off")
    nt = _nt(ctx)
    assert kcfg.BITMAP not in nt.variables
    assert ctx.kernel(lambda cpu: kcfg.bitmap_of(nt, cpu)) == 0


# -- the check ------------------------------------------------------------------------------------
def test_a_valid_target_is_called(boot: Boot) -> None:
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    target = _routine(ctx, drivers.ZW_FLUSH_INSTRUCTION_CACHE)
    result = ctx.kernel(lambda cpu: kcfg.guard_dispatch_icall(nt, cpu, target, "test"))
    assert result == NtStatus.SUCCESS and not ctx.crashes


def test_an_invalid_target_bugchecks_0x139_reported_from_vtl0(boot: Boot) -> None:
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    gadget = _routine(ctx, kcfg.GADGET)
    ctx.kernel(lambda cpu: kcfg.guard_dispatch_icall(nt, cpu, gadget, "test"))
    [crash] = ctx.crashes
    assert (crash.vtl, crash.code) == (0, CHECK_FAILURE)
    assert crash.parameters[1] == FAST_FAIL_GUARD_ICALL_CHECK_FAILURE == 10
    assert not ctx.trace.ran(kcfg.GADGET)  # refused before the fetch
    [refusal] = [e for e in ctx.trace.events if e.kind == "kcfg" and e.outcome == "refused"]
    assert refusal.detail["reason"] == "not-a-valid-target" and refusal.detail["target"] == gadget


def test_a_user_address_fails_even_without_the_bitmap(boot: Boot) -> None:
    """McGarr (2021): with VBS off guard_dispatch_icall still refuses a user-mode target."""
    ctx = boot("vbs")
    nt = _nt(ctx)
    ctx.kernel(lambda cpu: kcfg.guard_dispatch_icall(nt, cpu, 0x7FF6_0000_1000, "test"))
    [crash] = ctx.crashes
    assert (crash.vtl, crash.code, crash.parameters[1]) == (0, CHECK_FAILURE, 10)


def test_the_check_reads_the_bitmap_in_ram_at_each_call(boot: Boot) -> None:
    """A K1 write (the Secure Kernel's own view of the page) sets the gadget's bit: the next
    call passes.  The bitmap, not a Python set, decides."""
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    gadget = _routine(ctx, kcfg.GADGET)
    slot = kcfg_slot(gadget)
    assert slot is not None
    sk = ctx.booted.sk
    assert sk is not None
    at = sk.space.phys_va(nt.variables[kcfg.BITMAP].gpa + slot[0])

    def k1_set(cpu: Cpu) -> None:
        cpu.write_u64(at, cpu.read_u64(at) | 1 << slot[1])

    ctx.secure_kernel(k1_set)
    assert _bit(ctx, gadget)
    ctx.kernel(lambda cpu: kcfg.guard_dispatch_icall(nt, cpu, gadget, "test"))
    assert ctx.trace.ran(kcfg.GADGET) == [(0, 0)] and not ctx.crashes


# -- the Secure Kernel's protection ---------------------------------------------------------------
@pytest.mark.parametrize("preset", ["vbs-hvci", "hardened"])
def test_a_k0_write_to_the_bitmap_is_refused(boot: Boot, preset: str) -> None:
    ctx = boot(preset)
    nt = _nt(ctx)
    gadget = _routine(ctx, kcfg.GADGET)
    protected = [e for e in ctx.trace.events if e.mechanism == "kcfg.protect"]
    assert protected[-1].outcome == "read-only"
    assert protected[-1].detail["hvpt"] is (preset == "hardened")  # pinned where HVPT runs
    slot = kcfg_slot(gadget)
    assert slot is not None
    at = nt.variables[kcfg.BITMAP].va + slot[0]
    ctx.kernel(lambda cpu: cpu.write_u64(at, cpu.read_u64(at) | 1 << slot[1]))
    [crash] = ctx.crashes
    assert crash.vtl == 0 and crash.code == int(BugCheck.KMODE_EXCEPTION_NOT_HANDLED)
    denied = [e for e in ctx.trace.events if e.kind == "access" and e.outcome == "denied"]
    assert denied and denied[0].mechanism == "slat"
    assert not _bit(ctx, gadget)


def test_the_control_page_is_protected_too(boot: Boot) -> None:
    """Zeroing guard_icall_bitmap would turn the check off: the page is read-only as well."""
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    control = nt.variables[kcfg.GUARD_ICALL_BITMAP].va
    ctx.kernel(lambda cpu: cpu.write_u64(control, 0))
    assert ctx.crashes and ctx.crashes[0].vtl == 0
    machine = ctx.booted.machine
    assert machine is not None
    gpa = nt.variables[kcfg.GUARD_ICALL_BITMAP].gpa
    assert int.from_bytes(machine.ram.read(gpa, 8), "little") == nt.variables[kcfg.BITMAP].va


def test_the_sk_takes_the_bitmap_only_while_it_trusts_vtl0(boot: Boot) -> None:
    """INITIALIZE_KERNEL_CFG after boot (a K0 attacker registering a bitmap of its own) is
    refused: the SK's phase in its memory says it no longer trusts VTL0."""
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    assert nt.vsl is not None
    vsl = nt.vsl
    page, _ = ctx.kernel_page()
    status, _ = ctx.kernel(
        lambda cpu: vsl.call(cpu, Service.INITIALIZE_KERNEL_CFG, page, page + PAGE_SIZE, 33)
    )
    assert status == NtStatus.INVALID_DEVICE_STATE


def test_enable_cfg_target_takes_only_routines_of_the_loaded_image(boot: Boot) -> None:
    ctx = boot("vbs-hvci")
    nt = _nt(ctx)
    assert nt.vsl is not None
    vsl = nt.vsl
    edr = _edr(ctx)
    handle = edr.secure_handle
    gadget = _routine(ctx, kcfg.GADGET)
    notify_rva, data_rva = notify.edr_rvas()

    def enable(target: int) -> int:
        return int(
            ctx.kernel(lambda cpu: vsl.call(cpu, Service.ENABLE_CFG_TARGET, handle, target))[0]
        )

    assert enable(gadget) == NtStatus.INVALID_PARAMETER  # NT's code: no secure image's
    assert enable(edr.base + data_rva) == NtStatus.INVALID_PARAMETER  # the EDR's .data
    assert enable(edr.base + notify_rva + 8) == NtStatus.INVALID_PARAMETER  # mid-routine
    assert enable(edr.base + notify_rva) == NtStatus.SUCCESS  # an export: already valid
    assert not _bit(ctx, gadget) and not ctx.crashes
    sk = ctx.booted.sk
    assert sk is not None and sk_kcfg.record_va(sk)


def _edr(ctx: AttackContext) -> drivers.LoadedDriver:
    """The EDR driver as RAM describes it now."""
    machine = ctx.booted.machine
    assert machine is not None
    found = drivers.host_driver(machine.ram, _nt(ctx), notify.EDR_DRIVER)
    assert found is not None
    return found
