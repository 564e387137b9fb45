"""The access matrix as a 4x4 rich table: each cell R/W/X/call with the deciding check."""

from __future__ import annotations

from rich.table import Table

from vbsim.attacks.matrix import AREAS, OPS, Cell

_SYMBOL = {"allowed": "[green]yes[/]", "blocked": "[red]no[/]", "-": "[dim]-[/]"}
_SHORT = {"read": "R", "write": "W", "execute": "X", "call": "call"}


def cell_text(cell: Cell) -> str:
    lines = []
    for op in OPS:
        result = cell.results[op]
        text = f"{_SHORT[op]}: {_SYMBOL.get(result, result)}"
        if result == "blocked":
            text += f" [dim]({cell.mechanisms[op]})[/]"
        lines.append(text)
    return "\n".join(lines)


def matrix_table(cells: list[Cell], preset_name: str) -> Table:
    table = Table(
        title=f"access matrix, preset {preset_name}: row = who acts, column = whose memory / code",
        header_style="bold",
        show_lines=True,
    )
    table.add_column("from \\ to", style="bold")
    for area in AREAS:
        table.add_column(area)
    by = {(c.source, c.target): c for c in cells}
    for source in AREAS:
        table.add_row(source, *(cell_text(by[(source, target)]) for target in AREAS))
    return table
