"""Sanctioned page transitions and executable pool: W+KX fails under HVCI, works without it."""

from __future__ import annotations

import pytest

from vbsim.hw.code import encode_thunk, guest_code
from vbsim.hw.slat import KX, UX, R, W
from vbsim.hw.vp import VirtualProcessor
from vbsim.invariants.skstate import HvciView, hvci_view
from vbsim.nt import drivers
from vbsim.nt.drivers import SAMPLE_DRIVER, nt_allocate_executable
from vbsim.ntstatus import NtStatus
from vbsim.sk.services import hvci
from vbsim.sk.services.hvci import PageState
from vbsim.sk.sscn import Service

from .kit import Env, direct_va, make_env, wkx_pages

SHELLCODE_RUNS: list[int] = []


@guest_code("test.hvci.shellcode")
def _shellcode(vp: VirtualProcessor) -> int:
    SHELLCODE_RUNS.append(vp.cpl)
    return 0x5EC


def _state(env: Env) -> HvciView:
    assert env.system.sk is not None and env.system.machine is not None
    return hvci_view(env.system.machine.ram, env.system.sk)


def test_rwx_pool_is_refused_under_hvci() -> None:
    env = make_env("vbs-hvci")
    status, va = nt_allocate_executable(env.nt, env.vp.cpu, 4096, writable=True)
    assert (status, va) == (NtStatus.INVALID_PAGE_PROTECTION, 0)
    [refusal] = env.events("hvci", "hvci.w^x")
    assert refusal.outcome == "refused" and refusal.vtl == 1
    assert [e.outcome for e in env.events("driver", "pool-execute")] == ["refused"]
    # Executable but not writable: still no KX, since no signed hash covers the contents.
    status, va = nt_allocate_executable(env.nt, env.vp.cpu, 4096, writable=False)
    assert (status, va) == (NtStatus.INVALID_IMAGE_HASH, 0)
    assert wkx_pages(env.system) == []


@pytest.mark.parametrize("name", ["vbs", "vbs-off"])
def test_rwx_pool_works_without_hvci(name: str) -> None:
    env = make_env(name)
    status, va = nt_allocate_executable(env.nt, env.vp.cpu, 4096, writable=True)
    assert status == NtStatus.SUCCESS and va
    env.vp.write(va, encode_thunk("test.hvci.shellcode"))  # W ...
    before = len(SHELLCODE_RUNS)
    assert env.vp.call(va) == 0x5EC  # ... and X, at CPL0
    assert SHELLCODE_RUNS[before:] == [0]


def test_a_w_plus_kx_secure_call_fails_under_hvci_and_is_not_the_sks_business_without() -> None:
    env = make_env("vbs-hvci")
    assert env.nt.vsl is not None
    pfn = env.nt.data_gpa >> 12
    status, _ = env.nt.vsl.call(
        env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, R | W | KX | UX
    )
    assert status == NtStatus.INVALID_PAGE_PROTECTION
    assert env.rights(pfn) == R | W | UX
    plain = make_env("vbs")
    assert plain.nt.vsl is not None
    status, _ = plain.nt.vsl.call(
        plain.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, R | W | KX | UX
    )
    assert status == NtStatus.NOT_SUPPORTED


def test_writable_then_executable_round_trip_rehashes_the_page() -> None:
    env = make_env("vbs-hvci")
    assert env.nt.vsl is not None and env.load(SAMPLE_DRIVER) == NtStatus.SUCCESS
    driver = env.driver(SAMPLE_DRIVER)
    assert isinstance(driver, drivers.LoadedDriver)
    pfn = driver.code_pfns[0]
    call = env.nt.vsl.call
    assert call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, pfn)[0] == NtStatus.SUCCESS
    assert env.rights(pfn) == R | W | UX and _state(env).states[pfn] == PageState.WRITABLE
    # A hot patch that is not the validated contents does not get KX back.
    original = env.vp.read(direct_va(pfn) + 100, 1)
    env.vp.write(direct_va(pfn) + 100, b"\x90")
    status, _ = call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, 0)
    assert status == NtStatus.INVALID_IMAGE_HASH
    assert env.rights(pfn) == R | W | UX
    # W+KX is refused whatever the contents.
    status, _ = call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, R | W | KX | UX)
    assert status == NtStatus.INVALID_PAGE_PROTECTION
    # Restored contents: KX again, W gone, and the driver runs.
    env.vp.write(direct_va(pfn) + 100, original)
    assert call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, 0)[0] == NtStatus.SUCCESS
    assert env.rights(pfn) == R | KX | UX
    assert env.ioctl(SAMPLE_DRIVER, 1, 0, 5) == (NtStatus.SUCCESS, 5)
    outcomes = [e.outcome for e in env.events("hvci", "hvci.transition")]
    assert outcomes == ["writable", "executable"]
    assert wkx_pages(env.system) == []


def test_transitions_refuse_pages_that_were_never_validated() -> None:
    env = make_env("vbs-hvci")
    assert env.nt.vsl is not None
    pfn = env.nt.data_gpa >> 12
    call = env.nt.vsl.call
    assert (
        call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, pfn)[0] == NtStatus.INVALID_PARAMETER
    )
    status, _ = call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, pfn, R | UX)
    assert status == NtStatus.INVALID_PARAMETER  # the service is about KX
    status, _ = call(env.vp.cpu, Service.MAKE_PROTECTED_PAGE_EXECUTABLE, 0, 0)
    assert status == NtStatus.INVALID_PARAMETER  # not a page a secure call may name
    assert env.rights(pfn) == R | W | UX


def test_the_one_slat_helper_never_grants_w_and_kx_together() -> None:
    env = make_env("vbs-hvci")
    sk = env.system.sk
    assert sk is not None
    with pytest.raises(AssertionError):
        hvci.apply(sk, env.vp.cpu, [env.nt.data_gpa >> 12], R | W | KX | UX, "test")
    assert env.events("hvci", "hvci.w^x")[-1].outcome == "violation"
    assert wkx_pages(env.system) == []
