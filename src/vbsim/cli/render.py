"""Rendering traces for people (rich tables) and programs (JSON)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from vbsim.trace import Event

_OUTCOME_STYLE = {
    "denied": "bold red",
    "blocked": "bold red",
    "invalid-opcode": "red",
    "delivered": "yellow",
    "posted": "magenta",
    "injected": "yellow",
    "switched": "cyan",
}


def _fmt(value: Any) -> str:
    """Numbers past 9 in hex, lists item by item (``[0xc0000096, 0x0]``: words that wrap)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 9:
        return f"0x{value:x}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(item) for item in value) + "]"
    return str(value)


def describe_detail(detail: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in detail.items() if v is not None)


def who(event: Event) -> str:
    if event.vtl is None:
        return event.actor or "-"
    ring = {0: "kernel", 3: "user"}.get(event.cpl or 0, f"ring {event.cpl}")
    label = f"VP{event.vp} VTL{event.vtl} {ring}"
    return f"{label} ({event.actor})" if event.actor else label


def _fit(
    mins: list[int], wants: list[int], room: int, floors: list[int] | None = None
) -> list[int]:
    """Column widths: each its minimum, then the room left shared out toward what each wants.
    On a screen too narrow for the minimums, the widest column gives way, down to its floor
    (``floors``; default 8) and no further: then the table is wider than the screen."""
    widths = list(mins)
    floors = floors or [8] * len(widths)
    while sum(widths) > room:  # too narrow a screen: the widest above its floor gives way
        above = [i for i, w in enumerate(widths) if w > floors[i]]
        if not above:
            break
        widest = max(above, key=lambda i: widths[i])
        widths[widest] -= 1
    return _share(widths, wants, room)


