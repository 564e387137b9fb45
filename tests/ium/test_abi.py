"""The IUM ABI module agrees with both of its implementers (numbers live once per side)."""

from __future__ import annotations

from vbsim import ium_abi
from vbsim.boot.chain import boot
from vbsim.hw import hlat
from vbsim.invariants.teardown import release
from vbsim.policy import preset
from vbsim.sk import hvpt


def test_every_abi_number_is_a_service_nt_links_into_kiservicetable() -> None:
    """NT reads its numbers from the ABI module; the booted KiServiceTable must link each
    number to the service of that name (some are registered by other NT modules: drivers,
    secure processes)."""
    system = boot(preset("vbs"))
    try:
        assert system.nt is not None
        for name, number in ium_abi.NT_NUMBERS.items():
            assert system.nt.syscall_names.get(number) == name
    finally:
        if system.machine is not None:
            release(system.machine)


def test_secure_numbers_carry_the_secure_bit() -> None:
    assert all(n & ium_abi.SECURE_SYSCALL_BIT for n in ium_abi.SECURE_NUMBERS.values())
    assert ium_abi.SECURE_NUMBERS["IumGetIdk"] == 0x0800_000B


def test_the_sks_hlat_numbers_are_the_platforms() -> None:
    assert hvpt.RESTART == hlat.RESTART
    assert hvpt.HV_REGISTER_MODEL_HLAT_CONTROL == hlat.HV_REGISTER_MODEL_HLAT_CONTROL
    assert hvpt.CONTROL_ENABLE == hlat.CONTROL_ENABLE
    assert hvpt.CONTROL_PREFIX_SHIFT == hlat.CONTROL_PREFIX_SHIFT
    root = 0x1234_5000
    assert (
        hvpt.CONTROL_ENABLE | hvpt.PREFIX_SIZE << hvpt.CONTROL_PREFIX_SHIFT | root
        == hlat.Hlat(root, hvpt.PREFIX_SIZE).control()
    )


def test_the_image_builders_default_version_is_the_installed_default() -> None:
    from vbsim.ium.images import Version
    from vbsim.policy import Component

    assert (Version().version, Version().svn) == (Component().version, Component().svn)
