"""NT's virtual address descriptors: each process's VAD tree in VTL0 RAM (issue 10, part 1).

What a process has allocated is not a Python list: it is the tree ``EPROCESS.VadRoot`` points
to, of ``_MMVAD_SHORT`` nodes in NT's nonpaged pool (:mod:`vbsim.nt.layouts`), keyed by
StartingVpn, as on Windows (Windows Internals 7th ed. part 1 ch. 5 "Virtual address
descriptors").  NT's decisions about a user address read the tree through NT's own processor at
the moment they decide:

- NtAllocateVirtualMemory finds a free range by walking the tree (MiFindEmptyAddressRange) and
  refuses a fixed base that another VAD overlaps (MiCheckForConflictingVad:
  STATUS_CONFLICTING_ADDRESSES);
- NtProtectVirtualMemory needs the whole range inside one VAD ("all pages in the specified region
  must have been allocated in a single call to VirtualAlloc", the VirtualProtectEx contract) and
  refuses a NoChange VAD (STATUS_INVALID_PAGE_PROTECTION: ReactOS ARM3 ``MiProtectVirtualMemory``,
  WRK ``MiCheckSecuredVad``; what SEC_NO_CHANGE views and MmSecureVirtualMemoryEx with
  MM_SECURE_NO_CHANGE produce);
- NtFreeVirtualMemory releases exactly the VAD whose StartingVpn is the base
  (STATUS_FREE_VM_NOT_AT_BASE otherwise, STATUS_MEMORY_NOT_ALLOCATED without one), and the pages
  it frees are those the VAD's extent covers.

So a K0 write to a node (its extent, its Protection, its NoChange bit, a child pointer) changes
NT's next answer, as it does on Windows (BlackBone's ``BBFindVAD``/``BBProtectMemory``/
``BBHideVAD`` edit the same fields).

The tree is an AVL tree, as Windows keeps it (RTL_AVL_TREE, RtlAvlInsertNodeEx /
RtlAvlRemoveNode): :mod:`vbsim.nt.avl` rotates on insertion and removal and keeps each node's
balance in ParentValue's low bits.  Lookups walk at most :data:`MAX_DEPTH` nodes, so a corrupted
(cyclic) tree cannot hang NT: the walk gives up and the address counts as unallocated.

VAD nodes come from a lookaside list of 0x40-byte blocks carved from pool pages NT takes from its
own PFN database (:data:`~vbsim.nt.layouts.VAD_BLOCK`); a freed node is zeroed and pushed back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE
from vbsim.nt.avl import AvlTree
from vbsim.nt.layouts import (
    EPROCESS,
    MMVAD_FLAGS,
    MMVAD_FLAGS1,
    MMVAD_SHORT,
    RTL_BALANCED_NODE,
    VAD_BLOCK,
    VAD_TYPE_NONE,
    Cpu,
    HostReader,
    MmProtect,
    _Ram,
    read_field,
    write_field,
)
from vbsim.nt.process import Process, Region

#: A walk gives up after this many nodes (a corrupted, cyclic tree must not hang NT).
MAX_DEPTH = 4096
#: [model] The lowest VA NtAllocateVirtualMemory hands out without a fixed base (the model
#: keeps the low 256 MiB for fixed-base mappings; Windows starts at MM_LOWEST_USER_ADDRESS,
#: 64 KiB, with ASLR on top).
ALLOCATION_FLOOR = 0x0000_0000_1000_0000
#: MM_HIGHEST_USER_ADDRESS on x64 (0x7FFF_FFFE_FFFF, Windows Internals 7th ed. part 1 ch. 5
#: "x64 virtual address limitations"): its VPN.
HIGHEST_USER_VA = 0x7FFF_FFFE_FFFF
HIGHEST_USER_VPN = HIGHEST_USER_VA >> PAGE_SHIFT
_LOW = 0xFFFF_FFFF


# -- reading a node -------------------------------------------------------------------------
def starting_vpn(cpu: Cpu, node: int) -> int:
    low = read_field(cpu, node, MMVAD_SHORT.StartingVpn)
    return low | read_field(cpu, node, MMVAD_SHORT.StartingVpnHigh) << 32


def ending_vpn(cpu: Cpu, node: int) -> int:
    low = read_field(cpu, node, MMVAD_SHORT.EndingVpn)
    return low | read_field(cpu, node, MMVAD_SHORT.EndingVpnHigh) << 32


def flags(cpu: Cpu, node: int) -> int:
    return read_field(cpu, node, MMVAD_SHORT.LongFlags)


def protection(cpu: Cpu, node: int) -> int:
    """u.VadFlags.Protection: the MM_* index the VAD was created with."""
    return flags(cpu, node) >> MMVAD_FLAGS.PROTECTION_SHIFT & MMVAD_FLAGS.PROTECTION_MASK


def no_change(cpu: Cpu, node: int) -> bool:
    return bool(flags(cpu, node) & MMVAD_FLAGS.NO_CHANGE)


def set_protection(cpu: Cpu, node: int, value: MmProtect) -> None:
    mask = MMVAD_FLAGS.PROTECTION_MASK << MMVAD_FLAGS.PROTECTION_SHIFT
    new = flags(cpu, node) & ~mask | int(value) << MMVAD_FLAGS.PROTECTION_SHIFT
    write_field(cpu, node, MMVAD_SHORT.LongFlags, new)


def mm_protection(writable: bool, executable: bool) -> MmProtect:
    """MiMakeProtectionMask for the four PAGE_* values the model's services take."""
    if executable:
        return MmProtect.EXECUTE_READWRITE if writable else MmProtect.EXECUTE_READ
    return MmProtect.READWRITE if writable else MmProtect.READONLY


