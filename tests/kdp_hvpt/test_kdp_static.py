"""Static KDP (MmProtectDriverSection) and data-only attacks (vbs-internals §5.2, §6 A6)."""

from __future__ import annotations

from typing import Any

import pytest

from vbsim.guest.address_space import CODE_BASE
from vbsim.hw.faults import Bugcheck
from vbsim.hw.slat import R
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, Pte
from vbsim.nt import kdp
from vbsim.ntstatus import BugCheck, NtStatus
from vbsim.sk.callargs import SecureCallArgs
from vbsim.sk.sscn import Service

from .kit import VALUE, booted, events, parts, remap, sk_gpa, sk_of, space_of


def _section(name: str = "vbs-hvci", **changes: Any) -> tuple[Any, ...]:
    system = booted(name, **changes)
    machine, nt, vp = parts(system)
    section = kdp.load_data_section(nt, vp.cpu, "drv.kdpdata", 2, VALUE.to_bytes(8, "little"))
    return system, machine, nt, vp, section


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_protected_write_bugchecks_and_bytes_never_change(name: str) -> None:
    system, machine, nt, vp, section = _section(name)
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va + 8) == NtStatus.SUCCESS
    for pfn in section.pfns:
        assert machine.slat is not None and machine.slat.rights(0, pfn) == R
    assert vp.read_u64(section.va) == VALUE  # KDP never blocks reads
    with pytest.raises(Bugcheck) as stop:
        vp.write_u64(section.va, 0)
    assert stop.value.code == BugCheck.KMODE_EXCEPTION_NOT_HANDLED and stop.value.vtl == 0
    assert machine.ram.read_u64(section.gpa) == VALUE
    protected = events(system, "kdp", "kdp.static")
    assert protected and protected[-1].outcome == "protected"
    assert protected[-1].detail["gpns"] == section.pfns
    refusals = events(system, "intercept", "slat")
    assert refusals and refusals[-1].detail["gpa"] == section.gpa


def test_the_whole_section_is_protected_also_through_aliases() -> None:
    _system, machine, nt, vp, section = _section()
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    # The second page, reached through NT's direct map (another VA for the same GPA).
    alias = 0xFFFF_8000_0000_0000 + (section.pfns[1] << PAGE_SHIFT)
    with pytest.raises(Bugcheck):
        vp.write_u64(alias, 0)
    assert machine.ram.read_u64(section.pfns[1] << PAGE_SHIFT) == 0


def test_build_a_uses_register_protected_page() -> None:
    system, _machine, nt, vp, section = _section("legacy-2019", kdp=True)
    assert nt.vsl is not None and Service.PROTECT_KERNEL_DATA_PAGE not in nt.vsl.table
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    dispatched = [
        e.detail["service"]
        for e in events(system, "securecall", "dispatch")
        if e.outcome == "entered"
    ]
    assert dispatched[-1] == Service.REGISTER_PROTECTED_PAGE.value
    with pytest.raises(Bugcheck):
        vp.write_u64(section.va, 0)


def test_kdp_needs_vbs_only() -> None:
    """The vbs preset (no HVCI) protects the section: MS Learn gives STATUS_INVALID_DEVICE_STATE
    only for "VSM is currently disabled", and the KDP announcement names VBS as the requirement."""
    system, machine, nt, vp, section = _section("vbs")
    assert not system.policy.hvci
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    assert machine.slat is not None and machine.slat.rights(0, section.pfns[0]) == R
    with pytest.raises(Bugcheck):
        vp.write_u64(section.va, 0)
    assert machine.ram.read_u64(section.gpa) == VALUE


@pytest.mark.parametrize(("name", "changes"), [("legacy-2019", {}), ("vbs", {"kdp": False})])
def test_a_build_without_kdp_is_not_supported(name: str, changes: dict[str, bool]) -> None:
    """VSM runs but the Secure Kernel predates KDP: not STATUS_INVALID_DEVICE_STATE (that is for
    VSM disabled), the SK has no such service."""
    system, machine, nt, vp, section = _section(name, **changes)
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.NOT_SUPPORTED
    assert events(system, "kdp", "kdp.policy")[-1].outcome == "disabled"
    vp.write_u64(section.va, 0)  # nothing protects it
    assert machine.ram.read_u64(section.gpa) == 0


def test_a_non_zero_size_is_invalid_parameter() -> None:
    """MS Learn: Size "should be set to 0"; "a non-zero size" → STATUS_INVALID_PARAMETER."""
    system, machine, nt, vp, section = _section()
    for size in (1, 8, PAGE_SIZE, section.size):
        assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va, size) == (
            NtStatus.INVALID_PARAMETER
        )
    assert machine.slat is not None and machine.slat.rights(0, section.pfns[0]) != R
    # The SK was never asked about this section (CI's CiPolicy, protected at boot, is another).
    assert not [e for e in events(system, "kdp", "kdp.static") if e.detail["va"] == section.va]


def test_an_address_in_no_driver_image_bugchecks() -> None:
    """MS Learn: an address "that does not belong to any loaded driver image" crashes the system
    with MEMORY_MANAGEMENT (type 0x1100)."""
    _system, _machine, nt, vp, section = _section()
    with pytest.raises(Bugcheck) as stop:
        kdp.mm_protect_driver_section(nt, vp.cpu, section.va + section.size)  # the guard page
    assert stop.value.code == BugCheck.MEMORY_MANAGEMENT == 0x1A
    assert stop.value.params[:1] == (0x1100,)


