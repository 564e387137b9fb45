"""Properties: whatever a VTL0 driver or a rogue device programs, no Python exception escapes,
no page VTL0 may not write changes, and no byte VTL0 may not read reaches a device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbsim.hw.dma import (
    DIR_FROM_MEMORY,
    DIR_TO_MEMORY,
    MAX_TRANSFER,
    PORT_COUNT,
    REG_COMMAND,
    REG_STATUS,
    STATUS_BLOCKED,
    STATUS_DONE,
    STATUS_ERROR,
    DmaDevice,
    driver_transfer,
)
from vbsim.hw.iommu import DMA_R, DMA_RW, DMA_W, IommuDomain
from vbsim.hw.slat import R
from vbsim.hw.x86 import PAGE_SIZE

from .rig import BASE, RAM_SIZE, Rig, make_rig

SECRET = b"\x00TRUSTLET-SECRET\xa5\x5a\xc3\x3c"
IOVA = 0x4000_0000


class World:
    """One booted machine shared by all examples of a property (state accumulates; the
    invariants hold over the whole run)."""

    def __init__(self) -> None:
        self.rig: Rig = make_rig(kernel_dma_protection=True)
        rig = self.rig
        va, self.no_access = rig.page()
        rig.vp.write(va + 0x321, SECRET)
        rig.protect(self.no_access, 0)
        va_ro, self.read_only = rig.page()
        rig.vp.write(va_ro, b"R" * PAGE_SIZE)
        rig.protect(self.read_only, R)
        _, self.normal = rig.page()
        self.evil = DmaDevice.malicious(rig.iommu)
        # A domain for the device that maps protected pages writable: SLAT must still hold.
        self.domain = IommuDomain("hostile")
        for i, gpa in enumerate((self.no_access, self.read_only, self.normal)):
            self.domain.map(IOVA + i * PAGE_SIZE, gpa, PAGE_SIZE, DMA_RW)
        self.domain.map(IOVA + 3 * PAGE_SIZE, self.normal, PAGE_SIZE, DMA_R)
        self.domain.map(IOVA + 4 * PAGE_SIZE, self.monitor_page, PAGE_SIZE, DMA_W)
        self.sim_gpn = rig.monitor.sim_gpa >> 12
        self.guarded = [gpn for gpn in rig.vtl0_unwritable() if gpn != self.sim_gpn]
        self.before = rig.snapshot(self.guarded)
        assert self.no_access >> 12 in self.guarded and self.read_only >> 12 in self.guarded

    @property
    def monitor_page(self) -> int:
        return self.rig.monitor.log_gpa

    def interesting_addresses(self) -> list[int]:
        out = [0, RAM_SIZE - 1, RAM_SIZE, IOVA, 2**64 - 1, 2**64 - PAGE_SIZE]
        for gpa in (self.no_access, self.read_only, self.normal, self.monitor_page):
            out += [gpa, gpa - 1, gpa - 16, gpa + PAGE_SIZE - 8, gpa + 0x321]
        out += [IOVA + i * PAGE_SIZE - 8 for i in range(6)]
        return out

    def check(self) -> None:
        rig = self.rig
        assert rig.snapshot(self.guarded) == self.before
        assert SECRET not in rig.device.buffer and SECRET not in self.evil.buffer
        assert rig.device.status in (0, 1, 2, 3)
        # Whatever reached VTL1's SIM page is an IOMMU fault in slot 1 (or nothing).
        if rig.message(1)[0]:
            assert rig.message(1)[0] == 0x80000024
        rig.clear_slot(1)  # VTL1 consumes messages as they come


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    yield w
    w.rig.machine.close()


#: Addresses are drawn as (anchor index, delta): an index into the world's interesting addresses
#: (protected pages, their edges, the domain window, RAM and IOVA limits) or, past the list, a
#: spread-out pseudo-random address.
anchors = st.tuples(st.integers(0, 40), st.integers(-64, 64))
lengths = st.one_of(
    st.sampled_from([0, 1, 8, 0x20, PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE, MAX_TRANSFER]),
    st.sampled_from([MAX_TRANSFER + 1, 0xFFFF_FFFF]),
    st.integers(0, 3 * PAGE_SIZE),
)
register_op = st.one_of(
    # (kind, offset, size, value-or-anchor)
    st.tuples(
        st.just("out"),
        st.integers(-2, PORT_COUNT + 2),
        st.sampled_from([1, 2, 4]),
        st.integers(0, 0xFFFF_FFFF),
    ),
    st.tuples(st.just("addr"), st.just(0), st.just(4), anchors),
    st.tuples(st.just("len"), st.just(0), st.just(4), lengths),
    st.tuples(st.just("dir"), st.just(0), st.just(4), st.sampled_from([0, 1, 2, 0xFFFF_FFFF])),
    st.tuples(st.just("go"), st.just(0), st.just(4), st.sampled_from([1, 2, 3, 0xFFFF_FFFF])),
    st.tuples(
        st.just("in"), st.integers(-2, PORT_COUNT + 2), st.sampled_from([1, 2, 4]), st.just(0)
    ),
    st.tuples(st.just("domain"), st.just(0), st.just(0), st.booleans()),
    # A whole driver sequence (the common case): address, length, direction, GO.
    st.tuples(
        st.just("program"),
        st.just(0),
        st.just(4),
        st.tuples(anchors, lengths, st.sampled_from([DIR_TO_MEMORY, DIR_FROM_MEMORY, 9])),
    ),
    st.tuples(
        st.just("program"),
        st.just(0),
        st.just(4),
        st.tuples(anchors, st.integers(1, 2 * PAGE_SIZE), st.sampled_from([0, 1])),
    ),
)


def resolve(world: World, anchor: tuple[int, int]) -> int:
    """The address an anchor stands for (strategies cannot see the fixture's GPAs)."""
    points = world.interesting_addresses()
    index, delta = anchor
    if index < len(points):
        return (points[index] + delta) % 2**64
    return (index * 0x1357_9BDF_0000 + delta) % 2**64


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(register_op, min_size=1, max_size=25))
def test_random_register_programming(world: World, ops: list[tuple[str, int, int, object]]) -> None:
    rig = world.rig
    vp = rig.vp
    for kind, offset, size, arg in ops:
        if kind == "out":
            assert isinstance(arg, int)
            vp.out(BASE + offset, size, arg)
        elif kind == "in":
            value = vp.inp(BASE + offset, size)
            assert 0 <= value < 1 << (8 * size)
        elif kind == "addr":
            assert isinstance(arg, tuple)
            iova = resolve(world, arg)
            vp.out(BASE, 4, iova & 0xFFFF_FFFF)
            vp.out(BASE + 4, 4, iova >> 32)
        elif kind == "len":
            assert isinstance(arg, int)
            vp.out(BASE + 8, 4, arg & 0xFFFF_FFFF)
        elif kind == "dir":
            assert isinstance(arg, int)
            vp.out(BASE + 12, 4, arg)
        elif kind == "go":
            assert isinstance(arg, int)
            vp.out(BASE + REG_COMMAND, 4, arg)
            assert vp.inp(BASE + REG_STATUS, 4) in (0, 1, 2, 3)
        elif kind == "program":
            assert isinstance(arg, tuple)
            anchor, length, direction = arg
            status = driver_transfer(vp, BASE, resolve(world, anchor), length, direction)
            assert status in (STATUS_DONE, STATUS_BLOCKED, STATUS_ERROR)
        else:
            rig.iommu.assign(rig.device.requester, world.domain if arg else None)
        assert vp.vtl == 0 and vp.cpl == 0
        world.check()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    transfers=st.lists(
        st.tuples(
            anchors,
            lengths,
            st.sampled_from([DIR_TO_MEMORY, DIR_FROM_MEMORY, 5]),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_rogue_device_direct_dma(
    world: World, transfers: list[tuple[tuple[int, int], int, int, bool, bool]]
) -> None:
    rig = world.rig
    evil = world.evil
    for anchor, length, direction, with_domain, kdp in transfers:
        rig.iommu.kernel_dma_protection = kdp
        rig.iommu.assign(evil.requester, world.domain if with_domain else None)
        iova = resolve(world, anchor)
        if direction == DIR_TO_MEMORY:
            evil.dma_write(iova, b"\xde\xad" * (min(length, MAX_TRANSFER + 2) // 2))
        elif direction == DIR_FROM_MEMORY:
            data = evil.dma_read(iova, length)
            assert data is None or SECRET not in data
        else:
            evil.transfer(iova, length, direction)
        world.check()
    rig.iommu.kernel_dma_protection = True
