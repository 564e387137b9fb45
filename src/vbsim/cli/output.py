"""Writing a file the user named (``-o``): checked first, written atomically, through symlinks.

A symlink is written through (its target is replaced, the link stays); a directory, device, FIFO
or socket is refused (``report -o /dev/full`` once replaced the device node with an HTML file);
a missing or read-only directory is named.  The data goes to a temporary file next to the target
and replaces it in one ``os.replace``, so a half-written file never replaces a good one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vbsim.text import visible


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
