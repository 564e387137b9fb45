"""The PE ``OptionalHeader.CheckSum`` (the ``CheckSumMappedFile`` algorithm).

Sum of the file as little-endian 16-bit words with end-around carry, the CheckSum field itself
counted as zero, plus the file length.  Equivalent to ``pefile.PE.generate_checksum`` but done
with one C-level ``sum`` instead of a Python loop.
"""

from __future__ import annotations

import sys
from array import array


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The checksum of ``data`` whose CheckSum field is at ``checksum_offset``."""
    buf = bytearray(data)
    buf[checksum_offset : checksum_offset + 4] = b"\0\0\0\0"
    if len(buf) % 2:
        buf.append(0)
    words = array("H", bytes(buf))
    if sys.byteorder == "big":  # pragma: no cover - little-endian hosts only in CI
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF
