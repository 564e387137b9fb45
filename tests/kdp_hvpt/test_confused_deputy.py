"""The Secure Kernel never writes an answer for VTL0 into a page VTL0 may not write itself.

Found by the hardened soak (seed 1, job 1): PREPARE_FOR_CRASHDUMP wrote its PFN list into a
static-KDP page whose PFN the caller named, undoing KDP through the SK.  An output page must be
VTL0 RAM that neither KDP owns nor HVCI holds for code (``SecureKernel.vtl0_output_page``).
"""

from __future__ import annotations

from vbsim.hw.x86 import PAGE_SHIFT
from vbsim.nt import kdp
from vbsim.ntstatus import NtStatus
from vbsim.sk.services import dump
from vbsim.sk.sscn import Service

from .kit import VALUE, booted, kernel_page, parts


def _protected_section(name: str = "vbs-hvci") -> tuple[object, ...]:
    system = booted(name)
    machine, nt, vp = parts(system)
    section = kdp.load_data_section(nt, vp.cpu, "drv.deputy", 1, VALUE.to_bytes(8, "little"))
    assert kdp.mm_protect_driver_section(nt, vp.cpu, section.va) == NtStatus.SUCCESS
    return machine, nt, vp, section


def test_crashdump_list_into_a_kdp_page_is_refused_and_the_page_keeps_its_bytes() -> None:
    machine, nt, vp, section = _protected_section()
    before = machine.ram.read(section.gpa, 4096)
    assert nt.vsl is not None
    status, _ = nt.vsl.call(
        vp.cpu, Service.PREPARE_FOR_CRASHDUMP, dump.REQUEST_LIST, section.pfns[0], 0
    )
    assert status == NtStatus.INVALID_PARAMETER
    assert machine.ram.read(section.gpa, 4096) == before


def test_crashdump_page_into_a_kdp_page_is_refused() -> None:
    machine, nt, vp, section = _protected_section()
    assert nt.vsl is not None
    _, list_pfn = kernel_page(nt, vp)
    status, outputs = nt.vsl.call(
        vp.cpu, Service.PREPARE_FOR_CRASHDUMP, dump.REQUEST_LIST, list_pfn, 0
    )
    assert status == NtStatus.SUCCESS and outputs[1] > 0
    secure_pfn = machine.ram.read_u64(list_pfn << PAGE_SHIFT)
    before = machine.ram.read(section.gpa, 4096)
    status, _ = nt.vsl.call(
        vp.cpu, Service.PREPARE_FOR_CRASHDUMP, dump.REQUEST_PAGE, secure_pfn, section.pfns[0]
    )
    assert status == NtStatus.INVALID_PARAMETER
    assert machine.ram.read(section.gpa, 4096) == before


def test_an_ordinary_page_still_receives_the_list() -> None:
    machine, nt, vp, _section = _protected_section()
    assert nt.vsl is not None
    _, pfn = kernel_page(nt, vp)
    status, outputs = nt.vsl.call(vp.cpu, Service.PREPARE_FOR_CRASHDUMP, dump.REQUEST_LIST, pfn, 0)
    assert status == NtStatus.SUCCESS
    assert machine.ram.read_u64(pfn << PAGE_SHIFT) != 0 and outputs[1] > 0
