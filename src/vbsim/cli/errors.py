"""How every vbsim command refuses: one line on stderr, and with ``--json`` the same error as a
JSON object on stdout, ``{"ok": false, "error": "...", "exit_code": N}``.

Exit codes, the same for every command:

- 0: done, and every check passed;
- 1: a check failed (an attack's outcome differs from the record, a fuzz finding, a soak
  violation, a signature that does not verify, a trustlet the SK refused), or a vbsim bug
  (reported on one line; ``VBSIM_DEBUG=1`` shows the traceback), or stdout cannot be written;
- 2: bad input (usage, an unknown name, a file that cannot be read or written, a bad data
  directory);
- 3: the machine refused to boot (``vbsim boot``: the boot chain halted);
- 130: interrupted (Ctrl-C); 141: stdout was closed (a broken pipe), quietly, as other tools do.
"""

from __future__ import annotations

from typing import Any, NoReturn

#: The exit codes above, by name.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BOOT_REFUSED = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


def json_requested() -> bool:
    """Whether the running command was given ``--json`` (its ``as_json`` parameter)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older Typer, on Click itself
        from click.globals import get_current_context  # type: ignore[no-redef,unused-ignore]

    ctx = get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def given(ctx: Any, name: str) -> bool:
    """Whether the parameter ``name`` of the running command came from the command line."""
    source = ctx.get_parameter_source(name)
    return source is not None and getattr(source, "name", "") == "COMMANDLINE"


def refuse(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Refuse: one line on stderr, the JSON error object on stdout if the command was given
    ``--json``, and exit with ``code``.  Works under ``vbsim`` and on a command mounted alone."""
    import typer

    report_error(message, code, json_requested())
    raise typer.Exit(code)


def data_dir_problem(error: BaseException | None = None) -> str | None:
    """What is wrong with vbsim's data directory (``$VBSIM_DATA_DIR``, else
    ``~/.local/share/vbsim``), on one line naming it; None when nothing is.  With ``error`` (an
    exception a command ended with), also a model PKI there that cannot be loaded."""
    import os
    from pathlib import Path

    from vbsim.text import visible

    try:
        from vbsim.image import PkiError, data_dir

        path = Path(data_dir()).expanduser()
    except Exception:
        return None
    source = "VBSIM_DATA_DIR" if os.environ.get("VBSIM_DATA_DIR") else "vbsim's data directory"
    name = f"data directory {visible(repr(str(path)))} ({source})"
    probe = path
    while not probe.exists() and probe.parent != probe:  # where it will be made
        probe = probe.parent
    if not probe.is_dir():
        shown = "it" if probe == path else visible(repr(str(probe)))
        return f"{name} cannot be used: {shown} is not a directory"
    if probe != path and not os.access(probe, os.W_OK | os.X_OK):
        return f"{name} cannot be created: {visible(repr(str(probe)))} is not writable"
    if isinstance(error, PkiError):
        return f"{name}: the model PKI cannot be used: {error}"
    return None


def error_object(message: str, code: int) -> dict[str, Any]:
    """The one JSON form of an error (``--json``)."""
    return {"ok": False, "error": message, "exit_code": code}


def report_error(message: str, code: int, as_json: bool) -> int:
    """Print a refusal: JSON on stdout with ``as_json``, and always one line on stderr."""
    from vbsim.cli.output import json_text
    from vbsim.cli.render import error_line
    from vbsim.text import visible

    if as_json:
        print(json_text(error_object(visible(message), code)))
    error_line(message)
    return code
