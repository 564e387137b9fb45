"""Guest code as bytes in RAM.

Until a native x86-64 CPU exists, guest routines are Python callables.  What makes them *guest*
code is that they live at guest addresses: a routine is reachable only through a 32-byte
*thunk* stored in guest RAM at the routine's address.  The thunk starts with ``0F 3F``, a
two-byte opcode that is undefined on x86-64 (it raises #UD on real hardware, in the spirit of
the ``0F 0B`` UD2 escape emulators use), followed by a magic tag and a digest of the routine's
registered name.  Executing an address means: fetch through the processor's translation
(paging then SLAT, with the execute checks: NX, SMEP, KX/UX), read the thunk bytes from RAM,
and run the routine registered under that digest.

Consequences that the model relies on:
- code identity is in RAM bytes, so image signatures and page hashes cover it;
- writing a thunk into a data page gives nothing unless that page may be executed (HVCI);
- an attacker can only run routines that exist in the registry (its own payloads included),
  exactly as real shellcode can only do what its bytes encode.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FunctionType
from typing import Any

THUNK_SIZE = 32
#: ``0F 3F`` is an undefined opcode on x86-64 (Intel SDM Vol. 2, opcode map table A-3: row 0F,
#: column 3F is blank), followed by the ASCII tag "VBSM" and a format version byte.
THUNK_MAGIC = b"\x0f\x3fVBSM\x01"
_DIGEST_SIZE = THUNK_SIZE - len(THUNK_MAGIC) - 1

GuestRoutine = Callable[..., Any]

_registry: dict[bytes, tuple[str, GuestRoutine]] = {}
#: Thunks of routines that carry a breakpoint (:func:`register` with ``breakpoint=True``): they
#: are kept out of ``_registry``, which the processor's fast call path reads, so that every
#: execution of one goes through :meth:`VirtualProcessor.fetch`, which records it on the trace
#: (``Trace.executions``).  A host-side debugger's breakpoint, in effect: the routine's own code
#: cannot record or forge it, and calling its Python function directly is not an execution.
_breakpoints: dict[bytes, tuple[str, GuestRoutine]] = {}
#: Positional arguments each routine takes after the VP (None: any number), for the routines
#: registered now.  ``_uses`` counts the thunks naming each one, so that a routine replaced at
#: every boot (kernels register fresh closures) leaves with its last thunk: otherwise the table
#: would keep every boot's closures, and whatever they captured, alive.
_arity: dict[GuestRoutine, int | None] = {}
_uses: dict[GuestRoutine, int] = {}


class CodeRelinked(RuntimeError):
    """A routine's name was bound to different code outside a loader's linking window: what
    thunks already in RAM run may change only while images are being built (a third audit had
    a K0 step re-link NT's system-call entry for every later boot in the process)."""


#: Depth of :func:`linking` windows open now (the boot chain's loaders build images in one).
_linking = 0


@contextmanager
def linking() -> Iterator[None]:
    """A loader's window in which kernels (re)bind their routines' names to fresh code, as a boot
    builds each image anew.  Outside it a name keeps the code it has; new names may still be
    registered (an attacker's own code is new bytes, not a change to NT's)."""
    global _linking
    _linking += 1
    try:
        yield
    finally:
        _linking -= 1


def encode_thunk(name: str) -> bytes:
    """The 32 bytes that stand for routine ``name`` in guest memory."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()[:_DIGEST_SIZE]
    return THUNK_MAGIC + digest + b"\xc3"  # trailing RET, as a real thunk would end


def register(name: str, routine: GuestRoutine, *, breakpoint: bool = False) -> bytes:
    """Register ``routine`` as the code for ``name``; returns its thunk bytes.  With
    ``breakpoint``, the platform records every execution of it (see ``_breakpoints``)."""
    thunk = encode_thunk(name)
    existing = _registry.get(thunk) or _breakpoints.get(thunk)
    if existing is not None and existing[1] is not routine and existing[0] != name:
        raise ValueError(f"thunk collision between {existing[0]!r} and {name!r}")
    relinked = existing is not None and existing[1] is not routine and not _linking
    if relinked and existing is not None and not _same_code(existing[1], routine):
        raise CodeRelinked(f"routine {name!r} is already linked (outside a loader's window)")
    (_breakpoints if breakpoint else _registry)[thunk] = (name, routine)
    (_registry if breakpoint else _breakpoints).pop(thunk, None)
    previous = existing[1] if existing is not None else None
    if previous is not routine:
        if previous is not None:
            _release(previous)
        _uses[routine] = _uses.get(routine, 0) + 1
    _arity[routine] = _positional_arity(routine)
    return thunk


def _same_code(old: GuestRoutine, new: GuestRoutine) -> bool:
    """``new`` is ``old`` compiled again: the same source location, and closures and defaults
    holding the very same objects (a module imported under a second name, as a test harness may).
    A wrapper around different code (``_service_routine(evil)``) differs in its closure."""
    if type(old) is not FunctionType or type(new) is not FunctionType:
        return False
    a, b = old.__code__, new.__code__
    if (a.co_filename, a.co_firstlineno, a.co_qualname) != (
        b.co_filename,
        b.co_firstlineno,
        b.co_qualname,
    ):
        return False
    cells_a = [c.cell_contents for c in old.__closure__ or ()]
    cells_b = [c.cell_contents for c in new.__closure__ or ()]
    return (
        len(cells_a) == len(cells_b)
        and all(x is y for x, y in zip(cells_a, cells_b, strict=True))
        and old.__defaults__ == new.__defaults__
        and old.__kwdefaults__ == new.__kwdefaults__
    )


def _release(routine: GuestRoutine) -> None:
    left = _uses.get(routine, 1) - 1
    if left > 0:
        _uses[routine] = left
    else:
        _uses.pop(routine, None)
        _arity.pop(routine, None)


#: Arity by code object, for plain functions: kernels register fresh closures over the same
#: code on every boot (service wrappers), and inspect.signature is slow.
_ARITY_BY_CODE: dict[CodeType, int | None] = {}


def _positional_arity(routine: GuestRoutine) -> int | None:
    if (
        type(routine) is FunctionType
        and not hasattr(routine, "__wrapped__")
        and not hasattr(routine, "__signature__")
    ):
        code_ = routine.__code__
        if code_ not in _ARITY_BY_CODE:
            _ARITY_BY_CODE[code_] = _signature_arity(routine)
        return _ARITY_BY_CODE[code_]
    return _signature_arity(routine)


def _signature_arity(routine: GuestRoutine) -> int | None:
    try:
        parameters = list(inspect.signature(routine).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return max(0, len(positional) - 1)  # minus the VP


def fit_arguments(routine: GuestRoutine, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a routine finds in its argument registers: the values the transfer supplied, zeros
    where it supplied none, and nothing of what it does not read.  A control transfer to code that
    expects another calling convention runs it with whatever the registers hold — it never fails
    in the transfer itself."""
    arity = _arity.get(routine)
    if arity is None or arity == len(args):
        return args
    if arity < len(args):
        return args[:arity]
    return args + (0,) * (arity - len(args))


def guest_code(name: str, *, breakpoint: bool = False) -> Callable[[GuestRoutine], GuestRoutine]:
    """Decorator form of :func:`register`."""

    def wrap(routine: GuestRoutine) -> GuestRoutine:
        register(name, routine, breakpoint=breakpoint)
        return routine

    return wrap


def decode_thunk(raw: bytes) -> tuple[str, GuestRoutine] | None:
    """The routine whose thunk is ``raw`` (exactly THUNK_SIZE bytes), or None (#UD)."""
    key = bytes(raw)
    return _registry.get(key) or _breakpoints.get(key)


def has_breakpoint(raw: bytes) -> bool:
    """Whether the routine whose thunk is ``raw`` carries a breakpoint."""
    return bytes(raw) in _breakpoints


def name_of(raw: bytes) -> str | None:
    entry = decode_thunk(raw)
    return entry[0] if entry else None