# -- searching (MiLocateAddress, MiCheckForConflictingVad, MiFindEmptyAddressRange) -----------
def _descend(cpu: Cpu, eprocess: int, first: int, last: int) -> tuple[int, bool]:
    """The node overlapping VPNs [first, last] (0: none), and whether the walk finished within
    MAX_DEPTH (a looped or absurdly deep tree makes it give up)."""
    node = read_field(cpu, eprocess, EPROCESS.VadRoot)
    for _ in range(MAX_DEPTH):
        if not node:
            return 0, True
        if last < starting_vpn(cpu, node):
            node = read_field(cpu, node, RTL_BALANCED_NODE.Left)
        elif first > ending_vpn(cpu, node):
            node = read_field(cpu, node, RTL_BALANCED_NODE.Right)
        else:
            return node, True
    return node, False


def locate(cpu: Cpu, eprocess: int, vpn: int) -> int:
    """MiLocateAddress: the node whose [StartingVpn, EndingVpn] holds ``vpn``, or 0."""
    node, finished = _descend(cpu, eprocess, vpn, vpn)
    if not finished:
        return 0
    if node:
        write_field(cpu, eprocess, EPROCESS.VadHint, node)
    return node


def walk(cpu: Cpu, eprocess: int) -> Iterator[int]:
    """The nodes in StartingVpn order (an in-order walk with an explicit stack, bounded)."""
    stack: list[int] = []
    node = read_field(cpu, eprocess, EPROCESS.VadRoot)
    for _ in range(2 * MAX_DEPTH):
        if node:
            stack.append(node)
            node = read_field(cpu, node, RTL_BALANCED_NODE.Left)
            continue
        if not stack:
            return
        node = stack.pop()
        yield node
        node = read_field(cpu, node, RTL_BALANCED_NODE.Right)


def next_above(cpu: Cpu, eprocess: int, vpn: int) -> int:
    """The node with the lowest StartingVpn above ``vpn``, or 0 (where a free range ends)."""
    node = read_field(cpu, eprocess, EPROCESS.VadRoot)
    best = 0
    for _ in range(MAX_DEPTH):
        if not node:
            break
        if starting_vpn(cpu, node) > vpn:
            best = node
            node = read_field(cpu, node, RTL_BALANCED_NODE.Left)
        else:
            node = read_field(cpu, node, RTL_BALANCED_NODE.Right)
    return best


def conflicting(cpu: Cpu, eprocess: int, first: int, last: int) -> int:
    """MiCheckForConflictingVad: a node overlapping VPNs [first, last], or 0 (a walk that gave
    up answers with the node it stopped at: the range is treated as taken)."""
    return _descend(cpu, eprocess, first, last)[0]