def trace_table(events: list[Event], title: str, width: int | None = None) -> Table:
    """The trace, one event a row, fitting 80 columns without cutting a mechanism, an outcome,
    a name or a hex number: the check and its outcome share a column, and every column is at
    least as wide as its longest word (they wrap at spaces, never inside a word; only a word
    longer than 30 characters folds).  A long ``key=dotted.name`` in the details breaks after
    its ``=``, ``.`` or ``_`` (:func:`wrap_names`).  Below 80 columns the columns give way down
    to their longest mechanism, outcome and hex number, and no further (the table is then wider
    than the screen, and :func:`print_table` prints it so)."""

    def longest(texts: list[str], floor: int, cap: int = 30) -> int:
        return min(cap, max([floor, *(len(word) for text in texts for word in text.split())]))

    def atoms(texts: list[str], cap: int = 30) -> int:
        """The longest part of a details word that :func:`wrap_names` never breaks (a hex
        number, a part of a name between delimiters)."""
        split = re.compile(f"(?<=[{re.escape(''.join(_BREAKS))}])")
        parts = (p for t in texts for w in t.split() for p in split.split(w))
        return min(cap, max([1, *(len(p) for p in parts)]))

    def widest(texts: list[str], floor: int) -> int:
        return max([floor, *(len(line) for text in texts for line in text.splitlines())])

    whos = [who(e) for e in events]
    checks = [f"{e.mechanism} → {e.outcome}\n{e.kind}" for e in events]
    details = [describe_detail(e.detail) for e in events]
    screen = width if width is not None else Console().width
    seq = max([1, *(len(str(e.seq)) for e in events)])
    # 5 borders and one column of padding on each inner side of the 4 columns (no edge padding).
    room = screen - seq - 5 - 6
    columns = (whos, checks, details)
    floors = [longest(whos, 1), longest(checks, 1), atoms(details)]
    widths = _fit([longest(c, 8) for c in columns], [widest(c, 8) for c in columns], room, floors)
    table = Table(title=title, show_lines=False, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right", style="dim", no_wrap=True, width=seq)
    table.add_column("who (VP, VTL, ring)", width=widths[0], overflow="fold")
    table.add_column("check → outcome / what", width=widths[1], overflow="fold")
    table.add_column("details", width=widths[2], overflow="fold")
    for event, actor, detail in zip(events, whos, details, strict=True):
        style = _OUTCOME_STYLE.get(event.outcome, "")
        outcome = f"[{style}]{escape(event.outcome)}[/]" if style else escape(event.outcome)
        table.add_row(
            str(event.seq),
            escape(actor),
            f"[bold]{escape(event.mechanism)}[/] → {outcome}\n[dim]{escape(event.kind)}[/]",
            escape(wrap_names(detail, widths[2])),
        )
    return table


#: Where a word too long for its line may break, best first: after ``=`` (``key=`` / value),
#: after ``.`` or ``/`` (a dotted routine name, a path), after ``_`` or ``-`` (inside a part).
_BREAKS = ("=", "./", "_-")


def _pieces(word: str, width: int, levels: tuple[str, ...] = _BREAKS) -> list[str]:
    """``word`` cut after the first level of delimiters, each part still too long cut after the
    next level; only a part with no delimiter left that is still too long is folded."""
    if len(word) <= width:
        return [word]
    if not levels:
        return [word[i : i + width] for i in range(0, len(word), width)]
    parts = [p for p in re.split(f"(?<=[{re.escape(levels[0])}])", word) if p]
    return [piece for part in parts for piece in _pieces(part, width, levels[1:])]


def _split_word(word: str, width: int) -> list[str]:
    """``word`` in lines of at most ``width``, its pieces (:func:`_pieces`) packed greedily."""
    lines: list[str] = []
    line = ""
    for piece in _pieces(word, width):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    return [*lines, line]


def wrap_names(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` at spaces, as rich would, except that a word longer than a
    line (``routine=attack.a03_a14_memory_code_dma._toctou_fill``) starts its own line and
    breaks after ``=``, ``.`` or ``_`` instead of mid-name."""
    width = max(width, 1)
    out: list[str] = []
    for source in text.split("\n"):
        line = ""
        for word in source.split(" "):
            if not word:
                continue
            joined = f"{line} {word}" if line else word
            if len(joined) <= width:
                line = joined
                continue
            if line:
                out.append(line)
            *whole, line = _split_word(word, width)
            out.extend(whole)
        out.append(line)
    return "\n".join(out)


def _measure(out: Console, table: Table) -> list[tuple[int, int]]:
    """Each column's (least, most) content width: the least keeps every word whole (every line
    of a column that does not wrap); a column with a set width is that width."""
    wide = out.options.update_width(10_000)
    sizes = []
    for column in table.columns:
        if column.width is not None:
            sizes.append((column.width, column.width))
            continue
        cells = list(column.cells)
        if table.show_header:
            cells.append(column.header)
        if table.show_footer:
            cells.append(column.footer)
        least = most = 0
        for cell in cells:
            measured = Measurement.get(out, wide, cell)
            least, most = max(least, measured.minimum), max(most, measured.maximum)
        if column.no_wrap:
            least = most
        least = max(least, column.min_width or 0)
        sizes.append((least, max(least, most)))
    return sizes


def print_table(out: Console, table: Table, **options: Any) -> None:
    """Print ``table`` whole: no id, mechanism or hex number cut ("…") or folded at any width.
    Rich lays the table out; only where that would leave a column narrower than its longest
    word (or a column that does not wrap narrower than its longest line) is the column widened,
    the width taken from the columns with the most to spare.  When even that cannot fit (a
    60-column terminal), the table is printed as wide as it needs and the terminal wraps it,
    rather than cut."""
    sizes = _measure(out, table)
    count = len(table.columns)
    pads = [table._get_padding_width(i) for i in range(count)]
    room = out.width - table._extra_width - sum(pads)
    least = [low for low, _ in sizes]
    # Rich's own layout (Table.__rich_console__: the screen less the borders), with padding.
    screen = table.width if table.width is not None else out.width
    laid = table._calculate_column_widths(
        out, out.options.update_width(screen - table._extra_width)
    )
    if len(laid) != count or all(w - p >= low for w, p, low in zip(laid, pads, least)):  # noqa: B905
        Console.print(out, table, **options)
        return
    for column in table.columns:
        if column.overflow == "ellipsis" and not column.no_wrap:
            column.overflow = "fold"
    if sum(least) > room:  # cannot fit: as wide as it needs
        widths = least
    else:
        widths = [max(w - p, low) for w, p, low in zip(laid, pads, least, strict=True)]
        while sum(widths) > room:
            spare = [w - low for w, low in zip(widths, least, strict=True)]
            widths[spare.index(max(spare))] -= 1
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
    need = sum(widths) + sum(pads) + table._extra_width
    if need <= out.width:
        Console.print(out, table, **options)
        return
    saved = out._width
    out.width = need
    try:
        Console.print(out, table, **{**options, "crop": False})
    finally:
        out._width = saved


def _share(least: list[int], most: list[int], room: int) -> list[int]:
    """Widths from ``least``, the room left shared out evenly toward ``most``."""
    widths = list(least)
    spare = room - sum(widths)
    while spare > 0:
        hungry = [i for i, w in enumerate(widths) if w < most[i]]
        if not hungry:
            break
        share = max(spare // len(hungry), 1)
        for i in hungry:
            grow = min(share, most[i] - widths[i], spare)
            widths[i] += grow
            spare -= grow
    return widths


class Screen(Console):
    """vbsim's console: every table printed with :func:`print_table` (whole, never cut)."""

    def print(self, *objects: Any, **options: Any) -> None:
        if not any(isinstance(o, Table) for o in objects):
            super().print(*objects, **options)
            return
        for item in objects:
            if isinstance(item, Table):
                print_table(self, item, **options)
            else:
                super().print(item, **options)


def console() -> Console:
    return Screen(highlight=False)


def error_line(message: str) -> None:
    """One line on stderr, ``error: ...``: the user's text never read as markup, and its control
    characters shown (``\\x1b``), whatever joined it into the message."""
    from rich.console import Console

    from vbsim.text import visible

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"error: {visible(message)}", markup=False
    )


@contextlib.contextmanager
def progress_bar(what: str, total: int, show: bool) -> Iterator[Callable[[str], None]]:
    """A bar on stderr for long work (``advance(label)`` once per item); nothing when ``show``
    is false (``--json``) or stderr is not a terminal, so pipes and logs stay clean."""
    import sys

    if not show or not sys.stderr.isatty():
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(what, total=total, label="")
    with bar:
        yield lambda label: bar.update(task, advance=1, label=label)
