"""PREPARE_FOR_CRASHDUMP / PREPARE_FOR_HIBERNATION: the LIST answer marks the pages the SK will
give ciphertext of (``ENTRY_GIVEN``), and NT asks ``PAGE`` only for those.  The mark is advice:
a VTL0 kernel that ignores it and asks for any listed page gets what the SK decides from its own
memory, never plaintext."""

from __future__ import annotations

from vbsim.boot.chain import System
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk.services import dump
from vbsim.sk.sscn import Service

from .kit import booted, kernel_page, parts, sk_of, space_of


def _listing(service: Service) -> tuple[System, set[int], set[int]]:
    system = booted("vbs")
    machine, nt, vp = parts(system)
    assert nt.vsl is not None
    _, list_pfn = kernel_page(nt, vp)
    entries: list[int] = []
    while True:
        status, out = nt.vsl.call(vp.cpu, service, dump.REQUEST_LIST, list_pfn, len(entries))
        assert status == NtStatus.SUCCESS and out[1] > 0
        raw = machine.ram.read(list_pfn << PAGE_SHIFT, 8 * out[1])
        entries += [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        if len(entries) >= out[0]:
            break
    given = {e & ~dump.ENTRY_GIVEN for e in entries if e & dump.ENTRY_GIVEN}
    listed = {e & ~dump.ENTRY_GIVEN for e in entries}
    return system, given, listed


def _trustlet_pages(system: System) -> set[int]:
    sk = sk_of(system)
    ram = space_of(sk).ram
    pages: set[int] = set()
    for process in sk.host_processes(ram).values():
        pages |= set(process.host_private_pfns(ram)) | set(process.host_table_pfns(ram))
    return pages


def test_hibernation_gives_every_trustlet_page_and_nothing_of_the_sk() -> None:
    system, given, listed = _listing(Service.PREPARE_FOR_HIBERNATION)
    trustlet = _trustlet_pages(system)
    assert trustlet and trustlet <= listed
    assert given == trustlet & listed


def test_crashdump_gives_nothing_of_lsaiso_whose_policy_forbids_it() -> None:
    _, given, listed = _listing(Service.PREPARE_FOR_CRASHDUMP)
    assert listed and not given


def test_asking_for_a_page_the_list_did_not_give_returns_zeros() -> None:
    system, _, _ = _listing(Service.PREPARE_FOR_CRASHDUMP)
    machine, nt, vp = parts(system)
    assert nt.vsl is not None
    _, out_pfn = kernel_page(nt, vp, b"\xcc" * PAGE_SIZE)
    for pfn in sorted(_trustlet_pages(system))[:3]:
        status, out = nt.vsl.call(
            vp.cpu, Service.PREPARE_FOR_CRASHDUMP, dump.REQUEST_PAGE, pfn, out_pfn
        )
        assert (status, out[0]) == (NtStatus.SUCCESS, dump.PAGE_WITHHELD)
        assert machine.ram.read(out_pfn << PAGE_SHIFT, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_a_given_page_arrives_as_ciphertext() -> None:
    system, given, _ = _listing(Service.PREPARE_FOR_HIBERNATION)
    machine, nt, vp = parts(system)
    assert nt.vsl is not None
    _, out_pfn = kernel_page(nt, vp)
    pfn = min(given)
    status, out = nt.vsl.call(
        vp.cpu, Service.PREPARE_FOR_HIBERNATION, dump.REQUEST_PAGE, pfn, out_pfn
    )
    assert (status, out[0]) == (NtStatus.SUCCESS, dump.PAGE_ENCRYPTED)
    plain = machine.ram.read(pfn << PAGE_SHIFT, PAGE_SIZE)
    assert machine.ram.read(out_pfn << PAGE_SHIFT, PAGE_SIZE) != plain
