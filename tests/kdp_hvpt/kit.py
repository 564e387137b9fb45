"""Shared helpers for the KDP / HVPT / secure-call parameter tests."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

from vbsim.boot.chain import System, boot
from vbsim.boot.kernel_space import KernelSpace
from vbsim.guest.address_space import DIRECT_MAP
from vbsim.hw.pagetable import PageTables
from vbsim.hw.vp import VirtualProcessor
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE, PTE_ADDR_MASK, Pte
from vbsim.invariants.skstate import HostMem, host_gpa
from vbsim.machine import Machine
from vbsim.nt import kdp as ntkdp
from vbsim.nt.kernel import NtKernel
from vbsim.policy import Legacy, preset
from vbsim.sk import objects
from vbsim.sk.kernel import SecureKernel
from vbsim.sk.layouts import ObjectType, SecureAllocation, read_field
from vbsim.sk.services import allocation
from vbsim.sk.services import kdp as skkdp

VALUE = 0x1122_3344_5566_7788
ATTACK = 0x4141_4141_4141_4141


#: The loader's side of each booted SK's address space (host side; the SK keeps only symbols).
_SPACES: weakref.WeakKeyDictionary[SecureKernel, KernelSpace] = weakref.WeakKeyDictionary()


def space_of(sk: SecureKernel) -> KernelSpace:
    return _SPACES[sk]


def booted(name: str, **changes: Any) -> System:
    policy = preset(name)
    if changes:
        policy = policy.with_changes(**changes)
    system = boot(policy)
    assert system.booted, system.halted
    if system.sk is not None and system.sk_space is not None:
        _SPACES[system.sk] = system.sk_space
    if system.nt is not None:
        ntkdp.install(system.nt)
    return system


def legacy(name: str, **switches: bool) -> System:
    return booted(name, legacy=Legacy(**switches))


def parts(system: System) -> tuple[Machine, NtKernel, VirtualProcessor]:
    assert system.machine is not None and system.nt is not None
    return system.machine, system.nt, system.machine.bsp


def sk_of(system: System) -> SecureKernel:
    assert system.sk is not None
    return system.sk


def events(system: System, kind: str, mechanism: str | None = None) -> list[Any]:
    return [
        e
        for e in system.trace.events
        if e.kind == kind and (mechanism is None or e.mechanism == mechanism)
    ]


def remap(nt: NtKernel, vp: VirtualProcessor, va: int, gpa: int, flags: int) -> int:
    """A K0 attacker edits NT's PTE for ``va`` (through the direct map, as any kernel write) and
    flushes it; returns the old PTE value."""
    tables = PageTables(nt.phys(vp.cpu), vp.p.cr3)
    pte = tables.pte_gpa(va)
    assert pte is not None
    old = vp.read_u64(DIRECT_MAP + pte)
    vp.write_u64(DIRECT_MAP + pte, (gpa & PTE_ADDR_MASK) | flags | int(Pte.P))
    vp.invlpg(va)
    return old


def kernel_page(nt: NtKernel, vp: VirtualProcessor, data: bytes = b"") -> tuple[int, int]:
    """A fresh VTL0 kernel page holding ``data``: (direct-map VA, PFN)."""
    va, gpa = nt.alloc_kernel_page(vp.cpu)
    if data:
        vp.write(va, data)
    return va, gpa >> PAGE_SHIFT


def sk_gpa(sk: SecureKernel, va: int) -> int:
    gpa = host_gpa(space_of(sk).ram, sk, va)
    assert gpa is not None
    return gpa


def handles(sk: SecureKernel) -> dict[int, tuple[int, int]]:
    """Handle → (type index, object VA), from the SK's handle table in RAM."""
    return objects.host_entries(space_of(sk).ram.read, sk)


def allocation_fields(sk: SecureKernel, handle: int) -> tuple[int, int, int]:
    """(VA, size, pages) of a secure allocation, from its object body in SK memory."""
    kind, va = handles(sk)[handle]
    assert kind == ObjectType.SECURE_ALLOCATION
    mem = HostMem(space_of(sk).ram, sk)
    return tuple(  # type: ignore[return-value]
        read_field(mem, va, f)
        for f in (SecureAllocation.VA, SecureAllocation.SIZE, SecureAllocation.PAGES)
    )


def allocation_bytes(sk: SecureKernel, handle: int, length: int) -> bytes:
    va, _, _ = allocation_fields(sk, handle)
    return space_of(sk).ram.read(sk_gpa(sk, va), length)


def trustlet_pfn(sk: SecureKernel) -> int | None:
    """A VTL1 page that is not the SK's own image/data (a trustlet's, or HLAT's)."""
    space = space_of(sk)
    own = set(space.frames)
    others = sorted(p for p in sk.host_own_pages(space.ram) if p not in own)
    return others[0] if others else None


def scratch_pages(sk: SecureKernel) -> set[int]:
    """SK pages written in the normal course of a secure call: hypercall parameter pages, the
    per-VP assist and SynIC message pages (written by the hypervisor), the capture pages, the
    secure-pool block table and the secure allocations' buffers."""
    pages = {sk.params.in_gpa >> PAGE_SHIFT, sk.params.out_gpa >> PAGE_SHIFT}
    for proc in sk.processors:
        pages |= {proc.assist_gpa >> PAGE_SHIFT, proc.sim_gpa >> PAGE_SHIFT}
    st = allocation.state(sk)
    pages |= {sk_gpa(sk, va) >> PAGE_SHIFT for va in (*st.capture, st.control_va)}
    pages.add(sk_gpa(sk, skkdp.state(sk).table_va) >> PAGE_SHIFT)
    for handle, (kind, _) in handles(sk).items():
        if kind == ObjectType.SECURE_ALLOCATION:
            va, _, count = allocation_fields(sk, handle)
            pages |= {sk_gpa(sk, va + i * PAGE_SIZE) >> PAGE_SHIFT for i in range(count)}
    return pages


_AD = int(Pte.A | Pte.D)


def fingerprint(sk: SecureKernel) -> dict[int, str]:
    """A digest of every SK page that a secure call must not change (page-table A/D bits masked:
    the processor sets them on first use)."""
    space = space_of(sk)
    ram = space.ram
    skip = scratch_pages(sk)
    tables = set(space.pt.frames or [])
    out: dict[int, str] = {}
    for pfn in sorted(set(space.frames) - skip):
        raw = ram.read(pfn << PAGE_SHIFT, PAGE_SIZE)
        if pfn in tables:
            raw = b"".join(
                (int.from_bytes(raw[i : i + 8], "little") & ~_AD).to_bytes(8, "little")
                for i in range(0, PAGE_SIZE, 8)
            )
        out[pfn] = hashlib.sha256(raw).hexdigest()
    return out
