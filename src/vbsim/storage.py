"""The model's storage device: the files of the system disk as a kernel's file system reads them.

A disk is not RAM and not kernel state: it is what the host built and installed (the disk
builder, ``vbsim.boot.disk``, host side: it signs the files with the model PKI as Microsoft's
build lab would).  The host *attaches* a volume's files before a kernel boots; guest code only
reads them (``vbsim.nt.drivers`` takes its driver store from the ``drivers`` volume when the
loader builds NT).  Nothing here signs or holds a key.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Volume name → file name → bytes, as the host last attached them.
_volumes: dict[str, dict[str, bytes]] = {}

#: The driver store (``\\SystemRoot\\System32\\drivers`` in the model).
DRIVERS = "drivers"


def attach(volume: str, files: Mapping[str, bytes]) -> None:
    """Host side: install ``files`` as ``volume``'s contents (replacing what was there)."""
    _volumes[volume] = dict(files)


def files(volume: str) -> dict[str, bytes]:
    """A copy of ``volume``'s files (empty when the host attached none)."""
    return dict(_volumes.get(volume, {}))
