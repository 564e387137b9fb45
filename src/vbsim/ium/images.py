"""Trustlet images: real PE32+ files with ``.tPolicy``, Authenticode-signed with the IUM profile.

Built once per PKI and cached.  ``LsaIso.exe`` (ID 1, Credential Guard) and ``vmsp.exe`` (ID 2, a
vTPM-like trustlet with the secure-storage capability) follow vbs-internals §3.2's policies: LsaIso
ETW on, debug off, crash dump off; vmsp with a parent security descriptor ``S-1-5-83-0``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from vbsim.image import ComponentVersion, ImageKind, TrustletPolicy, build_image, data_dir

# The trustlets' code must be registered wherever their images can run.
from vbsim.ium import lsaiso as _lsaiso  # noqa: F401
from vbsim.ium import vmsp as _vmsp  # noqa: F401

# A host-side tool in a guest package: it builds and *signs* the trustlet files of the model's
# disk, as Microsoft's build lab does.  No guest code calls it (trustlets are started from the
# image bytes NT reads from disk); the one-rule checker must count it as host side or it must
# move out of ``vbsim.ium`` once guest code is barred from ``vbsim.signing``.
from vbsim.signing import Signer, model_pki, sign_image


class Versioned(Protocol):
    """What an image build needs of a component (``vbsim.policy.Component`` has it): the file
    version and the security version number."""

    @property
    def version(self) -> str: ...

    @property
    def svn(self) -> int: ...


class Installed(Versioned, Protocol):
    @property
    def tampered(self) -> bool: ...


@dataclass(frozen=True)
class Version:
    #: The installed default (``vbsim.policy.Component()``; tests/ium check they agree).
    version: str = "10.0.26100.2314"
    svn: int = 7


LSAISO = "LsaIso.exe"
VMSP = "vmsp.exe"
#: Image → (trustlet ID, entry routine, other exported routines, capabilities, parent SD).
TRUSTLETS: dict[str, tuple[int, str, tuple[str, ...], int | None, str | None]] = {
    LSAISO: (1, "lsaiso.main", (), None, None),
    VMSP: (2, "vmsp.main", (), 2, "S-1-5-83-0"),
}


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
