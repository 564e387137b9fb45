"""Validating guest-supplied addresses and lengths (shared by NT and the Secure Kernel)."""

from __future__ import annotations

#: Canonical user half of the 48-bit address space.
USER_LIMIT = 1 << 47
MAX_COPY = 1 << 20


def fits_user(va: int, length: int) -> bool:
    """``[va, va+length)`` is a plausible user range (not kernel, not wrapping, not huge)."""
    return 0 <= length <= MAX_COPY and va > 0 and va + length <= USER_LIMIT
