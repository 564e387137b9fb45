"""The one exception that image parsing raises on bad input."""

from __future__ import annotations


class ImageFormatError(Exception):
    """The bytes are not an image vbsim can read.

    ``parse_image`` raises only this on bad input (truncated, oversized, corrupt headers, corrupt
    ``.tPolicy``, ...), whatever the PE library underneath raised.  ``reason`` is a short,
    human-readable explanation.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
