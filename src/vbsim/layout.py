"""Reading and writing a structure field through a processor: the one accessor pair both kernels'
layout modules (``vbsim.nt.layouts``, ``vbsim.sk.layouts``) use.

Pure: it knows only a field's offset and size and the loads and stores of :class:`Mem` (which a
:class:`vbsim.hw.cpu.Cpu` has, and so does a host tool's processor handle).  Fields are
little-endian unsigned integers, as on x86-64.
"""

from __future__ import annotations

from typing import Protocol


class Loads(Protocol):
    """The loads :func:`read_field` uses (a processor's, or a host tool's read-only view)."""

    def read(self, va: int, length: int, /) -> bytes: ...
    def read_u32(self, va: int, /) -> int: ...
    def read_u64(self, va: int, /) -> int: ...


class Mem(Loads, Protocol):
    """The loads and stores the accessors use (through the current translation)."""

    def write(self, va: int, data: bytes | bytearray, /) -> None: ...
    def write_u32(self, va: int, value: int, /) -> None: ...
    def write_u64(self, va: int, value: int, /) -> None: ...


class FieldLike(Protocol):
    """Where a field sits in its structure (each layout module's ``Field`` is one)."""

    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


def read_field(cpu: Loads, base: int, field: FieldLike) -> int:
    """Load ``field`` of the structure at VA ``base`` through ``cpu``."""
    if field.size == 8:
        return cpu.read_u64(base + field.offset)
    if field.size == 4:
        return cpu.read_u32(base + field.offset)
    return int.from_bytes(cpu.read(base + field.offset, field.size), "little")


def write_field(cpu: Mem, base: int, field: FieldLike, value: int) -> None:
    """Store ``value`` into ``field`` of the structure at VA ``base`` through ``cpu``."""
    if field.size == 8:
        cpu.write_u64(base + field.offset, value)
    elif field.size == 4:
        cpu.write_u32(base + field.offset, value)
    else:
        cpu.write(base + field.offset, value.to_bytes(field.size, "little"))
