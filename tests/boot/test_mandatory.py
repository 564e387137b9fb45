"""Attacks on the boot configuration (vbs-internals §1.4, §6 A15-A17, A22 consequences).

An attacker changes the disk (a component image, the registry) and reboots; the next boot's
outcome depends on Mandatory, the SkuSiPolicy floors and the UEFI lock.
"""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System, boot
from vbsim.boot.disk import VBS_EFI_VARIABLE, VBS_REGISTRY_KEY, Disk
from vbsim.ntstatus import NtStatus
from vbsim.policy import Component, preset

from .helpers import finds_nt_owf, set_registry_value, shut_down

OLD_SK = Component(version="10.0.22621.1", svn=3)  # older, still validly signed


def with_component(name: str, policy_name: str, component: Component) -> System:
    policy = preset(policy_name)
    disk = Disk.install(policy)
    disk.components[name] = component
    return boot(policy, disk)


def boot_outcomes(system: System) -> list[tuple[str, str]]:
    return [(e.mechanism, e.outcome) for e in system.trace.find("boot")]


# -- A16: an invalidated securekernel.exe ----------------------------------------------------------
def test_tampered_secure_kernel_without_mandatory_boots_without_vbs() -> None:
    system = with_component("securekernel.exe", "vbs", Component(tampered=True))
    assert system.booted and not system.vbs_running
    assert system.machine is not None and system.machine.hv is None and system.sk is None
    outcomes = boot_outcomes(system)
    assert ("secureboot", "rejected") in outcomes
    assert ("mandatory", "continue-without-vbs") in outcomes
    assert ("hypervisor-launch", "not-launched") in outcomes
    assert outcomes[-1] == ("boot", "complete")
    rejected = next(e for e in system.trace.find("boot", "secureboot") if e.outcome == "rejected")
    assert rejected.detail["component"] == "securekernel.exe"


def test_tampered_secure_kernel_silently_drops_credential_guard() -> None:
    """The Downdate lesson: with VBS gone, lsass keeps the NT OWF in VTL0 again."""
    system = with_component("securekernel.exe", "vbs", Component(tampered=True))
    assert system.policy.credential_guard and not system.vbs_running
    assert finds_nt_owf(system)


def test_tampered_secure_kernel_under_mandatory_halts() -> None:
    system = with_component("securekernel.exe", "hardened", Component(tampered=True))
    assert not system.booted and system.halted is not None
    assert system.nt is None and system.machine is None
    assert boot_outcomes(system)[-2:] == [("secureboot", "rejected"), ("mandatory", "halted")]


@pytest.mark.parametrize("component", ["hvix64.exe", "ntoskrnl.exe"])
def test_other_tampered_components(component: str) -> None:
    """A tampered hypervisor is like a tampered SK; a tampered NT kernel stops every boot."""
    for name in ("vbs", "hardened"):
        system = with_component(component, name, Component(tampered=True))
        if component == "ntoskrnl.exe":
            assert system.halted is not None and system.nt is None
        elif name == "vbs":
            assert system.booted and not system.vbs_running
        else:
            assert system.halted is not None


# -- A15: downgrade to an older, validly signed Secure Kernel --------------------------------------
def test_downgraded_secure_kernel_boots_with_vbs_without_revocation() -> None:
    system = with_component("securekernel.exe", "vbs", OLD_SK)
    assert system.booted and system.vbs_running
    verified = [
        e
        for e in system.trace.find("boot", "secureboot")
        if e.detail["component"] == "securekernel.exe"
    ]
    assert verified[0].outcome == "verified"
    assert verified[0].detail["version"].startswith("10.0.22621.1")
    assert system.disk.components["securekernel.exe"].svn == 3


def test_downgraded_secure_kernel_is_revoked_by_skusipolicy_and_hardened_halts() -> None:
    system = with_component("securekernel.exe", "hardened", OLD_SK)
    assert not system.booted and system.nt is None
    outcomes = boot_outcomes(system)
    assert ("revocation", "rejected") in outcomes
    assert outcomes[-1] == ("mandatory", "halted")
    revoked = system.trace.find("boot", "revocation")[0]
    assert revoked.detail["component"] == "securekernel.exe"


def test_downgrade_with_revocation_but_without_mandatory_boots_without_vbs() -> None:
    """SkuSiPolicy alone rejects the old SK; without Mandatory, winload drops VBS (A15 + A16)."""
    policy = preset("hardened").with_changes(mandatory=False)
    disk = Disk.install(policy)
    disk.components["securekernel.exe"] = OLD_SK
    system = boot(policy, disk)
    assert system.booted and not system.vbs_running
    assert ("revocation", "rejected") in boot_outcomes(system)


def test_same_version_lower_svn_is_revoked_under_hardened() -> None:
    system = with_component("securekernel.exe", "hardened", Component(svn=6))
    assert system.halted is not None
    assert ("revocation", "rejected") in boot_outcomes(system)


# -- A17: turn VBS off through the registry, then reboot -------------------------------------------
def test_registry_disable_turns_vbs_off_at_next_boot_without_uefi_lock() -> None:
    first = boot(preset("vbs"))
    assert first.vbs_running and not finds_nt_owf(first)
    assert set_registry_value(first, VBS_REGISTRY_KEY, 0) == NtStatus.SUCCESS
    disk = shut_down(first)
    assert disk.registry[VBS_REGISTRY_KEY] == 0
    second = boot(preset("vbs"), disk)
    assert second.booted and not second.vbs_running
    policy_step = second.trace.find("boot", "vsm-policy")[0]
    assert (policy_step.outcome, policy_step.detail["source"]) == ("vbs-off", "registry")
    assert second.machine is not None and second.machine.hv is None
    assert finds_nt_owf(second)  # Credential Guard went with it


def test_registry_change_without_a_shutdown_changes_nothing() -> None:
    first = boot(preset("vbs"))
    assert set_registry_value(first, VBS_REGISTRY_KEY, 0) == NtStatus.SUCCESS
    second = boot(preset("vbs"), first.disk)  # power cut: the hive was never flushed
    assert second.vbs_running


def test_uefi_lock_keeps_vbs_on_despite_the_registry() -> None:
    first = boot(preset("hardened"))
    assert first.vbs_running
    assert VBS_EFI_VARIABLE in first.disk.efi_variables
    assert set_registry_value(first, VBS_REGISTRY_KEY, 0) == NtStatus.SUCCESS
    disk = shut_down(first)
    assert disk.registry[VBS_REGISTRY_KEY] == 0
    second = boot(preset("hardened"), disk)
    assert second.booted and second.vbs_running
    policy_step = second.trace.find("boot", "vsm-policy")[0]
    assert (policy_step.outcome, policy_step.detail["source"]) == ("vbs-on", "uefi-variable")
    assert not finds_nt_owf(second)


def test_registry_can_turn_vbs_back_on() -> None:
    off = boot(preset("vbs-off"))
    assert not off.vbs_running
    assert set_registry_value(off, VBS_REGISTRY_KEY, 1) == NtStatus.SUCCESS
    on = boot(preset("vbs-off"), shut_down(off))
    assert on.booted and on.vbs_running and on.sk is not None
