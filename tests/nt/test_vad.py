"""The VAD tree in VTL0 RAM is what NT decides from (issue 10, part 1).

Each test changes bytes of a VAD node (or the tree's root) with a K0 store through NT's own page
tables and shows that NT's next answer changed: nothing in Python remembers the regions.
"""

from __future__ import annotations

from collections.abc import Callable

from vbsim.boot.chain import System
from vbsim.boot.memory_map import NT_POOL, vtl0_memory_map
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.cpu import Cpu
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt import pfn as mm
from vbsim.nt import vad
from vbsim.nt.kernel import AddressConflict
from vbsim.nt.layouts import (
    EPROCESS,
    MMVAD_FLAGS,
    MMVAD_SHORT,
    RTL_BALANCED_NODE,
    MmProtect,
    read_field,
)
from vbsim.nt.process import Token
from vbsim.nt.syscalls import PAGE_EXECUTE_READ, PAGE_READWRITE
from vbsim.ntstatus import NtStatus

from .userland import NUMBERS, USER, User, spawn

PROTECT = NUMBERS["NtProtectVirtualMemory"]
FREE = NUMBERS["NtFreeVirtualMemory"]


def _k0(system: System) -> Cpu:
    """The boot processor in NT's mode (VTL0 CPL0): a kernel read/write primitive."""
    assert system.machine is not None
    cpu = system.machine.bsp.cpu
    assert (cpu.vtl, cpu.cpl) == (0, 0)
    return cpu


def _protect(user: User, base: int, size: int, protect: int = PAGE_EXECUTE_READ) -> int:
    call = (PROTECT, [user.process.pid, base, size, protect])
    status: int = user.returned("tests.nt.syscalls", [call])[0]
    return status


def _free(user: User, base: int) -> int:
    status: int = user.returned("tests.nt.syscalls", [(FREE, [base])])[0]
    return status


def _views(system: System, user: User) -> list[vad.VadView]:
    assert system.machine is not None
    return vad.host_vads(system.machine.ram, user.process.eprocess)


def test_allocations_are_mmvad_short_nodes_in_nt_pool(make_system: Callable[..., System]) -> None:
    system = make_system("vbs")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    user = spawn(system, "vads.exe", USER)
    high = nt.allocate(machine.bsp.cpu, user.process, 2 * PAGE_SIZE, base=0x7FF6_0000_0000)
    views = _views(system, user)
    # The code page, the scratch region, and the fixed-base one, in StartingVpn order.
    assert [v.base for v in views] == sorted(v.base for v in views) and len(views) == 3
    assert views[0].protection == MmProtect.EXECUTE_READ  # map_code's W^X page
    assert views[1].protection == MmProtect.READWRITE and views[1].private
    assert views[1].size == user.scratch.size and views[1].commit == user.scratch.size // 4096
    top = views[2]
    assert (top.base, top.size, top.node) == (high.base, 2 * PAGE_SIZE, high.vad)
    raw = machine.ram.read(high.vad - DIRECT_MAP, MMVAD_SHORT.SIZE)
    assert raw[MMVAD_SHORT.StartingVpnHigh.offset] == 0x7  # VPN bits 32-39 (0x7_FF60_0000)
    count = machine.ram.read(user.process.eprocess - DIRECT_MAP + EPROCESS.VadCount.offset, 8)
    assert int.from_bytes(count, "little") == 3
    # The nodes sit in a pool page NT handed out from its own PFN database.
    database = mm.host_entries(machine.ram, nt.pfn_database - DIRECT_MAP, machine.ram.pages)
    for view in views:
        assert mm.host_location(database[(view.node - DIRECT_MAP) >> PAGE_SHIFT]) == 6


def test_protect_needs_one_vad_and_a_k0_shrink_of_its_extent_changes_that(
    make_system: Callable[..., System],
) -> None:
    system = make_system("vbs-off")
    user = spawn(system, "vads.exe", USER)
    base = user.scratch.base
    assert _protect(user, base, 2 * PAGE_SIZE) == NtStatus.SUCCESS
    # Spanning the scratch VAD and beyond: two allocations, not one.
    assert _protect(user, base, user.scratch.size + PAGE_SIZE) == NtStatus.CONFLICTING_ADDRESSES
    cpu = _k0(system)
    node = user.scratch.vad
    cpu.write_u32(node + MMVAD_SHORT.EndingVpn.offset, base >> PAGE_SHIFT)  # one page long now
    assert _protect(user, base, 2 * PAGE_SIZE) == NtStatus.CONFLICTING_ADDRESSES
    assert _protect(user, base, PAGE_SIZE) == NtStatus.SUCCESS
    refused = system.trace.find("nt", "vad")
    assert refused and refused[-1].detail["reason"] == "outside-one-vad"


def test_a_no_change_vad_refuses_protect_and_free_until_k0_clears_the_bit(
    make_system: Callable[..., System],
) -> None:
    system = make_system("vbs")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    user = spawn(system, "vads.exe", USER)
    secured = nt.allocate(machine.bsp.cpu, user.process, PAGE_SIZE, secured=True)
    assert _protect(user, secured.base, PAGE_SIZE, PAGE_READWRITE) == (
        NtStatus.INVALID_PAGE_PROTECTION
    )
    assert _free(user, secured.base) == NtStatus.INVALID_PAGE_PROTECTION
    cpu = _k0(system)
    field = secured.vad + MMVAD_SHORT.LongFlags.offset
    cpu.write_u32(field, cpu.read_u32(field) & ~MMVAD_FLAGS.NO_CHANGE)
    assert _protect(user, secured.base, PAGE_SIZE, PAGE_READWRITE) == NtStatus.SUCCESS
    assert _free(user, secured.base) == NtStatus.SUCCESS


