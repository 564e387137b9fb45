"""HVCI at boot: the initial VTL0 SLAT the Secure Kernel programs in phase 1."""

from __future__ import annotations

import pytest

from vbsim.hw.faults import Bugcheck
from vbsim.hw.slat import KX, UX, R, W
from vbsim.hw.x86 import PAGE_SIZE
from vbsim.invariants.skstate import hvci_view
from vbsim.nt.drivers import CI_OPTIONS_ENFORCING, ci_options_va
from vbsim.nt.notify import EDR_DRIVER
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.layouts import Config
from vbsim.sk.services.hvci import PageState
from vbsim.sk.sscn import Service

from .kit import direct_va, make_env, wkx_pages


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_no_vtl0_page_is_writable_and_kernel_executable_after_boot(name: str) -> None:
    env = make_env(name)
    assert wkx_pages(env.system) == []


def test_nt_boot_code_pages_are_validated_and_everything_else_is_never_kx() -> None:
    env = make_env("vbs-hvci")
    sk = env.system.sk
    assert sk is not None
    assert env.system.machine is not None
    ram = env.system.machine.ram
    state = hvci_view(ram, sk)  # the tables as they stand in VTL1 memory
    # NT's boot code and the code of the drivers loaded at boot (the EDR driver) are validated.
    drivers = set(env.driver(EDR_DRIVER).code_pfns)
    code_pages = set(env.nt.space.code_pages) | drivers
    assert code_pages and set(state.hashes) == code_pages
    for pfn in code_pages:
        assert env.rights(pfn) == R | KX | UX
        assert state.states[pfn] == PageState.VALIDATED
    # NT's data (g_CiOptions lives there) and its page tables: RW and user-executable, never KX.
    data_pfn = env.nt.data_gpa >> 12
    assert env.rights(data_pfn) == R | W | UX
    assert env.rights(env.nt.space.root >> 12) == R | W | UX
    # The Secure Kernel's own pages are not VTL0's to execute or write.
    for pfn in sorted(sk.host_own_pages(ram))[:8]:
        assert not env.rights(pfn) & (W | KX)
    [event] = env.events("hvci", "hvci.boot")
    assert event.outcome == "enabled"
    assert event.detail["code_pages"] == len(env.nt.space.code_pages)  # drivers load later
    assert event.vtl == 1


def test_without_hvci_the_secure_kernel_does_not_enforce_anything() -> None:
    env = make_env("vbs")
    sk = env.system.sk
    assert sk is not None and env.system.machine is not None
    assert sk.host_config(env.system.machine.ram, Config.HVCI) == 0
    assert hvci_view(env.system.machine.ram, sk).hashes == {}
    assert env.nt.vsl is not None
    status, _ = env.nt.vsl.call(
        env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, 100, R | KX | UX
    )
    assert status == NtStatus.NOT_SUPPORTED
    assert env.events("hvci", "hvci.off")
    # The default protection (RWX) is still everywhere in VTL0.
    assert env.rights(env.nt.space.code_pages[0]) == R | W | KX | UX


def test_g_ci_options_starts_enforcing_in_guest_ram() -> None:
    env = make_env("vbs-off")
    assert env.vp.read_u64(ci_options_va(env.nt)) == CI_OPTIONS_ENFORCING


def test_patching_nt_code_through_the_direct_map_bugchecks_under_hvci() -> None:
    env = make_env("vbs-hvci")
    target = direct_va(env.nt.space.code_pages[0]) + PAGE_SIZE - 8  # an unused thunk slot
    with pytest.raises(Bugcheck) as stop:
        env.k0_write(target, 0xCC)
    assert stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED and stop.value.vtl == 0
    refused = [e for e in env.events("intercept", "slat") if e.outcome == "refused"]
    assert refused and refused[-1].detail["gpa"] >> 12 == env.nt.space.code_pages[0]


def test_patching_nt_code_works_without_hvci() -> None:
    env = make_env("vbs")
    target = direct_va(env.nt.space.code_pages[0]) + PAGE_SIZE - 8
    assert env.k0_write(target, 0xCC) == NtStatus.SUCCESS
    assert env.k0_read(target) == 0xCC


def test_the_rights_other_modules_should_give_back_to_vtl0() -> None:
    from vbsim.sk.services.hvci import vtl0_default_rights

    hvci_env, plain_env = make_env("vbs-hvci"), make_env("vbs")
    assert hvci_env.system.sk is not None and plain_env.system.sk is not None
    from vbsim.invariants.skstate import HostMem

    for env, want in ((hvci_env, R | W | UX), (plain_env, R | W | KX | UX)):
        sk, machine = env.system.sk, env.system.machine
        assert sk is not None and machine is not None
        assert vtl0_default_rights(sk, HostMem(machine.ram, sk)) == want
