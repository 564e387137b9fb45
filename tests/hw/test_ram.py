"""Guest RAM: one lazily committed anonymous mmap, the floating bus, and the frame allocator."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbsim.hw.ram import DEFAULT_RAM_SIZE, FrameAllocator, GuestRam, OutOfFrames, RamError
from vbsim.hw.x86 import PAGE_SIZE, Access

MIB = 1 << 20
SIZE = 1 * MIB  # 256 frames


@pytest.fixture
def ram() -> GuestRam:
    r = GuestRam(SIZE)
    yield r
    r.close()


# -- the buffer -------------------------------------------------------------------------------
def test_ram_is_one_anonymous_mmap_of_the_requested_size(ram: GuestRam) -> None:
    assert isinstance(ram.mm, mmap.mmap)
    assert len(ram.mm) == SIZE
    assert ram.size == SIZE
    assert ram.pages == SIZE // PAGE_SIZE == 256
    assert len(ram.view) == SIZE
    assert ram.read(0, 16) == bytes(16)  # fresh anonymous memory is zero
    assert ram.read(SIZE - 16, 16) == bytes(16)


def test_default_ram_size_is_1_gib() -> None:
    assert DEFAULT_RAM_SIZE == 1 << 30


@pytest.mark.parametrize("size", [0, -PAGE_SIZE, 1, PAGE_SIZE + 1, PAGE_SIZE * 3 - 8])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(RamError):
        GuestRam(size)


def test_smallest_ram_is_one_page() -> None:
    r = GuestRam(PAGE_SIZE)
    assert (r.size, r.pages, len(r.mm)) == (PAGE_SIZE, 1, PAGE_SIZE)
    # Frame 0 is held back, so a one-page machine has no frame to hand out.
    with pytest.raises(OutOfFrames):
        r.frames.alloc("x")
    r.close()


def test_read_write_round_trip_and_u64_little_endian(ram: GuestRam) -> None:
    assert ram.write(0x1234, b"hello") is True
    assert ram.read(0x1234, 5) == b"hello"
    assert ram.mm[0x1234:0x1239] == b"hello"
    assert ram.write_u64(0x2000, 0x1122_3344_5566_7788) is True
    assert ram.read(0x2000, 8) == bytes.fromhex("8877665544332211")
    assert ram.read_u64(0x2000) == 0x1122_3344_5566_7788
    # write_u64 truncates to 64 bits (two's complement for negatives).
    ram.write_u64(0x3000, -1)
    assert ram.read_u64(0x3000) == 0xFFFF_FFFF_FFFF_FFFF
    ram.write_u64(0x3000, (1 << 64) | 5)
    assert ram.read_u64(0x3000) == 5


def test_read_returns_bytes_not_views(ram: GuestRam) -> None:
    ram.write(0, b"abcd")
    data = ram.read(0, 4)
    assert type(data) is bytes
    ram.write(0, b"WXYZ")
    assert data == b"abcd"


def test_last_byte_is_backed_first_byte_after_is_not(ram: GuestRam) -> None:
    assert ram.write(SIZE - 1, b"\x5a") is True
    assert ram.read(SIZE - 1, 1) == b"\x5a"
    assert ram.read(SIZE, 1) == b"\xff"
    assert ram.backed(SIZE - 1) and not ram.backed(SIZE)
    assert ram.backed(0, SIZE) and not ram.backed(0, SIZE + 1)
    assert not ram.backed(-1)
    assert not ram.backed(0, -1)


def test_translate_names_ram_or_unbacked(ram: GuestRam) -> None:
    v = ram.translate(SIZE - 1, Access.WRITE)
    assert (v.ok, v.address, v.mechanism, v.access) == (True, SIZE - 1, "ram", Access.WRITE)
    for gpa in (SIZE, SIZE + PAGE_SIZE, 1 << 45, -1):
        v = ram.translate(gpa)
        assert (v.ok, v.address, v.mechanism, v.access) == (False, gpa, "ram.unbacked", Access.READ)


# -- unbacked GPAs: reads float high, writes are dropped, never an exception -------------------
@pytest.mark.parametrize("gpa", [SIZE, SIZE + 123, 1 << 40, (1 << 64) - 8, 1 << 70, -8, -(1 << 40)])
def test_fully_unbacked_reads_float_high(ram: GuestRam, gpa: int) -> None:
    assert ram.read(gpa, 8) == b"\xff" * 8
    assert ram.read_u64(gpa) == 0xFFFF_FFFF_FFFF_FFFF
    assert ram.read(gpa, 0) == b""


@pytest.mark.parametrize("gpa", [SIZE, SIZE + 123, 1 << 40, 1 << 70, -8, -(1 << 40)])
def test_fully_unbacked_writes_are_dropped(ram: GuestRam, gpa: int) -> None:
    before = bytes(ram.mm[:])
    assert ram.write(gpa, b"\x11" * 8) is False
    assert ram.write_u64(gpa, 0x2222) is False
    assert bytes(ram.mm[:]) == before


def test_read_straddling_the_end_of_ram(ram: GuestRam) -> None:
    ram.write(SIZE - 4, b"WXYZ")
    assert ram.read(SIZE - 4, 8) == b"WXYZ\xff\xff\xff\xff"


def test_read_straddling_gpa_zero_from_below(ram: GuestRam) -> None:
    ram.write(0, b"ABCD")
    assert ram.read(-4, 8) == b"\xff\xff\xff\xffABCD"


def test_write_straddling_the_end_keeps_the_backed_part_only(ram: GuestRam) -> None:
    assert ram.write(SIZE - 3, b"abcdef") is False
    assert ram.read(SIZE - 3, 3) == b"abc"
    assert ram.read(SIZE - 3, 6) == b"abc\xff\xff\xff"


def test_write_straddling_gpa_zero_from_below_keeps_the_backed_part_only(ram: GuestRam) -> None:
    assert ram.write(-2, b"abcdef") is False
    assert ram.read(0, 4) == b"cdef"


_SHARED_RAM = GuestRam(SIZE)


@settings(max_examples=200, deadline=None)
@given(
    gpa=st.integers(min_value=-(1 << 66), max_value=1 << 66)
    | st.integers(min_value=-64, max_value=SIZE + 64),
    length=st.integers(min_value=0, max_value=64),
    fill=st.integers(min_value=0, max_value=255),
)
def test_any_gpa_reads_and_writes_without_python_errors(gpa: int, length: int, fill: int) -> None:
    ram = _SHARED_RAM
    ram.mm[:] = bytes(SIZE)
    data = bytes([fill]) * length
    inside = gpa >= 0 and gpa + length <= SIZE
    assert ram.write(gpa, data) is inside
    out = ram.read(gpa, length)
    assert len(out) == length
    assert out == bytes(fill if 0 <= gpa + i < SIZE else 0xFF for i in range(length))
    # Exactly the backed part of [gpa, gpa+length) changed.
    lo, hi = max(gpa, 0), min(gpa + length, SIZE)
    expected = bytearray(SIZE)
    if lo < hi:
        expected[lo:hi] = bytes([fill]) * (hi - lo)
    assert ram.mm[:] == expected


def test_zero_page_clears_one_frame_and_ignores_bad_frames(ram: GuestRam) -> None:
    ram.write(0, b"\xaa" * (3 * PAGE_SIZE))
    ram.zero_page(1)
    assert ram.read(0, PAGE_SIZE) == b"\xaa" * PAGE_SIZE
    assert ram.read(PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert ram.read(2 * PAGE_SIZE, PAGE_SIZE) == b"\xaa" * PAGE_SIZE
    snapshot = bytes(ram.mm[:])
    ram.zero_page(-1)
    ram.zero_page(ram.pages)
    ram.zero_page(1 << 40)
    assert bytes(ram.mm[:]) == snapshot


# -- frame allocator --------------------------------------------------------------------------
def test_frame_zero_is_never_handed_out(ram: GuestRam) -> None:
    pfns = [ram.frames.alloc("t") for _ in range(ram.pages - 1)]
    assert pfns == list(range(1, ram.pages))
    assert 0 not in pfns
    with pytest.raises(OutOfFrames):
        ram.frames.alloc("t")


def test_alloc_records_owner_and_free_recycles() -> None:
    fa = FrameAllocator(first=10, limit=13)
    assert fa.alloc("a") == 10
    assert fa.alloc("b") == 11
    assert (fa.owner(10), fa.owner(11), fa.owner(12)) == ("a", "b", None)
    assert fa.used == 2
    fa.free(10)
    assert fa.owner(10) is None and fa.used == 1
    assert fa.alloc("c") == 10  # the freed frame comes back before the bump region
    assert fa.owner(10) == "c"
    assert fa.alloc("d") == 12
    with pytest.raises(OutOfFrames) as exc:
        fa.alloc("e")
    assert exc.value.args == ("e",)
    fa.free(11)
    assert fa.alloc("f") == 11


def test_free_of_unallocated_or_twice_is_ignored() -> None:
    fa = FrameAllocator(first=1, limit=4)
    fa.free(2)  # never allocated
    assert fa.alloc() == 1
    fa.free(1)
    fa.free(1)  # twice
    assert fa.alloc() == 1
    assert fa.alloc() == 2  # not handed out twice from the free list
    assert fa.alloc() == 3
    with pytest.raises(OutOfFrames):
        fa.alloc()


def test_empty_owner_label_still_frees() -> None:
    fa = FrameAllocator(first=1, limit=2)
    assert fa.alloc() == 1
    fa.free(1)
    assert fa.used == 0
    assert fa.alloc() == 1


def test_alloc_contiguous_aligns_and_frees_the_gap() -> None:
    fa = FrameAllocator(first=1, limit=1024)
    assert fa.alloc("x") == 1
    start = fa.alloc_contiguous(512, "big", align=512)
    assert start == 512
    assert all(fa.owner(p) == "big" for p in range(512, 1024))
    assert fa.used == 1 + 512
    # The skipped frames 2..511 went to the free list and are handed out again.
    gap = sorted(fa.alloc("g") for _ in range(510))
    assert gap == list(range(2, 512))
    with pytest.raises(OutOfFrames):
        fa.alloc("none left")


def test_alloc_contiguous_exhaustion_leaves_state_alone() -> None:
    fa = FrameAllocator(first=1, limit=16)
    with pytest.raises(OutOfFrames):
        fa.alloc_contiguous(16, "too many")
    assert fa.used == 0
    assert fa.alloc_contiguous(15, "all") == 1
    with pytest.raises(OutOfFrames):
        fa.alloc_contiguous(1)
    with pytest.raises(OutOfFrames):
        fa.alloc()


def test_alloc_contiguous_alignment_beyond_limit_is_out_of_frames() -> None:
    fa = FrameAllocator(first=1, limit=600)
    with pytest.raises(OutOfFrames):
        fa.alloc_contiguous(100, align=512)  # 512 + 100 > 600


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "c", "f"]), st.integers(1, 8)), max_size=40))
def test_allocator_never_hands_out_a_frame_twice(ops: list[tuple[str, int]]) -> None:
    fa = FrameAllocator(first=1, limit=64)
    live: set[int] = set()
    for op, n in ops:
        try:
            if op == "a":
                pfn = fa.alloc("t")
                assert pfn not in live and 1 <= pfn < 64
                live.add(pfn)
            elif op == "c":
                start = fa.alloc_contiguous(n, "t", align=n)
                block = set(range(start, start + n))
                assert start % n == 0 and not block & live and start + n <= 64
                live |= block
            elif live:
                victim = sorted(live)[n % len(live)]
                fa.free(victim)
                live.discard(victim)
        except OutOfFrames:
            pass
        assert fa.used == len(live)
        assert set(fa.owners) == live


# -- laziness: a 4 GiB RAM costs only what is touched ------------------------------------------
def _vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_4_gib_ram_commits_only_touched_pages() -> None:
    before = _vm_rss_kib()
    big = GuestRam(4 << 30)
    try:
        assert len(big.mm) == 4 << 30
        stride = big.pages // 1000
        for i in range(1000):
            gpa = (i * stride) * PAGE_SIZE + (i % 7) * 8
            big.write(gpa, i.to_bytes(8, "little"))
        # Every touched page holds its own value (the pages are real and distinct).
        assert all(
            big.read_u64((i * stride) * PAGE_SIZE + (i % 7) * 8) == i for i in range(0, 1000, 37)
        )
        after = _vm_rss_kib()
        assert (after - before) * 1024 < 40 * MIB
    finally:
        big.close()
