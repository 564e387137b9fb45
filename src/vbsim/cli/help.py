"""``--help`` for every vbsim command: flags without a value, options with a plain metavar.

Typer's own rich help (0.2x with its vendored Click) prints a type for every parameter, flags
included (``--json <bool>``, ``--repeat <int range>``, ``--only <list[str]>``), and squeezes five
columns into the panel so long names are cut (``--no-include-known-b…``).  This renderer keeps
the panels but shows what a user types: a flag alone, an option with a metavar (``INTEGER``,
``TEXT``, ``PATH``, or the name the command gives it, e.g. ``NAME``), the range and the default
after the help, and arguments in upper case in the usage line.  :func:`install` puts it on every
command of a :class:`typer.Typer` tree.
"""

from __future__ import annotations

import datetime
import enum
import inspect
import io
import pathlib
import shutil
import sys
from typing import Any, get_args, get_origin

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

#: Metavars by annotation, as Click names its types.
_TYPE_NAMES: dict[type, str] = {
    int: "INTEGER",
    float: "FLOAT",
    str: "TEXT",
    bool: "BOOLEAN",
    pathlib.Path: "PATH",
    datetime.datetime: "DATETIME",
}
#: The widest help vbsim prints: long lines are hard to read, whatever the terminal.
MAX_WIDTH = 120


def _annotation(param: Any) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if get_origin(annotation) in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        annotation = args[0] if args else str
    return annotation


def is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False) or getattr(param, "count", False))


def metavar(param: Any) -> str:
    """What a user types after the option: nothing for a flag."""
    if param.param_type_name == "argument":
        return str(param.metavar or param.name).upper()
    if is_flag(param):
        return ""
    if param.metavar:
        return str(param.metavar)
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(descriptor, "choices", None) if descriptor is not None else None
    if choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    annotation = _annotation(param)
    if isinstance(annotation, type):
        for kind, name in _TYPE_NAMES.items():
            if issubclass(annotation, kind) and not (kind is int and annotation is bool):
                return name
        if issubclass(annotation, enum.Enum):
            return "|".join(str(m.value) for m in annotation)
    click_type = getattr(param, "type", None)  # Typer with upstream Click
    name = str(getattr(click_type, "name", "text")).upper().removesuffix(" RANGE")
    return name or "TEXT"


def _range(param: Any) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    if low is None:
        return f"at most {high}"
    if high is None:
        return f"at least {low}"
    return f"{low} to {high}"


def _default(param: Any, ctx: typer.Context) -> str | None:
    show = getattr(param, "show_default", False)
    if isinstance(show, str):
        return show
    if not show or getattr(param, "required", False):
        return None
    resilient, ctx.resilient_parsing = ctx.resilient_parsing, True
    try:
        value = param.get_default(ctx, call=False)
    finally:
        ctx.resilient_parsing = resilient
    if value is None or callable(value) or value == [] or value == ():
        return None
    if is_flag(param):
        # A flag off by default needs no note; one on by default names its negative form.
        if not value:
            return None
        return " ".join(getattr(param, "opts", [])) or "on"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _paragraphs(help_text: str | None) -> list[str]:
    """The help's paragraphs, each on one logical line (the docstring's breaks dropped; a
    paragraph starting with ``\\b`` keeps its lines), RST literals shown as plain quotes."""
    text = inspect.cleandoc(help_text or "").partition("\f")[0]
    paragraphs = []
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if not block:
            continue
        if block.startswith("\b"):
            block = block.removeprefix("\b").strip("\n")
        else:
            block = " ".join(line.strip() for line in block.splitlines())
        paragraphs.append(block.replace("``", "'"))
    return paragraphs


def _usage(command: Any, ctx: typer.Context) -> str:
    pieces = [ctx.command_path]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    if any(p.param_type_name == "option" for p in params):
        pieces.append("[OPTIONS]")
    for param in params:
        if param.param_type_name != "argument":
            continue
        name = metavar(param)
        name = name if param.required else f"[{name}]"
        pieces.append(name + ("..." if param.nargs != 1 else ""))
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _param_rows(params: list[Any], ctx: typer.Context) -> Table:
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(no_wrap=True, style="bold cyan")
    table.add_column(no_wrap=True, style="yellow")
    table.add_column(ratio=1, overflow="fold")
    for param in params:
        if param.param_type_name == "argument":
            names = metavar(param)
            shown = ""
        else:
            names = ", ".join([*param.opts, *param.secondary_opts])
            shown = metavar(param)
        extra = []
        default = _default(param, ctx)
        if default is not None:
            extra.append(f"default: {default}")
        bounds = _range(param)
        if bounds is not None:
            extra.append(bounds)
        if getattr(param, "required", False):
            extra.append("required")
        help_text = " ".join(_paragraphs(getattr(param, "help", None)))
        line = Text(help_text)
        if extra:
            line.append(("  " if help_text else "") + f"[{'; '.join(extra)}]", style="dim")
        table.add_row(names, shown, line)
    return table


def _command_rows(group: TyperGroup, ctx: typer.Context) -> Table:
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(no_wrap=True, style="bold cyan")
    table.add_column(ratio=1)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        short = command.short_help or (_paragraphs(command.help) or [""])[0]
        table.add_row(name, Text(short))
    return table


def render_help(command: Any, ctx: typer.Context, width: int | None = None) -> str:
    """The help page as text (with colour when stdout is a terminal)."""
    if width is None:
        width = min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH)
    buffer = io.StringIO()
    out = Console(
        file=buffer,
        width=width,
        force_terminal=sys.stdout.isatty(),
        highlight=False,
        markup=False,
        emoji=False,
    )
    out.print(Text("Usage: ", style="bold") + Text(_usage(command, ctx)))
    out.print()
    for paragraph in _paragraphs(command.help):
        out.print(Text(paragraph))
        out.print()
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    panels: list[Any] = []
    if arguments:
        panels.append(Panel(_param_rows(arguments, ctx), title="Arguments", title_align="left"))
    if options:
        panels.append(Panel(_param_rows(options, ctx), title="Options", title_align="left"))
    if isinstance(command, TyperGroup) and command.list_commands(ctx):
        panels.append(Panel(_command_rows(command, ctx), title="Commands", title_align="left"))
    out.print(Group(*panels))
    for paragraph in _paragraphs(getattr(command, "epilog", None)):
        out.print(Text(paragraph))
    return buffer.getvalue().rstrip("\n")


class HelpCommand(TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render_help(self, ctx) + "\n")


class HelpGroup(TyperGroup):
    #: The order ``--help`` lists the subcommands in (names not in it follow, as registered).
    #: Typer lists a group's commands before its sub-groups; this order mixes them.
    order: tuple[str, ...] = ()

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render_help(self, ctx) + "\n")

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


def install(app: typer.Typer) -> None:
    """Use :class:`HelpCommand` / :class:`HelpGroup` for every command of ``app``'s tree that
    does not name a class of its own (idempotent)."""
    if not isinstance(app.info.cls, type):  # None or Typer's DefaultPlaceholder
        app.info.cls = HelpGroup
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = HelpCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            install(group.typer_instance)
