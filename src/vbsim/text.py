"""User text made safe for a terminal: shared by every package that prints (cli, boot, report).

Text that comes from a user or a file (policy descriptions, file names, certificate fields,
strings from an image) reaches rich only through :func:`safe`: markup is escaped, so ``[/]`` in a
name prints as itself, and control characters are shown as ``\\xNN``, so an ESC cannot drive the
terminal.
"""

from __future__ import annotations

import re

from rich.markup import escape

#: C0 controls, DEL and C1 controls: never sent raw to a terminal (an ESC from a certificate's
#: subject or a file name could drive it).  Tab and newline are shown too: one field, one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: object) -> str:
    """``text`` with every control character shown as ``\\xNN`` (safe for a terminal)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def safe(text: object) -> str:
    """User text for rich markup: control characters visible, markup escaped."""
    return escape(visible(text))


def path_text(path: object) -> str:
    """A file name as text for JSON and messages: bytes that are not UTF-8 (a name Python
    decoded with surrogate escapes) as ``\\xNN``, never a lone surrogate JSON cannot carry."""
    import os

    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def shell_word(path: object) -> str:
    """A path quoted for a shell command line to copy (spaces, ``$``), shown :func:`visible`."""
    import shlex

    return visible(shlex.quote(path_text(path)))
