"""The Secure Kernel's object manager: its handle table and small-object pool in VTL1 memory.

vbs-internals §2.3: NT names SK objects (SKPROCESS, SECURE_IMAGE, secure allocations, secure
pools) by secure handle; the SK resolves each handle at every call (SkobReferenceObjectByHandle),
refusing an unknown one with STATUS_INVALID_HANDLE and one of another type with
STATUS_OBJECT_TYPE_MISMATCH.  Here the table (``layouts.HandleTable``) and the pool
(``layouts.ObjectPool``) are SK data pages, read and written through the SK's own processor at
the moment of each decision: a store to an entry changes what the next lookup returns.

Every function takes the SK's symbol table and a :class:`~vbsim.layout.Mem` (the SK's Cpu);
nothing here is kept in Python.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.ntstatus import NtStatus
from vbsim.sk.layouts import HandleTable, Mem, ObjectPool, ObjectType, read_field, write_field

if TYPE_CHECKING:
    from vbsim.hw.cpu import Cpu
    from vbsim.sk.kernel import SecureKernel

FIRST_HANDLE = HandleTable.FIRST_HANDLE
_ENTRY, _ENTRIES, _MAX = HandleTable.ENTRY, HandleTable.ENTRIES, HandleTable.MAX
_OBJECT, _TYPE = HandleTable.OBJECT.offset, HandleTable.TYPE.offset
assert (_OBJECT, _TYPE, _ENTRY) == (0, 8, 16), "_ENTRY_FORMAT follows the layout"
_ENTRY_FORMAT = struct.Struct("<QI4x")


def index_of(handle: int) -> int:
    """The entry index a handle value names, or -1 (not this table's encoding)."""
    relative = handle - FIRST_HANDLE
    if relative <= 0 or relative & 3:
        return -1
    index = relative >> 2
    return index if index < _MAX else -1


def handle_of(index: int) -> int:
    return FIRST_HANDLE + (index << 2)


def _entry(sk: SecureKernel, index: int) -> int:
    return sk.handles_va + _ENTRIES + index * _ENTRY


def lookup(sk: SecureKernel, cpu: Mem, handle: int) -> tuple[int, int]:
    """(type index, object VA) of ``handle`` as the table holds it now; (NONE, 0) if free."""
    index = index_of(handle)
    if index < 0 or index >= read_field(cpu, sk.handles_va, HandleTable.HIGH_WATER):
        return ObjectType.NONE, 0
    entry = _entry(sk, index)
    return cpu.read_u32(entry + _TYPE), cpu.read_u64(entry + _OBJECT)


def reference(sk: SecureKernel, cpu: Cpu, handle: int, want: int) -> int | NtStatus:
    """SkobReferenceObjectByHandle: the object's VA, or the status a wrong handle gets."""
    kind, va = lookup(sk, cpu, handle)
    name = ObjectType.NAMES.get(want, str(want))
    if kind == ObjectType.NONE or va == 0:
        sk.emit(cpu, "securecall", "securecall.handle", "invalid", handle=handle, want=name)
        return NtStatus.INVALID_HANDLE
    if kind != want:
        found = ObjectType.NAMES.get(kind, str(kind))
        sk.emit(cpu, "securecall", "securecall.handle", "type-mismatch", handle=handle,
                want=name, found=found)  # fmt: skip
        return NtStatus.OBJECT_TYPE_MISMATCH
    return va


def insert(sk: SecureKernel, cpu: Cpu, kind: int, va: int) -> int | None:
    """A new handle for the object at ``va``; None when the table is full.  The new handle and
    its object's type are trace data (what the SK created, for whoever watches)."""
    hint = read_field(cpu, sk.handles_va, HandleTable.HINT)
    start = hint if 1 <= hint < _MAX else 1
    for step in range(_MAX - 1):
        index = (start - 1 + step) % (_MAX - 1) + 1  # entries 1 .. MAX-1 (0: Secure System)
        entry = _entry(sk, index)
        if cpu.read_u32(entry + _TYPE) == ObjectType.NONE:
            cpu.write_u64(entry + _OBJECT, va)
            cpu.write_u32(entry + _TYPE, kind)
            write_field(cpu, sk.handles_va, HandleTable.HINT, index + 1)
            if index >= read_field(cpu, sk.handles_va, HandleTable.HIGH_WATER):
                write_field(cpu, sk.handles_va, HandleTable.HIGH_WATER, index + 1)
            count = read_field(cpu, sk.handles_va, HandleTable.COUNT)
            write_field(cpu, sk.handles_va, HandleTable.COUNT, count + 1)
            handle = handle_of(index)
            name = ObjectType.NAMES.get(kind, str(kind))
            sk.emit(cpu, "securecall", "securecall.handle", "created", handle=handle, type=name)
            return handle
    return None


def close(sk: SecureKernel, cpu: Mem, handle: int) -> None:
    """Free the entry (the object's body is its owner's to free)."""
    index = index_of(handle)
    if index < 0:
        return
    entry = _entry(sk, index)
    if cpu.read_u32(entry + _TYPE) == ObjectType.NONE:
        return
    cpu.write(entry, bytes(_ENTRY))
    count = read_field(cpu, sk.handles_va, HandleTable.COUNT)
    write_field(cpu, sk.handles_va, HandleTable.COUNT, max(0, count - 1))


def entries(sk: SecureKernel, cpu: Mem, kind: int) -> list[tuple[int, int]]:
    """(handle, object VA) of every live entry of type ``kind`` (one read of the table)."""
    # Nothing lives at or above the high-water mark; below it, one C-level unpack (an entry:
    # OBJECT u64 at 0, TYPE u32 at 8).
    high = min(read_field(cpu, sk.handles_va, HandleTable.HIGH_WATER), _MAX)
    raw = cpu.read(sk.handles_va + _ENTRIES, high * _ENTRY) if high else b""
    return [
        (handle_of(index), va)
        for index, (va, entry_kind) in enumerate(_ENTRY_FORMAT.iter_unpack(raw))
        if index and entry_kind == kind
    ]


# -- the small-object pool --------------------------------------------------------------------
def alloc_block(sk: SecureKernel, cpu: Mem) -> int | None:
    """A zeroed ``ObjectPool.BLOCK``-byte block (its VA); None when the pool is full.  Block 0
    holds the bitmap: the loader marks it taken."""
    raw = cpu.read(sk.objects_va + ObjectPool.BITMAP, ObjectPool.BLOCKS // 8)
    for byte_index, byte in enumerate(raw):
        if byte == 0xFF:
            continue
        bit = next(b for b in range(8) if not byte >> b & 1)
        block = byte_index * 8 + bit
        cpu.write(sk.objects_va + ObjectPool.BITMAP + byte_index, bytes([byte | 1 << bit]))
        va = sk.objects_va + block * ObjectPool.BLOCK
        cpu.write(va, bytes(ObjectPool.BLOCK))
        return va
    return None


def free_block(sk: SecureKernel, cpu: Mem, va: int) -> None:
    block = (va - sk.objects_va) // ObjectPool.BLOCK
    if not 0 < block < ObjectPool.BLOCKS:
        return
    cpu.write(va, bytes(ObjectPool.BLOCK))
    address = sk.objects_va + ObjectPool.BITMAP + (block >> 3)
    cpu.write(address, bytes([cpu.read(address, 1)[0] & ~(1 << (block & 7)) & 0xFF]))


def is_block(sk: SecureKernel, va: int) -> bool:
    return sk.objects_va < va < sk.objects_va + ObjectPool.PAGES * PAGE_SIZE


# -- host side: tools standing outside the machine -------------------------------------------
def host_entries(read: Callable[[int, int], bytes], sk: SecureKernel) -> dict[int, tuple[int, int]]:
    """Handle → (type index, object VA), from RAM at the table's GPA."""
    raw = read(sk.handles_gpa + _ENTRIES, _MAX * _ENTRY)
    out: dict[int, tuple[int, int]] = {}
    for index in range(1, _MAX):
        offset = index * _ENTRY
        kind = int.from_bytes(raw[offset + _TYPE : offset + _TYPE + 4], "little")
        if kind != ObjectType.NONE:
            va = int.from_bytes(raw[offset + _OBJECT : offset + _OBJECT + 8], "little")
            out[handle_of(index)] = (kind, va)
    return out