def find_empty(cpu: Cpu, eprocess: int, pages: int) -> int:
    """MiFindEmptyAddressRange, bottom-up from :data:`ALLOCATION_FLOOR`: the first VPN where
    ``pages`` pages fit with one unallocated guard page after every VAD below them [model: the
    guard keeps an overrun from reaching the next allocation]; -1 when none is left."""
    candidate = ALLOCATION_FLOOR >> PAGE_SHIFT
    for node in walk(cpu, eprocess):
        end = ending_vpn(cpu, node)
        if end + 2 <= candidate:
            continue
        if starting_vpn(cpu, node) > candidate + pages:  # room, and a guard page before it
            break
        candidate = end + 2
    return candidate if candidate + pages - 1 <= HIGHEST_USER_VPN else -1


# -- changing the tree ----------------------------------------------------------------------
def allocate_node(cpu: Cpu, lookaside: int, new_page: Callable[[], int]) -> int:
    """ExAllocateFromNPagedLookasideList: a zeroed 0x40-byte block; ``new_page`` gives NT a
    zeroed pool page (its VA) when the list is empty."""
    block = cpu.read_u64(lookaside)
    if not block:
        page = new_page()
        for offset in range(VAD_BLOCK, PAGE_SIZE - VAD_BLOCK, VAD_BLOCK):
            cpu.write_u64(page + offset, page + offset + VAD_BLOCK)
        block = page
    cpu.write_u64(lookaside, cpu.read_u64(block))
    cpu.write_u64(block, 0)
    return block


def free_node(cpu: Cpu, lookaside: int, node: int) -> None:
    """ExFreeToNPagedLookasideList: zero the block (no stale VPNs in pool) and push it."""
    cpu.write(node, bytes(VAD_BLOCK))
    cpu.write_u64(node, cpu.read_u64(lookaside))
    cpu.write_u64(lookaside, node)


def initialize_node(
    cpu: Cpu, node: int, first: int, pages: int, value: MmProtect, secured: bool = False
) -> None:
    """MiAllocateVad for private committed memory: extent, VadFlags (Protection, PrivateMemory,
    NoChange for a secured range), VadFlags1 (CommitCharge, MemCommit), ReferenceCount 1."""
    last = first + pages - 1
    write_field(cpu, node, MMVAD_SHORT.StartingVpn, first & _LOW)
    write_field(cpu, node, MMVAD_SHORT.EndingVpn, last & _LOW)
    write_field(cpu, node, MMVAD_SHORT.StartingVpnHigh, first >> 32 & 0xFF)
    write_field(cpu, node, MMVAD_SHORT.EndingVpnHigh, last >> 32 & 0xFF)
    bits = int(value) << MMVAD_FLAGS.PROTECTION_SHIFT | MMVAD_FLAGS.PRIVATE_MEMORY
    bits |= VAD_TYPE_NONE << MMVAD_FLAGS.VAD_TYPE_SHIFT
    if secured:
        bits |= MMVAD_FLAGS.NO_CHANGE
    write_field(cpu, node, MMVAD_SHORT.LongFlags, bits)
    commit = pages & MMVAD_FLAGS1.COMMIT_CHARGE_MASK | MMVAD_FLAGS1.MEM_COMMIT
    write_field(cpu, node, MMVAD_SHORT.LongFlags1, commit)
    write_field(cpu, node, MMVAD_SHORT.ReferenceCount, 1)


def _tree(cpu: Cpu, eprocess: int) -> AvlTree:
    return AvlTree(cpu, eprocess + EPROCESS.VadRoot.offset)


def insert(cpu: Cpu, eprocess: int, node: int) -> bool:
    """MiInsertVad: link ``node`` (its extent already set) by StartingVpn and rebalance
    (RtlAvlInsertNodeEx).  False, and nothing linked, if the walk gave up (a corrupted tree)."""
    key = starting_vpn(cpu, node)
    parent = 0
    link = read_field(cpu, eprocess, EPROCESS.VadRoot)
    right = False
    for _ in range(MAX_DEPTH):
        if not link:
            break
        parent = link
        right = key > starting_vpn(cpu, link)
        link = read_field(cpu, link, RTL_BALANCED_NODE.Right if right else RTL_BALANCED_NODE.Left)
    else:
        return False
    _tree(cpu, eprocess).link(parent, node, right, MAX_DEPTH)
    count = read_field(cpu, eprocess, EPROCESS.VadCount)
    write_field(cpu, eprocess, EPROCESS.VadCount, count + 1)
    return True


