"""NT's PFN database (nt/pfn.py): NT hands out only frames of its region, from RAM."""

from __future__ import annotations

import pytest

from vbsim.boot.chain import System, boot
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import pfn
from vbsim.nt.layouts import MMLISTS, MMPFN, MMPFNLIST, HostReader
from vbsim.policy import preset


@pytest.fixture(scope="module")
def system() -> System:
    return boot(preset("vbs"))


def _entry(system: System, frame: int) -> int:
    assert system.nt is not None and system.machine is not None
    reader = HostReader(system.machine.ram, DIRECT_MAP)
    return reader.u64(system.nt.pfn_database + frame * MMPFN.SIZE)


def test_pages_come_from_nts_region_and_are_tracked_in_ram(system: System) -> None:
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    cpu = machine.bsp.cpu
    head = nt.variables["MmFreePageListHead"].gpa
    first = machine.ram.frames.limit  # the host allocator stops where NT's region begins
    total = machine.ram.read_u64(head + MMPFNLIST.Total.offset)
    va, gpa = nt.alloc_kernel_page(cpu)
    frame = gpa >> PAGE_SHIFT
    assert va == DIRECT_MAP + gpa and frame >= first
    assert machine.ram.frames.owner(frame) is None  # not the host's
    assert _entry(system, frame) >> MMPFN.LOCATION_SHIFT == MMLISTS.ActiveAndValid
    assert machine.ram.read_u64(head + MMPFNLIST.Total.offset) == total - 1
    cpu.write(va, b"secret")
    assert nt.free_kernel_page(cpu, va)
    assert _entry(system, frame) >> MMPFN.LOCATION_SHIFT == MMLISTS.FreePageList
    # A freed page is the next one handed out, and it comes back zeroed.
    again_va, again_gpa = nt.alloc_kernel_page(cpu)
    assert again_gpa == gpa and machine.ram.read(gpa, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert nt.free_kernel_page(cpu, again_va)


def test_frames_that_are_not_nts_cannot_be_freed_into_its_list(system: System) -> None:
    nt, machine, sk = system.nt, system.machine, system.sk
    assert nt is not None and machine is not None and sk is not None
    cpu = machine.bsp.cpu
    sk_frame = sorted(set(sk.image_pfns))[0]
    assert _entry(system, sk_frame) >> MMPFN.LOCATION_SHIFT == MMLISTS.BadPageList
    assert not nt.free_page(cpu, sk_frame)  # a double free or a foreign frame is refused
    assert not nt.free_page(cpu, 0)
    va, _ = nt.alloc_kernel_page(cpu)
    assert nt.free_kernel_page(cpu, va)
    assert not nt.free_kernel_page(cpu, va)  # already free


def test_exhaustion_is_no_pages_not_the_host_allocator() -> None:
    system = boot(preset("vbs-off").with_changes(ram_mib=16))
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    cpu = machine.bsp.cpu
    taken = []
    with pytest.raises(pfn.NoPages):
        for _ in range(machine.ram.pages):
            taken.append(nt.alloc_page(cpu))
    assert taken and min(taken) >= machine.ram.frames.limit
    for frame in taken:
        assert nt.free_page(cpu, frame)
