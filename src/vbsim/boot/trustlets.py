"""Trustlet image files: real PE32+ files with ``.tPolicy``, Authenticode-signed with the IUM
profile (host side: the model's build lab; guest code never imports this module).

Built once per PKI and cached.  What the trustlets are (names, IDs, entry routines, policies,
default versions) is ``vbsim.ium.images``.
"""

from __future__ import annotations

import functools

from vbsim.image import ComponentVersion, ImageKind, TrustletPolicy, build_image, data_dir
from vbsim.ium.images import TRUSTLETS, Installed, Version, Versioned
from vbsim.signing import Signer, model_pki, sign_image


def trustlet_image(
    name: str,
    *,
    trustlet_id: int | None = None,
    entry: str | None = None,
    debug: bool = False,
    component: Versioned | None = None,
    signer: Signer | None = None,
    size: int | None = None,
    routines: tuple[str, ...] = (),
    capabilities: int | None = None,
) -> bytes:
    """A signed trustlet image; keyword overrides make home-made or mismatched variants."""
    known_id, known_entry, extra, known_caps, parent_sd = TRUSTLETS.get(
        name, (0, "", (), None, None)
    )
    capabilities = known_caps if capabilities is None else capabilities
    comp = component or Version()
    policy = TrustletPolicy.standard(
        known_id if trustlet_id is None else trustlet_id,
        svn=comp.svn,
        debug=debug,
        capabilities=capabilities,
        parent_sd=parent_sd,
    )
    version = ComponentVersion.parse(_four(comp.version), svn=comp.svn)
    routine = entry or known_entry
    exported = [routine, *extra, *(r for r in routines if r != routine)]
    image = build_image(ImageKind.TRUSTLET, name, routine, exported, policy, version, size=size)
    return sign_image(image, signer or model_pki().signer("ium"))


@functools.lru_cache(maxsize=32)
def _cached(name: str, version: str, svn: int, tampered: bool, pki_dir: str) -> bytes:
    data = trustlet_image(name, component=Version(version, svn))
    if tampered:
        raw = bytearray(data)
        raw[0x400 + 40] ^= 0xFF
        return bytes(raw)
    return data


def installed(name: str, component: Installed) -> bytes:
    """The image on disk for an installed trustlet (cached per PKI)."""
    return _cached(name, component.version, component.svn, component.tampered, str(data_dir()))


def _four(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts + ["0"] * (4 - len(parts)))
