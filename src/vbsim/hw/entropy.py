"""The platform's random-number source: what ``RDRAND`` returns and what the boot loader gathers.

Real x86 parts have one digital random-number generator per package, shared by every logical
processor, read with ``RDRAND r64`` (Intel SDM Vol. 2B, "RDRAND—Read Random Number": a 64-bit
value, CF=1 when one was available).  Windows' boot loader also gathers *boot entropy* (TPM,
RDRAND, its own sources) and hands it to the kernels it loads (Windows Internals 7th ed., Part 2,
ch. 12, "Boot entropy"); the Secure Kernel's master keys and the dump key come from it.

The model's generator is a counter-mode SHA-256 stream over one 128-bit seed per machine.  The
seed is configuration (``Policy.entropy_seed``): given, a run reproduces byte for byte, which a
soak needs to replay what it found; absent, it is drawn from the host once per machine, so two
boots differ as two real boots do.  Cryptographic strength is not the point (nothing here protects
a real secret); independence of the values guest code sees from anything it can influence is.
"""

from __future__ import annotations

import hashlib
import os

_SEED_BITS = 128


class Entropy:
    """One machine's random stream (see the module docstring)."""

    __slots__ = ("_counter", "_key", "_pending", "seed")

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(_SEED_BITS // 8), "little")
        #: The seed this stream runs from (a report or a replay names it).
        self.seed = seed % (1 << _SEED_BITS)
        self._key = self.seed.to_bytes(_SEED_BITS // 8, "little")
        self._counter = 0
        self._pending = b""

    def read(self, length: int) -> bytes:
        """The next ``length`` bytes of the stream."""
        out = self._pending
        while len(out) < length:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "little")).digest()
            self._counter += 1
            out += block
        self._pending = out[length:]
        return out[:length]

    def u64(self) -> int:
        """What one ``RDRAND r64`` returns."""
        return int.from_bytes(self.read(8), "little")

    def derive(self, label: str) -> int:
        """A seed for a host-side tool's own stream (the monitor's canaries), fixed by this
        machine's seed and the label, and drawn without consuming the guest's stream."""
        digest = hashlib.sha256(self._key + b"/" + label.encode()).digest()
        return int.from_bytes(digest[:16], "little")
