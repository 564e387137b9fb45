"""The SkuSiPolicy floors in SK memory (``layouts.Revocation``): written once by the loader,
read by SKCI at every trustlet admission (vbs-internals §3.6, §6 A15).

The loader reduces the :class:`~vbsim.image.RevocationPolicy` it was given to the page's bytes
(:func:`encode`); the SK rebuilds the value from the bytes it reads through its own processor at
the moment of the check (:func:`read`), so a store to the page changes the next admission, and
host tools read the same page from RAM (:func:`host_read`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vbsim.hw.x86 import PAGE_SIZE
from vbsim.image import ComponentFloor, RevocationPolicy
from vbsim.sk.layouts import Mem, Revocation

if TYPE_CHECKING:
    from vbsim.sk.kernel import SecureKernel

_R = Revocation


class _Ram(Protocol):
    def read(self, gpa: int, length: int, /) -> bytes: ...


def _u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset : offset + size], "little")


def encode(policy: RevocationPolicy | None) -> bytes:
    """The page the loader writes.  Whatever does not fit the page's fixed arrays is dropped
    from the end (the model's presets carry a handful of floors; the bound is the layout's)."""
    page = bytearray(PAGE_SIZE)
    if policy is None:
        return bytes(page)
    components = list(policy.components.items())[: _R.MAX_COMPONENTS]
    for index, (name, floor) in enumerate(components):
        base = _R.COMPONENT_BASE + index * _R.COMPONENT
        raw_name = name.lower().encode("ascii", "replace")[: _R.NAME.size - 1]
        page[base : base + len(raw_name)] = raw_name
        flags = 0
        if floor.min_version is not None:
            flags |= _R.HAS_VERSION
            parts = b"".join((p & 0xFFFF).to_bytes(2, "little") for p in floor.min_version)
            at = base + _R.MIN_VERSION.offset
            page[at : at + 8] = parts
        if floor.min_svn is not None:
            flags |= _R.HAS_SVN
            at = base + _R.MIN_SVN.offset
            page[at : at + 4] = (floor.min_svn & 0xFFFF_FFFF).to_bytes(4, "little")
        page[base + _R.FLAGS.offset : base + _R.FLAGS.offset + 4] = flags.to_bytes(4, "little")
    certificates = sorted(policy.revoked_certificates)[: _R.MAX_CERTIFICATES]
    for index, fingerprint in enumerate(certificates):
        at = _R.CERTIFICATE_BASE + index * _R.DIGEST
        page[at : at + _R.DIGEST] = bytes.fromhex(fingerprint)[: _R.DIGEST].ljust(_R.DIGEST, b"\0")
    images = sorted(policy.revoked_image_hashes)[: _R.MAX_IMAGES]
    for index, digest in enumerate(images):
        at = _R.IMAGE_BASE + index * _R.DIGEST
        page[at : at + _R.DIGEST] = bytes.fromhex(digest)[: _R.DIGEST].ljust(_R.DIGEST, b"\0")
    for fld, count in (
        (_R.COMPONENTS, len(components)),
        (_R.CERTIFICATES, len(certificates)),
        (_R.IMAGES, len(images)),
    ):
        page[fld.offset : fld.offset + fld.size] = count.to_bytes(fld.size, "little")
    return bytes(page)


def decode(raw: bytes) -> RevocationPolicy | None:
    """The policy the page's bytes say; None when it names nothing (no floor, no revocation)."""
    components = min(_u(raw, _R.COMPONENTS.offset, 4), _R.MAX_COMPONENTS)
    certificates = min(_u(raw, _R.CERTIFICATES.offset, 4), _R.MAX_CERTIFICATES)
    images = min(_u(raw, _R.IMAGES.offset, 4), _R.MAX_IMAGES)
    if not (components or certificates or images):
        return None
    floors: dict[str, ComponentFloor] = {}
    for index in range(components):
        base = _R.COMPONENT_BASE + index * _R.COMPONENT
        name = raw[base : base + _R.NAME.size].split(b"\0", 1)[0].decode("ascii", "replace")
        flags = _u(raw, base + _R.FLAGS.offset, 4)
        version = None
        if flags & _R.HAS_VERSION:
            at = base + _R.MIN_VERSION.offset
            a, b, c, d = (_u(raw, at + 2 * i, 2) for i in range(4))
            version = (a, b, c, d)
        svn = _u(raw, base + _R.MIN_SVN.offset, 4) if flags & _R.HAS_SVN else None
        floors[name] = ComponentFloor(min_version=version, min_svn=svn)

    def digests(base: int, count: int) -> frozenset[str]:
        return frozenset(
            raw[base + i * _R.DIGEST : base + (i + 1) * _R.DIGEST].hex() for i in range(count)
        )

    return RevocationPolicy(
        components=floors,
        revoked_certificates=digests(_R.CERTIFICATE_BASE, certificates),
        revoked_image_hashes=digests(_R.IMAGE_BASE, images),
    )


def read(sk: SecureKernel, cpu: Mem) -> RevocationPolicy | None:
    """The floors as SK memory holds them now (one read of the page through the SK's CPU)."""
    return decode(cpu.read(sk.revocation_va, PAGE_SIZE))


def host_read(ram: _Ram, sk: SecureKernel) -> RevocationPolicy | None:
    return decode(ram.read(sk.revocation_gpa, PAGE_SIZE))
