"""Parsing sizes such as ``64M`` or ``4G`` with a clear error naming what was wrong."""

from __future__ import annotations

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"size {text!r} is not a number with an optional K, M or G suffix")
    value = int(number) * _UNITS[unit]
    if value <= 0 or value % 4096:
        raise ValueError(f"size {text!r} must be a positive multiple of 4 KiB")
    if value > 1 << 40:
        raise ValueError(f"size {text!r} is larger than the model's 1 TiB limit")
    return value
