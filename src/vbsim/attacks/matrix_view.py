"""The access matrix for a terminal: a 4x4 table that fits 100 columns, and a key under it.

Each cell has one short line per operation (``R``/``W``/``X``/``C``) with what the probe observed
and, for a refusal or a call, the deciding mechanism; user rows add a ``+PTE`` line for the probe
through a mapping their own kernel granted.  A mechanism too long for the column is never cut: it
becomes a numbered note (``[1]``) spelled out in full in the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.markup import escape
from rich.table import Table

from vbsim.attacks.matrix import ACCESS_OPS, AREAS, OPS, Cell

#: The longest cell line that fits a target column at 100 terminal columns: a boxed table of 5
#: columns without edge padding spends 14 columns on borders and padding and 6 on the row
#: header ("kernel"), leaving 4 x 20.
LINE_WIDTH = 20
_SHORT = {"read": "R", "write": "W", "execute": "X", "call": "C"}
_WORD = {"allowed": "yes", "blocked": "no", "-": "-"}
_STYLE = {"allowed": "red", "blocked": "green", "-": "dim"}

#: What the mechanism names in the trace mean (vocabulary, for the key; not verdicts).
MEANING: dict[str, str] = {
    "slat": "the VTL's second-level translation (SLAT) refuses the access",
    "slat.walk": "SLAT refuses the page-table walk itself",
    "paging.us": "the page is supervisor-only and the access is from CPL3",
    "paging.p": "nothing is mapped at that address in the prober's own tables",
    "paging.rw": "the page is read-only for CPL3",
    "paging.wp": "the page is read-only (CR0.WP)",
    "paging.nx": "the page is not executable (NX)",
    "smep": "CPL0 may not execute a user page (SMEP)",
    "smap": "CPL0 may not touch a user page outside STAC/CLAC (SMAP)",
    "cpl:#UD": "a hypercall (VTL call/return) from CPL3 raises #UD",
    "syscall": "NT's system-call dispatcher served the call",
    "secure-syscall": "the Secure Kernel's secure service table served the call",
    "secure-call": "the Secure Kernel's secure-call dispatcher served NT's call",
    "normal-call": "NT served the Secure Kernel's normal call and its answer came back",
    "sysret": "the kernel entered the user code, which ran at CPL3 and returned",
    "nt-dispatch": "NT's system-call dispatcher refused the service",
    "no gate": "no instruction transfers control between these two areas",
    "no VTL1": "the machine runs without VTL1",
}


@dataclass
class Key:
    """Notes for mechanisms too long for a cell, and the mechanisms the table shows."""

    notes: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)

    def label(self, mechanism: str, room: int) -> str:
        if mechanism not in self.shown:
            self.shown.append(mechanism)
        if len(mechanism) <= room:
            return mechanism
        if mechanism not in self.notes:
            self.notes.append(mechanism)
        return f"[{self.notes.index(mechanism) + 1}]"


def _line(head: str, result: str, mechanism: str, key: Key, show: bool) -> str:
    text = f"{head} {_WORD.get(result, result)}"
    if show and result != "-":
        text += " " + key.label(mechanism, LINE_WIDTH - len(text) - 1)
    return f"[{_STYLE.get(result, 'dim')}]{escape(text)}[/]"


def cell_text(cell: Cell, key: Key | None = None) -> str:
    key = key or Key()
    lines = []
    for op in OPS:
        result = cell.results.get(op, "-")
        # Refusals name what refused; an allowed call names its gate; an allowed access is
        # just "yes" (the JSON keeps its translation).
        show = result == "blocked" or (op == "call" and result == "allowed")
        lines.append(_line(_SHORT[op], result, cell.mechanisms.get(op, "-"), key, show))
    groups: dict[tuple[str, str], list[str]] = {}
    for op in ACCESS_OPS:
        if op in cell.granted:
            entry = (cell.granted[op], cell.granted_mechanisms.get(op, "-"))
            groups.setdefault(entry, []).append(_SHORT[op])
    for (result, mechanism), ops in groups.items():
        lines.append(_line("+PTE " + "".join(ops), result, mechanism, key, result == "blocked"))
    return "\n".join(lines)


def matrix_table(cells: list[Cell], preset_name: str, key: Key | None = None) -> Table:
    """The table; ``key`` (if given) collects the notes and mechanisms for :func:`matrix_key`."""
    key = key if key is not None else Key()
    table = Table(
        title=f"access matrix, preset {escape(preset_name)}: row = who acts, column = whose "
        "memory / code",
        header_style="bold",
        show_lines=True,
        pad_edge=False,
    )
    table.add_column("", style="bold", overflow="fold")
    for area in AREAS:
        table.add_column(area, overflow="fold")
    by = {(c.source, c.target): c for c in cells}
    for source in AREAS:
        row = [cell_text(by[(source, target)], key) for target in AREAS if (source, target) in by]
        table.add_row(source.replace(" ", "\n"), *row)
    return table


def matrix_key(key: Key) -> list[str]:
    """Lines of prose under the table: the abbreviations, then every mechanism shown."""
    lines = [
        "R read, W write, X execute (the target's code ran in the prober's mode), C call "
        "through a gate; +PTE: the same through a page-table entry the prober's own kernel "
        "built for it on purpose (NT for the process, the Secure Kernel for the trustlet). "
        "yes/no: what the probe observed; -: no such gate, or no VTL1."
    ]
    meanings = []
    for mechanism in key.shown:
        base = mechanism.split(":", 1)[0] if mechanism not in MEANING else mechanism
        meaning = MEANING.get(base)
        if meaning is not None and mechanism not in key.notes:
            meanings.append(f"{mechanism}: {meaning}")
    if meanings:
        lines.append("Deciding mechanisms (from the trace): " + "; ".join(meanings) + ".")
    for number, mechanism in enumerate(key.notes, 1):
        base = mechanism.split(":", 1)[0]
        meaning = MEANING.get(base)
        lines.append(f"[{number}] {mechanism}" + (f" ({meaning})" if meaning else ""))
    return [escape(line) for line in lines]
