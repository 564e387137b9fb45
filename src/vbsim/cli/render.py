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
    if isinstance(value, int) and not isinstance(value, bool) and value > 9:
        return f"0x{value:x}"
    return str(value)


def describe_detail(detail: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in detail.items() if v is not None)


def who(event: Event) -> str:
    if event.vtl is None:
        return event.actor or "-"
    ring = {0: "kernel", 3: "user"}.get(event.cpl or 0, f"ring {event.cpl}")
    label = f"VP{event.vp} VTL{event.vtl} {ring}"
    return f"{label} ({event.actor})" if event.actor else label


def trace_table(events: list[Event], title: str) -> Table:
    """The trace, one event a row.  The check and the outcome are never cut (their columns are
    as wide as their longest value); who and details wrap at spaces."""
    table = Table(title=title, show_lines=False, header_style="bold")
    check = max([5, *(len(e.mechanism) for e in events), *(len(e.kind) for e in events)])
    outcome = max([7, *(len(e.outcome) for e in events)])
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("who (VP, VTL, ring)", ratio=1, min_width=10)
    table.add_column("check / what", no_wrap=True, min_width=check)
    table.add_column("outcome", no_wrap=True, min_width=outcome)
    table.add_column("details", overflow="fold", ratio=2, min_width=14)
    for event in events:
        style = _OUTCOME_STYLE.get(event.outcome, "")
        table.add_row(
            str(event.seq),
            escape(who(event)),
            f"[bold]{escape(event.mechanism)}[/]\n[dim]{escape(event.kind)}[/]",
            f"[{style}]{escape(event.outcome)}[/]" if style else escape(event.outcome),
            escape(describe_detail(event.detail)),
        )
    return table


def console() -> Console:
    return Console(highlight=False)


def error_line(message: str) -> None:
    """One line on stderr, ``error: ...``, the user's text never read as markup."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {message}", markup=False)


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
