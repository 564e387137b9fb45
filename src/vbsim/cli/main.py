"""``vbsim``: boot, run, attack and watch a model of Windows VBS.

This module is the console entry and stays small: it imports nothing heavy at the top, so a
Ctrl-C during the start-up imports (typer, rich, the model; about 0.4 s) ends with exit 130 and
no traceback.  The commands live in :mod:`vbsim.cli.commands` (``app`` is re-exported here).
Exit codes: :mod:`vbsim.cli.errors`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, TextIO, cast


def __getattr__(name: str) -> Any:
    """``app`` and ``HELP_ORDER``, imported on first use (see the module's docstring)."""
    if name in ("app", "HELP_ORDER"):
        from vbsim.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StdoutError(Exception):
    """Writing to stdout failed (``> /dev/full``, a closed pipe).  Not an OSError, so neither
    Click's own broken-pipe handling nor a command's ``except OSError`` takes it for an error
    about a file the user named."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.errno = error.errno
        self.strerror = error.strerror or str(error)


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a failed write or flush raises :class:`StdoutError`;
    a lone surrogate (a byte of a non-UTF-8 file name or argument, as Python decodes it) is
    written as ``\\xNN``, never as that raw byte (invalid UTF-8) or a UnicodeEncodeError;
    everything else is the real stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            from vbsim.cli.output import clean_text

            text = clean_text(text)
        try:
            return self._stream.write(text)
        except OSError as error:
            raise StdoutError(error) from error

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            raise StdoutError(error) from error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence(stream: TextIO) -> None:
    """Point a failed stdout at /dev/null, so the interpreter's last flush stays quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no descriptor (a test's capture), or already closed
        pass


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C held back until the block ends, then raised (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class _DeferringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        with _interrupts_deferred():
            return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _interrupts_deferred():
            self._loader.exec_module(module)


class _DeferInterruptsOnImport(importlib.abc.MetaPathFinder):
    """Import LIEF with Ctrl-C held back: a KeyboardInterrupt raised while its C++ module
    initialises (half a second, the first time) aborts the process (nanobind's
    ``terminate called after throwing``, exit -6) instead of ending the command."""

    NAMES = frozenset({"lief"})

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.NAMES:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferringLoader(spec.loader)
        return spec


def _click_exceptions() -> list[Any]:
    """Click's exception modules: Click's own, and the copy newer Typer versions vendor."""
    import importlib

    modules = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _message(error: BaseException) -> str:
    format_message = getattr(error, "format_message", None)
    return str(format_message() if callable(format_message) else error)


def _classes(modules: list[Any], name: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(m, name) for m in modules if hasattr(m, name))


def _tolerate_narrow_encodings() -> None:
    """With PYTHONIOENCODING=ascii (or a latin-1 terminal) a character the encoding lacks
    (§, →, box drawing) prints as '?' instead of ending the command with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        reconfigure = getattr(stream, "reconfigure", None)
        if encoding != "utf8" and callable(reconfigure):
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # a stream that cannot change (closed, detached)
                continue


def run_app(app: Any, args: list[str], prog_name: str) -> int:
    """Run a Typer app as ``vbsim`` runs its commands: usage errors are one line on stderr
    (exit 2), as every vbsim error is, instead of Click's boxed usage panel; a
    refusal (:func:`~vbsim.cli.errors.refuse`) keeps its code; with ``--json`` each error is
    the JSON error object on stdout too; a refused boot or a failed check keeps its own code."""
    from vbsim.cli.errors import EXIT_INTERRUPTED, report_error

    modules = _click_exceptions()
    no_args = _classes(modules, "NoArgsIsHelpError")
    usage = _classes(modules, "UsageError")
    other = _classes(modules, "ClickException")
    aborted = _classes(modules, "Abort")
    as_json = "--json" in args

    def refuse(message: str, code: int) -> int:
        return report_error(message, code, as_json)

    try:
        code = app(args=args, prog_name=prog_name, standalone_mode=False)
    except no_args as error:
        ctx = getattr(error, "ctx", None)
        if ctx is not None:
            print(ctx.get_help())
        return 2
    except usage as error:
        ctx = getattr(error, "ctx", None)
        where = ctx.command_path if ctx is not None else prog_name
        return refuse(f"{_message(error)} (see '{where} --help')", 2)
    except other as error:
        return refuse(_message(error), int(getattr(error, "exit_code", 1)))
    except aborted:
        return EXIT_INTERRUPTED
    except (StdoutError, KeyboardInterrupt):
        raise
    except Exception as error:
        # A vbsim bug: one line, not a traceback (VBSIM_DEBUG=1 shows the traceback).
        import os

        if os.environ.get("VBSIM_DEBUG"):
            raise
        from vbsim.cli.errors import EXIT_USAGE, data_dir_problem
        from vbsim.cli.image_cmd import internal_error

        problem = data_dir_problem(error)
        if problem is not None:  # not a bug: the user's data directory
            return refuse(problem, EXIT_USAGE)
        return refuse(internal_error(error) + " (VBSIM_DEBUG=1 shows the traceback)", 1)
    return code if isinstance(code, int) else 0


def guarded(run: Any) -> int:
    """``run()`` with stdout guarded: stdout that cannot be written (``> /dev/full``) is one
    line on stderr and exit 1; a closed pipe (``| head``) ends quietly with 141; Ctrl-C is 130."""
    from vbsim.cli.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED

    original = sys.stdout
    sys.stdout = cast(TextIO, _GuardedStdout(original))
    try:
        code = int(run())
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except StdoutError as error:
        import errno

        _silence(original)
        if error.errno == errno.EPIPE:
            return EXIT_BROKEN_PIPE
        from vbsim.cli.render import error_line

        error_line(f"stdout cannot be written ({error.strerror})")
        return EXIT_FAILED
    finally:
        sys.stdout = original


def main(argv: list[str] | None = None) -> int:
    """The console entry (see :func:`run_app`, :func:`guarded`)."""
    finder = _DeferInterruptsOnImport()
    sys.meta_path.insert(0, finder)
    try:
        _tolerate_narrow_encodings()
        args = list(sys.argv[1:] if argv is None else argv)

        def run() -> int:
            from vbsim.cli.commands import app

            return run_app(app, args, "vbsim")

        return guarded(run)
    except KeyboardInterrupt:  # before the guard is up
        return 130
    finally:
        sys.meta_path.remove(finder)


def _entry() -> None:  # pragma: no cover - the console script
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
