"""What a command writes: a file the user named (``-o``), checked first and written atomically
through symlinks; and JSON on stdout (``--json``), through one encoder that never fails on text.

A symlink is written through (its target is replaced, the link stays); a directory, device, FIFO
or socket is refused (``report -o /dev/full`` once replaced the device node with an HTML file);
a missing or read-only directory is named.  The data goes to a temporary file next to the target
and replaces it in one ``os.replace``, so a half-written file never replaces a good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vbsim.text import path_text, visible


class OutputError(ValueError):
    """The output path cannot be written; the message names it and why, on one line."""


def check_output(output: Path, example: str) -> Path:
    """The file to write (a symlink resolved to its target); :class:`OutputError` otherwise."""
    name = visible(repr(str(output)))
    if output.is_symlink():
        output = output.resolve()
    if output.exists() and output.is_dir():
        raise OutputError(f"output {name} is a directory; give a file name, e.g. {example}")
    if output.exists() and not output.is_file():
        raise OutputError(f"output {name} is not a regular file (a device, FIFO or socket)")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output {name}: directory {visible(repr(str(parent)))} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output {name}: directory {visible(repr(str(parent)))} is not writable")
    return output


def write_atomically(output: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``output`` (checked by :func:`check_output`); OSError on failure."""
    parent = output.parent if str(output.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=".vbsim-", suffix=output.suffix, dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode)
        os.replace(temp, output)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def path_arg(text: str) -> Path:
    """A path on the command line (Typer's ``parser=``): an empty one is refused on one line.
    Typer would turn ``''`` into ``Path('.')``, so ``-o ''`` named the current directory and
    ``--resume ''`` resumed whatever campaign was there."""
    if text == "":
        import typer

        raise typer.BadParameter("the path is empty; give a file or directory name")
    return Path(text)


def clean_text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (bytes of a file name or argument that were
    not UTF-8, decoded by Python with surrogate escapes) becomes ``\\xNN``, as
    :func:`vbsim.text.path_text` shows it, instead of breaking the encoder or stdout."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no escaped byte makes (\ud800)
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: _cleaned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cleaned(item) for item in value]
    if isinstance(value, Path):
        return path_text(value)
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """The one JSON encoder of ``--json`` output: every string valid Unicode (see
    :func:`clean_text`), a path as its text, ASCII out (so any stdout encoding carries it)."""
    return json.dumps(_cleaned(value), indent=indent)


def print_json(value: Any, indent: int | None = None) -> None:
    """Print ``value`` as :func:`json_text` on stdout."""
    print(json_text(value, indent))