def test_without_vbs_invalid_device_state() -> None:
    _system, machine, nt, vp, section = _section("vbs-off")
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.INVALID_DEVICE_STATE
    vp.write_u64(section.va, 0)
    assert machine.ram.read_u64(section.gpa) == 0


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_executable_section_is_refused(name: str) -> None:
    system, machine, nt, vp, _ = _section(name)
    assert machine.slat is not None
    assert nt.vsl is not None
    before = machine.slat.rights(0, nt.space.code_pages[0])
    status, _ = nt.vsl.call(vp.cpu, Service.PROTECT_KERNEL_DATA_PAGE, CODE_BASE, 1, 0)
    assert status == NtStatus.INVALID_PAGE_PROTECTION
    assert machine.slat.rights(0, nt.space.code_pages[0]) == before
    assert events(system, "kdp", "kdp.static")[-1].detail["reason"] == "executable"


def test_sk_memory_and_bad_ranges_are_refused() -> None:
    system, machine, nt, vp, section = _section()
    sk = sk_of(system)
    sk_page_va = 0xFFFF_8000_0000_0000 + sk.params.in_gpa  # NT's direct-map view of an SK page
    user_va = 0x0000_0000_1000_0000
    unmapped = section.va + section.size  # the guard page after the section
    assert nt.vsl is not None
    # What a K0 caller of the secure call itself gets (NT's API never passes these).
    for fields in (
        [sk_page_va, 1, 0],
        [user_va, 1, 0],
        [unmapped, 1, 0],
        [section.va, 0, 0],  # no pages
        [section.va, 1 << 20, 0],  # too many
        [section.va + 8, 1, 0],  # not page aligned
        [section.va, 1, 0x80],  # unknown flag
        [0xFFFF_FFFF_FFFF_F000, 2, 0],  # wraps past the top
    ):
        status, _ = nt.vsl.call(vp.cpu, Service.PROTECT_KERNEL_DATA_PAGE, *fields)
        assert status == NtStatus.INVALID_PARAMETER, fields
    assert machine.slat is not None and machine.slat.rights(0, section.pfns[0]) != R


def test_protection_is_irreversible() -> None:
    system, machine, nt, vp, section = _section()
    sk = sk_of(system)
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    # Asking again changes nothing: "already protected" (MS Learn, STATUS_ALREADY_COMMITTED).
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.ALREADY_COMMITTED
    assert events(system, "kdp", "kdp.static")[-1].detail["reason"] == "already-protected"
    # A secure pool may not take the pages over (its initialisation would zero them).
    assert nt.vsl is not None
    status, _ = nt.vsl.call(vp.cpu, Service.INITIALIZE_SECURE_POOL, section.pfns[0], 1, section.va)
    assert status == NtStatus.INVALID_PARAMETER
    # HVCI's sanctioned transition does not apply to KDP data pages.
    nt.vsl.call(vp.cpu, Service.MAKE_PROTECTED_PAGE_WRITABLE, section.pfns[0])
    assert machine.slat is not None and machine.slat.rights(0, section.pfns[0]) == R
    assert machine.ram.read_u64(section.gpa) == VALUE

    assert space_of(sk).ram.read(sk.kdp.owners_gpa + section.pfns[0], 1)[0] != 0  # KDP's table
    with pytest.raises(Bugcheck):
        vp.write_u64(section.va, 0)


# -- A6: data-only attacks -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vbs", "vbs-hvci", "hardened", "legacy-2019", "vbs-off"])
def test_a6_data_only_attack_on_an_unprotected_variable_succeeds(name: str) -> None:
    """A K0 write primitive changes any kernel variable KDP does not cover — HVCI or not."""
    system = booted(name)
    machine, nt, vp = parts(system)
    variable = nt.variable("SeCiCallbacks")  # ntoskrnl .data, which KDP does not cover
    vp.write_u64(variable.va, VALUE)
    vp.write_u64(variable.va, 0xBAD)
    assert machine.ram.read_u64(variable.gpa) == 0xBAD


@pytest.mark.parametrize("name", ["vbs-hvci", "hardened"])
def test_a6_data_only_attack_on_a_kdp_variable_fails(name: str) -> None:
    _system, machine, nt, vp, section = _section(name)
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    with pytest.raises(Bugcheck):
        vp.write(section.va, b"\x00" * 16)
    assert machine.ram.read(section.gpa, 8) == VALUE.to_bytes(8, "little")


def test_raw_block_with_sk_pfn_translation_never_protects_sk_pages() -> None:
    """Field1 may be any VA: one that NT maps onto an SK frame is refused (page identity)."""
    system, _machine, nt, vp, section = _section()
    sk = sk_of(system)
    target = sk_gpa(sk, sk.params.in_va) >> PAGE_SHIFT
    va = section.va + PAGE_SIZE
    remap(nt, vp, va, target << PAGE_SHIFT, int(Pte.RW | Pte.NX))
    assert nt.vsl is not None
    number = nt.vsl.table.number[Service.PROTECT_KERNEL_DATA_PAGE]
    reply = nt.vsl.call_raw(vp.cpu, SecureCallArgs(2, number, 0, [va & ~0xFFF, 1, 0]))
    assert reply.fields[0] == NtStatus.INVALID_PARAMETER
    assert events(system, "securecall", "securecall.pfn")[-1].detail["pfn"] == target
