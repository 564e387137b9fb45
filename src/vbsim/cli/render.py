"""Rendering traces for people (rich tables) and programs (JSON)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
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


def _fit(mins: list[int], wants: list[int], room: int) -> list[int]:
    """Column widths: each its minimum, then the room left shared out toward what each wants."""
    widths = list(mins)
    while sum(widths) > room and max(widths) > 8:  # too narrow a screen: the widest folds
        widths[widths.index(max(widths))] -= 1
    spare = room - sum(widths)
    while spare > 0:
        hungry = [i for i, w in enumerate(widths) if w < wants[i]]
        if not hungry:
            break
        share = max(spare // len(hungry), 1)
        for i in hungry:
            grow = min(share, wants[i] - widths[i], spare)
            widths[i] += grow
            spare -= grow
    return widths


def trace_table(events: list[Event], title: str, width: int | None = None) -> Table:
    """The trace, one event a row, fitting 80 columns without cutting a mechanism, an outcome,
    a name or a hex number: the check and its outcome share a column, and every column is at
    least as wide as its longest word (they wrap at spaces, never inside a word; only a word
    longer than 30 characters folds)."""

    def longest(texts: list[str], floor: int, cap: int = 30) -> int:
        return min(cap, max([floor, *(len(word) for text in texts for word in text.split())]))

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
    widths = _fit([longest(c, 8) for c in columns], [widest(c, 8) for c in columns], max(room, 30))
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
            escape(detail),
        )
    return table


def console() -> Console:
    return Console(highlight=False)


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
