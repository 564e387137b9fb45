"""The ``\\Driver`` object directory: how the I/O manager finds a driver by name, in RAM.

Windows keeps named kernel objects in object directories (Windows Internals 7th ed. Part 2,
ch. 8, "Object Manager"): an ``_OBJECT_DIRECTORY`` of 37 hash buckets, each a chain of
``_OBJECT_DIRECTORY_ENTRY`` {ChainLink, Object, HashValue} (``nt.layouts``).  A driver's
DRIVER_OBJECT is entered as ``\\Driver\\<name>`` when it loads and removed when it unloads;
``NtDeviceIoControlFile`` reaches the driver by looking its name up here, then calls the
dispatch routine the object holds.  So the lookup is data: a rootkit that unlinks its entry
is not found (as it is not in WinObj), and one that points an entry at a forged DRIVER_OBJECT
has its own dispatch called.

[model] The directory lives in NT's .data (on Windows it is a pool object reached from
ObpRootDirectoryObject); an entry's name is compared with the DRIVER_OBJECT's DriverName (on
Windows, with the object header's name information, which holds the same component).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbsim.hw.cpu import Cpu
from vbsim.layout import Loads
from vbsim.nt.layouts import (
    DRIVER_OBJECT,
    OBJECT_DIRECTORY,
    OBJECT_DIRECTORY_ENTRY,
    read_field,
    write_field,
)

if TYPE_CHECKING:
    from vbsim.nt.kernel import NtKernel

#: [model] NT's variable holding the ``\Driver`` directory.
DRIVER_DIRECTORY = "ObpDriverDirectory"
#: DriverName's prefix ("\Driver\" then the name).
PREFIX = "\\Driver\\"
#: Where a DRIVER_OBJECT's name characters follow it in its pool block ([model]).
NAME_AT = 0x200
#: At most this many entries are walked in one chain (a cycle in a corrupted chain ends it).
_CHAIN_LIMIT = 1024


def register(nt: NtKernel) -> None:
    """Loader time: the empty directory in NT's .data (RAM is zero: every bucket empty)."""
    nt.variable(DRIVER_DIRECTORY, OBJECT_DIRECTORY.SIZE)


def _directory(nt: NtKernel) -> int:
    return nt.variable(DRIVER_DIRECTORY, OBJECT_DIRECTORY.SIZE).va


def name_hash(name: str) -> int:
    """ObpLookupDirectoryEntry's hash of a name component, case-insensitive, 32-bit: per
    character ``h += (h << 1) + (h >> 1)`` then the upcased character (NT's algorithm as ReactOS
    reimplements it, ntoskrnl/ob/obdir.c).  [model] Later x64 builds first fold four characters
    at a time into a 64-bit chunk hash; the per-character form is kept, which changes only
    which bucket a name lands in."""
    value = 0
    for char in name:
        upper = char.upper()
        code = ord(upper) if len(upper) == 1 else ord(char)
        value = (value + (value << 1) + (value >> 1) + code) & 0xFFFF_FFFF
    return value


def _bucket(nt: NtKernel, value: int) -> int:
    return _directory(nt) + (value % OBJECT_DIRECTORY.BUCKETS) * 8


def name_of(vp: Loads, driver_object: int) -> str | None:
    """The DRIVER_OBJECT's name component (DriverName past ``\\Driver\\``), as RAM holds it."""
    length = min(read_field(vp, driver_object, DRIVER_OBJECT.DriverNameLength), 512)
    buffer = read_field(vp, driver_object, DRIVER_OBJECT.DriverNameBuffer)
    if not buffer or length % 2:
        return None
    text = vp.read(buffer, length).decode("utf-16-le", "replace")
    return text[len(PREFIX) :] if text.startswith(PREFIX) else None


def insert(nt: NtKernel, vp: Cpu, name: str, driver_object: int) -> None:
    """IopLoadDriver's ObInsertObject: name the DRIVER_OBJECT ``\\Driver\\<name>`` and enter
    it at the head of its bucket's chain."""
    raw = (PREFIX + name).encode("utf-16-le")[:512]
    vp.write(driver_object + NAME_AT, raw)
    write_field(vp, driver_object, DRIVER_OBJECT.DriverNameLength, len(raw))
    write_field(vp, driver_object, DRIVER_OBJECT.DriverNameBuffer, driver_object + NAME_AT)
    entry, _ = nt.alloc_kernel_page(vp)
    value = name_hash(name)
    bucket = _bucket(nt, value)
    write_field(vp, entry, OBJECT_DIRECTORY_ENTRY.ChainLink, vp.read_u64(bucket))
    write_field(vp, entry, OBJECT_DIRECTORY_ENTRY.Object, driver_object)
    write_field(vp, entry, OBJECT_DIRECTORY_ENTRY.HashValue, value)
    vp.write_u64(bucket, entry)


def _walk(nt: NtKernel, vp: Loads, name: str) -> tuple[int, int]:
    """(the link that points at the entry for ``name``, the entry), or (0, 0)."""
    value = name_hash(name)
    link = _bucket(nt, value)
    for _ in range(_CHAIN_LIMIT):
        entry = vp.read_u64(link)
        if not entry:
            return 0, 0
        if read_field(vp, entry, OBJECT_DIRECTORY_ENTRY.HashValue) == value:
            found = read_field(vp, entry, OBJECT_DIRECTORY_ENTRY.Object)
            if found and (name_of(vp, found) or "").lower() == name.lower():
                return link, entry
        link = entry + OBJECT_DIRECTORY_ENTRY.ChainLink.offset
    return 0, 0


def lookup(nt: NtKernel, vp: Loads, name: str) -> int:
    """ObReferenceObjectByName(``\\Driver\\<name>``): the DRIVER_OBJECT's VA, or 0."""
    _, entry = _walk(nt, vp, name)
    return read_field(vp, entry, OBJECT_DIRECTORY_ENTRY.Object) if entry else 0


def remove(nt: NtKernel, vp: Cpu, name: str) -> bool:
    """ObMakeTemporaryObject at unload: unlink the entry for ``name`` (False: none)."""
    link, entry = _walk(nt, vp, name)
    if not entry:
        return False
    vp.write_u64(link, read_field(vp, entry, OBJECT_DIRECTORY_ENTRY.ChainLink))
    nt.free_kernel_page(vp, entry)
    return True
