"""Parsing sizes such as ``64M`` or ``4G`` (and plain counts such as ``--ram-mib 512``) with one
clear line naming what was wrong.

Only ASCII digits are a number here: Python's ``int()`` also takes ``'１２８'`` (fullwidth digits)
and ``'1_000'`` (an underscore), which nobody means as a size.  A size is a positive whole number
of bytes, optionally followed by K, M, G or T (powers of 1024, any case, optionally with ``B`` or
``iB``: ``64M``, ``64MB``, ``64MiB``, ``64m`` are the same), and a multiple of the 4 KiB page.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import typer

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: ASCII only (re.ASCII: ``[0-9]`` and the letters, case-folded without the Kelvin sign).
_SIZE = re.compile(r"([0-9]+)(?:([KMGT])(?:I?B)?|B)?", re.ASCII | re.IGNORECASE)
_COUNT = re.compile(r"[0-9]+", re.ASCII)
#: More digits than this is larger than any limit here (and stays clear of ``int()``'s
#: 4300-digit limit, which raises its own ValueError).
_MAX_DIGITS = 30
_PAGE = 4096
_FORM = "a number of bytes with an optional K, M, G or T suffix, e.g. 64M or 1G"


def size_text(size: int) -> str:
    """``size`` in the largest unit that divides it: ``64G``, ``1M``, ``4K``."""
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def parse_size(text: str, maximum: int | None = None, limit: str = "the model's maximum") -> int:
    """The bytes ``text`` names; ValueError (one line) for anything else, including a size
    above ``maximum`` (named as ``limit``)."""
    body = text.strip(" \t")
    if not body:
        raise ValueError(f"size {text!r} is empty; give {_FORM}")
    if body[0] in "-+" and _SIZE.fullmatch(body[1:]):
        sign = "negative" if body[0] == "-" else "signed"
        raise ValueError(f"size {text!r} is {sign}; give {_FORM}")
    match = _SIZE.fullmatch(body)
    if match is None:
        raise ValueError(f"size {text!r} is not {_FORM} (ASCII digits 0-9 only)")
    digits, unit = match.group(1), (match.group(2) or "").upper()
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        above = f" of {size_text(maximum)}" if maximum is not None else ""
        raise ValueError(f"size {text!r} is larger than {limit}{above}")
    value = int(digits) * _UNITS[unit]
    if value == 0:
        raise ValueError(f"size {text!r} is zero; a size is at least one 4K page")
    if value % _PAGE:
        raise ValueError(f"size {text!r} is not a multiple of 4K (the page size)")
    if maximum is not None and value > maximum:
        raise ValueError(f"size {text!r} is above {limit} of {size_text(maximum)}")
    return value


def parse_count(text: str, option: str) -> int:
    """A whole number written in ASCII digits (``--ram-mib 512``); ValueError naming ``option``
    otherwise (``'１２８'`` and ``'1_000'``, which ``int()`` takes, are refused)."""
    body = text.strip(" \t")
    if not body:
        raise ValueError(f"{option} {text!r} is empty; give a whole number, e.g. 512")
    if body[0] in "-+" and _COUNT.fullmatch(body[1:]):
        raise ValueError(f"{option} {text!r} is {'negative' if body[0] == '-' else 'signed'}")
    if not _COUNT.fullmatch(body):
        raise ValueError(f"{option} {text!r} is not a whole number (ASCII digits 0-9 only)")
    if len(body.lstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"{option} {text!r} is out of range (too many digits)")
    return int(body)


_SIGNED = re.compile(r"[-+]?[0-9]+", re.ASCII)


def whole_number(
    minimum: int | None = None, maximum: int | None = None
) -> Callable[[str | int], int]:
    """A Typer ``parser`` for an integer option: ASCII digits only (with a sign where the option
    has no minimum), within ``minimum``..``maximum``.  Typer's own ``int`` takes ``'１'`` and
    ``'1_0'``; with a ``parser`` it also stops applying ``min``/``max``, so this checks them (the
    option keeps ``min``/``max`` for its help text)."""

    def parse(text: str | int) -> int:
        if isinstance(text, int):  # the option's own default, not typed by anyone
            return text
        body = text.strip(" \t")
        pattern = _SIGNED if minimum is None or minimum < 0 else _COUNT
        if not pattern.fullmatch(body):
            kind = "a whole number" if pattern is _SIGNED else "a whole number (no sign)"
            raise typer.BadParameter(f"{text!r} is not {kind} in ASCII digits 0-9")
        if len(body.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
            raise typer.BadParameter(f"{text!r} is out of range (too many digits)")
        value = int(body)
        if minimum is not None and value < minimum:
            raise typer.BadParameter(f"{value} is below the minimum, {minimum}")
        if maximum is not None and value > maximum:
            raise typer.BadParameter(f"{value} is above the maximum, {maximum}")
        return value

    return parse


_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)


def decimal_number(minimum: float, maximum: float) -> Callable[[str | float], float]:
    """A Typer ``parser`` for a seconds option: a plain decimal in ASCII digits (``10``, ``0.5``),
    within ``minimum``..``maximum``.  Typer's own ``float`` takes ``'１'``, ``'1_0'``, ``'nan'``
    and ``'1e3'``; nobody means those as a duration, so they are refused on one line."""

    def parse(text: str | float) -> float:
        if isinstance(text, float | int):  # the option's own default, not typed by anyone
            return float(text)
        body = text.strip(" \t")
        if not _DECIMAL.fullmatch(body) or len(body) > _MAX_DIGITS:
            raise typer.BadParameter(
                f"{text!r} is not a number of seconds in ASCII digits 0-9 (e.g. 10 or 0.5)"
            )
        value = float(body)
        if value < minimum:
            raise typer.BadParameter(f"{body} is below the minimum, {minimum:g}")
        if value > maximum:
            raise typer.BadParameter(f"{body} is above the maximum, {maximum:g}")
        return value

    return parse