def test_free_releases_the_vad_at_its_base_only(make_system: Callable[..., System]) -> None:
    system = make_system("vbs-off")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    user = spawn(system, "vads.exe", USER)
    region = nt.allocate(machine.bsp.cpu, user.process, 2 * PAGE_SIZE)
    machine.ram.write(region.pfns[1] << PAGE_SHIFT, b"left behind?")
    assert _free(user, region.base + PAGE_SIZE) == NtStatus.FREE_VM_NOT_AT_BASE
    assert _free(user, 0x6000_0000) == NtStatus.MEMORY_NOT_ALLOCATED
    assert _free(user, region.base) == NtStatus.SUCCESS
    assert region.base not in [v.base for v in _views(system, user)]
    assert machine.ram.read(region.pfns[1] << PAGE_SHIFT, 12) == bytes(12)  # cleared
    database = mm.host_entries(machine.ram, nt.pfn_database - DIRECT_MAP, machine.ram.pages)
    assert all(mm.host_location(database[pfn]) == 1 for pfn in region.pfns)  # free list
    # The tree leaves the range free again: the next allocation of that size takes it.
    again = nt.allocate(machine.bsp.cpu, user.process, 2 * PAGE_SIZE)
    assert again.base == region.base


def test_unlinking_the_tree_makes_nt_forget_every_allocation(
    make_system: Callable[..., System],
) -> None:
    """BlackBone-style VAD unlinking: with the root zeroed, NT finds no VAD for memory it mapped
    (free and protect refuse it) and would hand the range out again."""
    system = make_system("vbs")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    user = spawn(system, "vads.exe", USER)
    base = user.scratch.base
    try:
        nt.allocate(machine.bsp.cpu, user.process, PAGE_SIZE, base=base)
    except AddressConflict:
        conflicted = True
    else:
        conflicted = False
    assert conflicted
    cpu = _k0(system)
    cpu.write_u64(user.process.eprocess + EPROCESS.VadRoot.offset, 0)
    assert _protect(user, base, PAGE_SIZE) == NtStatus.CONFLICTING_ADDRESSES
    assert _free(user, base) == NtStatus.MEMORY_NOT_ALLOCATED
    assert vad.locate(cpu, user.process.eprocess, base >> PAGE_SHIFT) == 0


def test_a_cyclic_tree_does_not_hang_nt(make_system: Callable[..., System]) -> None:
    system = make_system("vbs-off")
    user = spawn(system, "vads.exe", USER)
    cpu = _k0(system)
    node = user.scratch.vad
    cpu.write_u64(node + RTL_BALANCED_NODE.Right.offset, node)  # a loop
    beyond = user.scratch.base + user.scratch.size + 16 * PAGE_SIZE
    assert _protect(user, beyond, PAGE_SIZE) == NtStatus.CONFLICTING_ADDRESSES
    assert _free(user, beyond) == NtStatus.MEMORY_NOT_ALLOCATED


def test_removing_a_node_with_two_children_keeps_the_search_order(
    make_system: Callable[..., System],
) -> None:
    system = make_system("vbs-off")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None
    process = nt.create_process(machine.bsp.cpu, "tree.exe", Token("user"))
    cpu = machine.bsp.cpu
    bases = [0x4000_0000, 0x2000_0000, 0x6000_0000, 0x1000_0000, 0x3000_0000, 0x5000_0000]
    for base in bases:
        nt.allocate(cpu, process, PAGE_SIZE, base=base)
    middle = vad.locate(cpu, process.eprocess, 0x4000_0000 >> PAGE_SHIFT)
    assert read_children(cpu, middle) == (True, True)
    vad.remove(cpu, process.eprocess, middle)
    remaining = [
        vad.starting_vpn(cpu, node) << PAGE_SHIFT for node in vad.walk(cpu, process.eprocess)
    ]
    assert remaining == sorted(b for b in bases if b != 0x4000_0000)
    for base in remaining:
        assert vad.locate(cpu, process.eprocess, base >> PAGE_SHIFT)
    assert not vad.locate(cpu, process.eprocess, 0x4000_0000 >> PAGE_SHIFT)


def read_children(cpu: Cpu, node: int) -> tuple[bool, bool]:
    return (
        bool(read_field(cpu, node, RTL_BALANCED_NODE.Left)),
        bool(read_field(cpu, node, RTL_BALANCED_NODE.Right)),
    )


def test_the_memory_map_shows_what_nt_owns(make_system: Callable[..., System]) -> None:
    """NT's region is labelled from NT's PFN database: pool where NT handed pages out, and a new
    allocation changes the label of the pages it took."""
    system = make_system("vbs")
    nt, machine = system.nt, system.machine
    assert nt is not None and machine is not None

    def owner(pfn: int) -> str:
        runs = vtl0_memory_map(machine, include_free=True, nt=nt)
        gpa = pfn << PAGE_SHIFT
        return next(r.owner for r in runs if r.first_gpa <= gpa < r.first_gpa + r.pages * 4096)

    owners = {r.owner for r in vtl0_memory_map(machine, include_free=True, nt=nt)}
    assert NT_POOL in owners and "free" in owners
    # The page NT hands out next (its free list's head, else the first never-used page).
    head = nt.variables["MmFreePageListHead"].gpa
    listed = int.from_bytes(machine.ram.read(head + 0x10, 8), "little")
    following = listed or mm.host_next_fresh(machine.ram, head)
    assert owner(following) == "free"
    _, gpa = nt.alloc_kernel_page(machine.bsp.cpu)
    assert gpa >> PAGE_SHIFT == following and owner(following) == NT_POOL
