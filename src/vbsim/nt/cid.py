"""PspCidTable: the executive handle table whose handle values are the PIDs NT hands out.

PsLookupProcessByProcessId does not walk the process list: it looks the PID up in this table
and takes the object the entry points at (Windows Internals 7th ed. part 1 ch. 3 "Process
internals"; ReactOS ``ntoskrnl/ps/process.c``).  So a process a rootkit unlinks from
PsActiveProcessHead (DKOM) is still found by PID, while tools that walk the list lose it; and a
K0 write to an entry changes which object a PID names.

The table is in NT's memory in the _HANDLE_TABLE / _HANDLE_TABLE_ENTRY formats of
:mod:`vbsim.nt.layouts`: a level-0 table is one leaf page of 256 entries; a second page turns
it into a level-1 table (a mid-level page of 512 leaf pointers, TableCode's low bits = 1).
[model] Two levels, 130,560 handles; Windows grows a third level beyond that.  Handles are
never freed here because the model's process objects are never deleted (an exited process
keeps its EPROCESS, as one with an open handle does on Windows).

The lookup reads through any :class:`~vbsim.layout.Loads`: NT's processor at the moment of
the decision, or a host tool's :class:`~vbsim.nt.layouts.HostKernelView`, so both follow the
same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from vbsim.layout import Loads
from vbsim.nt.layouts import (
    HANDLE_TABLE,
    HANDLE_TABLE_ENTRY,
    HANDLE_VALUE_INC,
    LOWLEVEL_COUNT,
    MIDLEVEL_COUNT,
    Cpu,
    handle_entry_object,
    handle_entry_value,
    read_field,
    write_field,
)

#: The handle values one leaf page covers.
_LEAF_SPAN = LOWLEVEL_COUNT * HANDLE_VALUE_INC
_LEVEL_MASK = 0x3
_PAGE_MASK = 0xFFF


class TableFull(Exception):
    """ExCreateHandle found no free entry and no room to grow (STATUS_INSUFFICIENT_RESOURCES
    to the caller)."""


def lookup(memory: Loads, table: int, handle: int) -> int:
    """ExpLookupHandleTableEntry + the entry's object: the VA ``handle`` names in the table at
    ``table`` (0: none).  The tag bits are cleared first, and a handle at or beyond
    NextHandleNeedingPool fails before any table page is read (ReactOS
    ``ntoskrnl/ex/handle.c``)."""
    value = handle & ~(HANDLE_VALUE_INC - 1) & 0xFFFF_FFFF_FFFF_FFFF
    if value == 0 or value >= read_field(memory, table, HANDLE_TABLE.NextHandleNeedingPool):
        return 0
    code = read_field(memory, table, HANDLE_TABLE.TableCode)
    base = code & ~_LEVEL_MASK
    level = code & _LEVEL_MASK
    if level == 0:
        leaf = base if value < _LEAF_SPAN else 0
    elif level == 1 and value // _LEAF_SPAN < MIDLEVEL_COUNT:
        leaf = memory.read_u64(base + value // _LEAF_SPAN * 8)
    else:
        return 0  # [model] no third level (see the module doc)
    if not leaf:
        return 0
    entry = leaf + (value % _LEAF_SPAN) // HANDLE_VALUE_INC * HANDLE_TABLE_ENTRY.SIZE
    return handle_entry_object(read_field(memory, entry, HANDLE_TABLE_ENTRY.LowValue))


def create(cpu: Cpu, table: int, obj: int, new_page: Callable[[], int]) -> int:
    """ExCreateHandle(PspCidTable, obj): the first free entry now points at ``obj``; its handle
    value (the new PID).  ``new_page`` gives a zeroed pool page's VA when the free list is
    empty (its NoPages propagates); :class:`TableFull` when the table cannot grow."""
    entry = read_field(cpu, table, HANDLE_TABLE.FirstFreeHandleEntry)
    if not entry:
        entry = _grow(cpu, table, new_page)
    after = read_field(cpu, entry, HANDLE_TABLE_ENTRY.HighValue)
    write_field(cpu, table, HANDLE_TABLE.FirstFreeHandleEntry, after)
    write_field(cpu, entry, HANDLE_TABLE_ENTRY.HighValue, 0)
    write_field(cpu, entry, HANDLE_TABLE_ENTRY.LowValue, handle_entry_value(obj))
    count = read_field(cpu, table, HANDLE_TABLE.HandleCount)
    write_field(cpu, table, HANDLE_TABLE.HandleCount, count + 1)
    leaf = entry & ~_PAGE_MASK
    # [model] The leaf's first handle value is in its reserved entry 0 (LeafHandleValue).
    first = read_field(cpu, leaf, HANDLE_TABLE_ENTRY.HighValue)
    return first + (entry - leaf) // HANDLE_TABLE_ENTRY.SIZE * HANDLE_VALUE_INC


def _grow(cpu: Cpu, table: int, new_page: Callable[[], int]) -> int:
    """ExpAllocateHandleTableEntrySlow: one more leaf page, its entries 1..255 chained onto the
    free list; the first of them."""
    first = read_field(cpu, table, HANDLE_TABLE.NextHandleNeedingPool)
    code = read_field(cpu, table, HANDLE_TABLE.TableCode)
    index = first // _LEAF_SPAN
    if code & _LEVEL_MASK > 1 or index >= MIDLEVEL_COUNT:
        raise TableFull
    mid = 0
    if code & _LEVEL_MASK == 0 and code:  # a second leaf: the table grows a level
        mid = new_page()
    leaf = new_page()
    # The page in one store: entry 0's LeafHandleValue, then each free entry's
    # NextFreeHandleEntry naming the next (the last ends the list).
    links = [first] + [
        leaf + (slot + 1) * HANDLE_TABLE_ENTRY.SIZE for slot in range(1, LOWLEVEL_COUNT)
    ]
    links[-1] = 0
    cpu.write(leaf, b"".join(bytes(8) + link.to_bytes(8, "little") for link in links))
    if not code:
        write_field(cpu, table, HANDLE_TABLE.TableCode, leaf)
    else:
        if mid:
            cpu.write_u64(mid, code & ~_LEVEL_MASK)
            write_field(cpu, table, HANDLE_TABLE.TableCode, mid | 1)
        base = read_field(cpu, table, HANDLE_TABLE.TableCode) & ~_LEVEL_MASK
        cpu.write_u64(base + index * 8, leaf)
    write_field(cpu, table, HANDLE_TABLE.NextHandleNeedingPool, first + _LEAF_SPAN)
    return leaf + HANDLE_TABLE_ENTRY.SIZE
