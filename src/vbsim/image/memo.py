"""A bounded memo of a pure decoder's results, keyed by the exact bytes it decoded.

PE parsing, PKCS#7 decoding and X.509 decoding are pure functions of their input bytes with
immutable results, and every boot decodes the same handful of images, so the same bytes need not
go through pefile or asn1crypto again.  A memo decides nothing: every digest, signature and chain
check still runs on each verification.  Bounded: when full, the oldest entry goes first.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class BytesMemo(Generic[T]):
    """Decoded values by their exact input bytes, at most ``limit`` of them."""

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int) -> None:
        self._items: dict[bytes, T] = {}
        self.limit = limit

    def get(self, key: bytes) -> T | None:
        return self._items.get(key)

    def put(self, key: bytes, value: T) -> None:
        items = self._items
        if len(items) >= self.limit:
            del items[next(iter(items))]  # the oldest entry
        items[key] = value
