"""Taint for invariant 1: VTL1 secrets, canaries, and finding them where VTL0 can look.

**What is secret.**  Real secrets already in VTL1 RAM — the VSM master keys (``sk.ium.keys``),
the crash-dump key (``sk.services.dump``; its session nonce is public) and every NT OWF and
Kerberos key LsaIso keeps in its credential table, and the contents of a keyless trustlet's
mailboxes (no VTL0 caller may ever retrieve them) — plus *canaries* the monitor plants at attach
time in VTL1 memory nobody reads: the unused tails of Secure Kernel data pages (the key pages,
HVCI's hash-record page and model trustlets' mailbox frames), the free part of the
secure-allocation arena, and the spare private pages of the trustlets the model ships (LsaIso,
vmsp).  Trustlets the attacker brings (its own signed "fuzzlet") are attacker code: they get
no canaries, because whatever they hold they may publish through their own mailbox or reply.

**Granularity.**  A canary region is a 16-byte unit ``MAGIC || id`` repeated, with a random
8-byte ``id`` per region (``MAGIC`` is public, so only ``MAGIC`` followed by a live ``id`` counts);
every real secret is cut into 8-byte needles at a stride of 8.  So a leak is detected when at
least 31 contiguous bytes of a canary region (they always contain ``MAGIC || id``) or 15 of a real
secret (they always contain an aligned needle) reach a VTL0-readable page or a device buffer;
registers are checked against every 8-byte window of every real secret and every window of a
canary unit holding at least 4 bytes of its ``id``.  "No byte" is thus approximated by "no run of
8 (registers) / 15-31 (memory) bytes", which is what a leak through the model's interfaces
(copies of buffers, registers) looks like.

**Where VTL0 can look** (computed fresh when asked): shared GPRs and XMM of every VP, every RAM
page with VTL0's SLAT R right, and the buffers of DMA devices after a device read.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from mmap import mmap
from typing import TYPE_CHECKING

from vbsim.hw.regs import SHARED_GPRS
from vbsim.hw.x86 import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from vbsim.hw.ram import GuestRam
    from vbsim.hw.vp import VirtualProcessor
    from vbsim.sk.kernel import SecureKernel

#: First half of every canary unit: 8 bytes, none zero, unlikely in model data.
MAGIC = b"\xd9\x1fVbS\xc4\x7f\xe2"
UNIT = 16
NEEDLE = 8
_MASK64 = (1 << 64) - 1


_Haystack = bytes | bytearray | mmap
_Reader = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class Secret:
    """One secret (or canary region) the monitor watches."""

    name: str
    gpa: int  # where it lives in VTL1 RAM
    data: bytes  # a canary unit (16 bytes) for canaries; the secret bytes otherwise
    canary: bool


@dataclass(frozen=True, slots=True)
class Hit:
    """A secret found where VTL0 can see it."""

    secret: str
    where: str  # "ram", "register", "dma-buffer"
    location: str


@dataclass
class Secrets:
    """Everything invariant 1 knows: the secrets, their needles and register windows."""

    items: list[Secret] = field(default_factory=list)
    #: needle bytes -> index in ``items`` (MAGIC maps to -1: resolved from the bytes after it).
    needles: dict[bytes, int] = field(default_factory=dict)
    #: every 8-byte window (as a little-endian int) -> index in ``items``.
    windows: dict[int, int] = field(default_factory=dict)
    #: canary id (the unit's second half) -> index in ``items``.
    canary_ids: dict[bytes, int] = field(default_factory=dict)
    #: The monitor's own stream for canary ids (host side, seeded from the machine's entropy
    #: seed, so a seeded run plants the same canaries).
    rng: random.Random = field(default_factory=random.Random)
    #: The needles as one pattern, compiled at the first search after a change: one pass over
    #: a page instead of one per needle (a soak scans pages all the time; profiled, the
    #: per-needle finds were its largest single cost).  Every needle is NEEDLE bytes long, so
    #: at most one can match at a position and the alternation's order does not matter.
    _pattern: re.Pattern[bytes] | None = field(default=None, repr=False, compare=False)

    def add(self, secret: Secret) -> None:
        self._pattern = None
        index = len(self.items)
        self.items.append(secret)
        data = secret.data
        if secret.canary:
            self.canary_ids[data[NEEDLE:]] = index
            self.needles[MAGIC] = -1
            doubled = data + data
            # Windows with at least 4 bytes of the random id: MAGIC is public (it is in this file),
            # the id is not, so only those prove the bytes came from the canary.
            for offset in range(4, 13):
                word = int.from_bytes(doubled[offset : offset + 8], "little")
                self.windows.setdefault(word, index)
            return
        for offset in range(0, len(data) - NEEDLE + 1, NEEDLE):
            self.needles.setdefault(data[offset : offset + NEEDLE], index)
        if len(data) >= NEEDLE:
            self.needles.setdefault(data[-NEEDLE:], index)
        for offset in range(len(data) - NEEDLE + 1):
            word = int.from_bytes(data[offset : offset + 8], "little")
            if word:  # an all-zero window is no evidence of anything
                self.windows.setdefault(word, index)

    def known(self, name: str) -> bool:
        return any(item.name == name for item in self.items)

    # -- finding them ----------------------------------------------------------------------
    def _search(self, haystack: _Haystack, read: _Reader, start: int, end: int) -> tuple[str, int]:
        pattern = self._pattern
        if pattern is None:
            if not self.needles:
                return "", -1
            pattern = self._pattern = re.compile(b"|".join(map(re.escape, self.needles)))
        match = pattern.search(haystack, start, end)
        while match is not None:
            position = match.start()
            index = self.needles[match.group()]
            if index >= 0:
                return self.items[index].name, position
            # MAGIC is public: a canary is there only if one of the secret ids follows it.
            found = self.canary_ids.get(read(position + NEEDLE, position + UNIT))
            if found is not None and position + UNIT <= end:
                return self.items[found].name, position
            match = pattern.search(haystack, position + 1, end)
        return "", -1

    def find_in(self, buffer: bytes | bytearray, start: int = 0, end: int | None = None) -> str:
        """The name of a secret found in ``buffer[start:end]``, or ''."""
        stop = len(buffer) if end is None else end
        return self._search(buffer, lambda a, b: bytes(buffer[a:b]), start, stop)[0]

    def find_in_ram(self, ram: GuestRam, start: int, end: int) -> tuple[str, int]:
        """(name, GPA) of a secret found in RAM ``[start, end)``, or ('', -1)."""
        mm = ram.mm
        return self._search(mm, lambda a, b: mm[a:b], start, end)

    def _window_name(self, word: int) -> str:
        return self.items[self.windows[word]].name

    def find_in_registers(self, vp: VirtualProcessor) -> str:
        """'rax: name' for the first shared register holding 8 secret bytes, or ''."""
        windows = self.windows
        for reg in SHARED_GPRS:
            value = getattr(vp, reg) & _MASK64
            if value in windows:
                return f"VP{vp.index} {reg}: {self._window_name(value)}"
        for number, value in enumerate(vp.xmm):
            if not value:
                continue
            raw = (value & ((1 << 128) - 1)).to_bytes(16, "little")
            for offset in range(9):
                word = int.from_bytes(raw[offset : offset + 8], "little")
                if word in windows:
                    return f"VP{vp.index} xmm{number}: {self._window_name(word)}"
        return ""


def canary_unit(rng: random.Random) -> bytes:
    return MAGIC + rng.randbytes(UNIT - NEEDLE)


def plant(ram: GuestRam, secrets: Secrets, name: str, gpa: int, length: int) -> None:
    """Fill ``[gpa, gpa + length)`` with a fresh canary (host side, at attach time)."""
    if length < UNIT:
        return
    unit = canary_unit(secrets.rng)
    ram.write(gpa, (unit * (length // UNIT + 1))[:length])
    secrets.add(Secret(name, gpa, unit, canary=True))


def page_crc(ram: GuestRam, pfn: int) -> int:
    base = pfn << PAGE_SHIFT
    return zlib.crc32(ram.view[base : base + PAGE_SIZE])


# -- discovering the real secrets and the canary sites -------------------------------------------
def _sk_gpa(ram: GuestRam, sk: SecureKernel, va: int) -> int | None:
    from vbsim.invariants.skstate import host_gpa

    return host_gpa(ram, sk, va)


def collect(
    sk: SecureKernel, ram: GuestRam, plant_canaries: bool = True, seed: int | None = None
) -> Secrets:
    """The secrets of a booted VBS machine, planting canaries where nothing reads (their ids
    drawn from a stream seeded with ``seed``)."""
    secrets = Secrets(rng=random.Random(seed))
    keys_va = sk.keys_va
    if keys_va:
        gpa = _sk_gpa(ram, sk, keys_va)
        if gpa is not None:
            for which, label in enumerate(("idk", "local", "per-boot")):
                data = ram.read(gpa + 32 * which, 32)
                secrets.add(Secret(f"sk.master-key.{label}", gpa + 32 * which, data, False))
            if plant_canaries:
                plant(ram, secrets, "canary:sk.keys-page", gpa + 96, PAGE_SIZE - 96)
    dump_va = sk.dump_key_va
    if dump_va:
        gpa = _sk_gpa(ram, sk, dump_va)
        if gpa is not None:
            secrets.add(Secret("sk.dump-key", gpa, ram.read(gpa, 32), False))
            if plant_canaries:
                plant(ram, secrets, "canary:sk.dump-key-page", gpa + 48, PAGE_SIZE - 48)
    if plant_canaries:
        _plant_allocation(sk, ram, secrets)
    add_trustlets(sk, ram, secrets, plant_canaries)
    return secrets


def _plant_allocation(sk: SecureKernel, ram: GuestRam, secrets: Secrets) -> None:
    from vbsim.sk.layouts import Hvci, host_field
    from vbsim.sk.services import allocation

    state = sk.allocation
    if not isinstance(state, allocation.AllocationState):
        return
    from vbsim.invariants.skstate import HostMem

    # The unused tail of HVCI's hash-record page, right behind the arena (what A8/A9 reach).
    records = sk.hvci.hashes_gpa
    used = Hvci.HASH_RECORDS + host_field(ram, records, Hvci.HASH_COUNT) * Hvci.RECORD_SIZE
    if used < PAGE_SIZE:
        plant(ram, secrets, "canary:sk.hvci-records", records + used, PAGE_SIZE - used)
    # Free arena pages (below ``top``): CREATE_SECURE_ALLOCATION clears what it hands out.
    va = state.arena_va
    top = state.top(HostMem(ram, sk))
    while va < top:
        gpa = _sk_gpa(ram, sk, va)
        if gpa is not None:
            plant(ram, secrets, f"canary:sk.arena+0x{va - state.arena_va:x}", gpa, PAGE_SIZE)
        va += PAGE_SIZE


#: Trustlets shipped with the model that keep their spare private pages to themselves.
CANARY_TRUSTLETS = frozenset({1, 2})
#: Private pages 0-2 are message, reply and heap (vbsim.sk.ium.process); 3.. are spare.
FIRST_SPARE = 3


def add_trustlets(
    sk: SecureKernel,
    ram: GuestRam,
    secrets: Secrets,
    plant_canaries: bool = True,
    credentials: bool = True,
) -> None:
    """LsaIso's credentials (at attach time only: a credential stored later came *from* VTL0 in
    a PROTECT request, so VTL0 holding it proves nothing), and canaries in the spare pages of
    model trustlets not seen yet."""
    from vbsim.ium import lsaiso
    from vbsim.sk.ium import process as ium

    table: dict[int, object] = sk.host_processes(ram)
    for handle, process in table.items():
        if not isinstance(process, ium.SecureProcess) or process.host_terminated(ram):
            continue
        trustlet_id = process.host_trustlet_id(ram)
        tag = f"trustlet{trustlet_id}@{handle:#x}"
        if credentials and trustlet_id == 1 and len(process.host_private_pfns(ram)) > 2:
            heap = process.host_private_pfns(ram)[2] << PAGE_SHIFT
            table_gpa = heap + (lsaiso.TABLE_VA - ium.HEAP_VA)
            count = min(ram.read_u64(table_gpa) & 0xFFFF_FFFF, lsaiso.MAX_RECORDS)
            for index in range(count):
                record = table_gpa + 16 + index * lsaiso.RECORD
                owf_gpa = record + lsaiso.USER_LEN
                name = f"lsaiso.owf[{index}]@{handle:#x}"
                if not secrets.known(name):
                    owf = ram.read(owf_gpa, lsaiso.OWF_LEN)
                    kerb = ram.read(owf_gpa + lsaiso.OWF_LEN, lsaiso.KERB_LEN)
                    secrets.add(Secret(name, owf_gpa, owf, False))
                    secrets.add(
                        Secret(
                            f"lsaiso.kerberos-key[{index}]@{handle:#x}",
                            owf_gpa + lsaiso.OWF_LEN,
                            kerb,
                            False,
                        )
                    )
        if trustlet_id in CANARY_TRUSTLETS:  # an attacker's trustlet may publish its own
            _add_mailboxes(ram, secrets, process, tag, plant_canaries)
        if plant_canaries and trustlet_id in CANARY_TRUSTLETS:
            for number, pfn in enumerate(
                process.host_private_pfns(ram)[FIRST_SPARE : ium.PRIVATE_PAGES]
            ):
                name = f"canary:{tag}.private[{number + FIRST_SPARE}]"
                if not secrets.known(name):
                    plant(ram, secrets, name, pfn << PAGE_SHIFT, PAGE_SIZE)


def _add_mailboxes(
    ram: GuestRam, secrets: Secrets, process: object, tag: str, plant_canaries: bool
) -> None:
    """Mailbox contents are secrets (vbs-internals §4.4: only the holder of the mailbox key reads
    them): the posted bytes of a model trustlet created without a key (nobody may ever read them
    from VTL0) are watched as secrets; the unused tail of its mailbox frames is a canary."""
    from vbsim.guest.address_space import DIRECT_MAP
    from vbsim.sk.layouts import SkProcess, host_field

    va = getattr(process, "object_va", 0)
    if not va:
        return
    base = va - DIRECT_MAP
    keyless = host_field(ram, base, SkProcess.MAILBOX_KEY) == 0
    for slot in range(SkProcess.MAILBOX_SLOTS):
        entry = base + SkProcess.MAILBOXES + slot * SkProcess.MAILBOX_ENTRY
        pfn = host_field(ram, entry, SkProcess.MAILBOX_PFN)
        if not pfn:
            continue
        length = min(host_field(ram, entry, SkProcess.MAILBOX_LENGTH), PAGE_SIZE)
        name = f"mailbox[{slot}]@{tag}"
        data = ram.read(pfn << PAGE_SHIFT, length)
        if keyless and length >= NEEDLE * 2 and not secrets.known(name):
            secrets.add(Secret(name, pfn << PAGE_SHIFT, data, False))
        tail = -(-length // UNIT) * UNIT
        canary = f"canary:{name}.tail"
        if plant_canaries and tail < PAGE_SIZE and not secrets.known(canary):
            plant(ram, secrets, canary, (pfn << PAGE_SHIFT) + tail, PAGE_SIZE - tail)


def runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive page numbers as (first, last + 1) runs."""
    out: list[tuple[int, int]] = []
    for pfn in sorted(pages):
        if out and out[-1][1] == pfn:
            out[-1] = (out[-1][0], pfn + 1)
        else:
            out.append((pfn, pfn + 1))
    return out