def remove(cpu: Cpu, eprocess: int, node: int) -> None:
    """MiRemoveVad: unlink ``node`` and rebalance (RtlAvlRemoveNode; its in-order successor
    takes its place when it has two children)."""
    _tree(cpu, eprocess).remove(node, MAX_DEPTH)
    count = read_field(cpu, eprocess, EPROCESS.VadCount)
    write_field(cpu, eprocess, EPROCESS.VadCount, max(0, count - 1))
    if read_field(cpu, eprocess, EPROCESS.VadHint) == node:
        write_field(cpu, eprocess, EPROCESS.VadHint, 0)


# -- host side (tools, goal checks, tests; never guest code) --------------------------------
@dataclass(frozen=True)
class VadView:
    """One VAD as RAM holds it (a debugger's ``!vad``)."""

    node: int
    start_vpn: int
    end_vpn: int
    protection: int
    no_change: bool
    private: bool
    commit: int

    @property
    def base(self) -> int:
        return self.start_vpn << PAGE_SHIFT

    @property
    def size(self) -> int:
        return (self.end_vpn - self.start_vpn + 1) << PAGE_SHIFT


def host_vads(ram: _Ram, eprocess: int) -> list[VadView]:
    """The VAD tree of the EPROCESS at ``eprocess`` (a direct-map VA), in StartingVpn order."""
    from vbsim.guest.address_space import DIRECT_MAP

    reader = HostReader(ram, DIRECT_MAP)
    views: list[VadView] = []
    stack: list[int] = []
    node = reader.field(eprocess, EPROCESS.VadRoot)
    for _ in range(2 * MAX_DEPTH):
        if node:
            stack.append(node)
            node = reader.field(node, RTL_BALANCED_NODE.Left)
            continue
        if not stack:
            break
        node = stack.pop()
        start = reader.field(node, MMVAD_SHORT.StartingVpn)
        start |= reader.field(node, MMVAD_SHORT.StartingVpnHigh) << 32
        end = reader.field(node, MMVAD_SHORT.EndingVpn)
        end |= reader.field(node, MMVAD_SHORT.EndingVpnHigh) << 32
        bits = reader.field(node, MMVAD_SHORT.LongFlags)
        views.append(
            VadView(
                node,
                start,
                end,
                bits >> MMVAD_FLAGS.PROTECTION_SHIFT & MMVAD_FLAGS.PROTECTION_MASK,
                bool(bits & MMVAD_FLAGS.NO_CHANGE),
                bool(bits & MMVAD_FLAGS.PRIVATE_MEMORY),
                reader.field(node, MMVAD_SHORT.LongFlags1) & MMVAD_FLAGS1.COMMIT_CHARGE_MASK,
            )
        )
        node = reader.field(node, RTL_BALANCED_NODE.Right)
    return views


def host_regions(ram: _Ram, eprocess: int, root: int) -> list[Region]:
    """Each VAD of the process with the frames its PTEs map now (page tables at ``root``, walked
    in RAM): what tools and goal checks call the process's committed regions."""
    from vbsim.hw.pagetable import PageTables, PhysAccess
    from vbsim.hw.x86 import PTE_ADDR_MASK, Pte

    def read_u64(gpa: int) -> int:
        return int.from_bytes(ram.read(gpa, 8), "little")

    tables = PageTables(PhysAccess(read_u64, lambda gpa, value: None, lambda: 0), root)
    regions: list[Region] = []
    for view in host_vads(ram, eprocess):
        pfns: list[int] = []
        writable = executable = False
        for index in range(min(view.end_vpn - view.start_vpn + 1, MAX_DEPTH)):
            leaf = tables.lookup(view.base + index * PAGE_SIZE)
            if leaf is None:
                continue
            pfns.append((leaf & PTE_ADDR_MASK) >> PAGE_SHIFT)
            writable |= bool(leaf & Pte.RW)
            executable |= not leaf & Pte.NX
        regions.append(Region(view.base, view.size, writable, executable, pfns, view.node))
    return regions


def process_regions(ram: _Ram, process: Process) -> list[Region]:
    """:func:`host_regions` of a process NT created (host side)."""
    return host_regions(ram, process.eprocess, process.tables.root)


def region_at(ram: _Ram, process: Process, va: int) -> Region | None:
    """The region (VAD) holding ``va`` in ``process``, as RAM holds it now (host side)."""
    for region in process_regions(ram, process):
        if region.base <= va < region.base + region.size:
            return region
    return None
