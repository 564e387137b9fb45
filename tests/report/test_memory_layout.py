"""The memory map's layout: each run wide enough for its labels, or (when there are too many to
label) the smallest runs give their labels up; widths always fill the strip."""

from __future__ import annotations

from vbsim.boot.memory_map import MemoryRun
from vbsim.report.draw import _label_need, _widths


def _runs(count: int) -> list[MemoryRun]:
    return [
        MemoryRun(0x1000 * (1 << i), 1 << (i % 12), 0xF, "securekernel.pool" if i % 2 else "nt")
        for i in range(count)
    ]


def test_a_few_runs_all_get_room_for_their_labels() -> None:
    runs = _runs(9)
    widths = _widths(runs, 1224.0)
    assert abs(sum(widths) - 1224.0) < 1e-6
    assert all(w >= _label_need(r) for r, w in zip(runs, widths, strict=True))
    # Bigger runs (log2 of the size) are never narrower than smaller ones with the same labels.
    same = [(r.pages, w) for r, w in zip(runs, widths, strict=True) if r.owner == "nt"]
    assert [w for _, w in sorted(same)] == sorted(w for _, w in same)


def test_too_many_runs_drop_the_labels_of_the_smallest() -> None:
    runs = _runs(40)
    widths = _widths(runs, 1224.0)
    assert sum(widths) <= 1224.0 + 1e-6
    fitting = [r for r, w in zip(runs, widths, strict=True) if w >= _label_need(r)]
    dropped = [r for r, w in zip(runs, widths, strict=True) if w < _label_need(r)]
    assert fitting and dropped
    assert max(r.pages for r in dropped) <= min(r.pages for r in fitting)
    assert min(widths) >= 7.0
