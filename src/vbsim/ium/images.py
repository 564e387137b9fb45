"""The trustlets vbsim ships: names, IDs, entry routines, policies and default versions.

The signed image files are built host side (``vbsim.boot.trustlets``: the model's build lab
signs them with the IUM profile); nothing here signs.  ``LsaIso.exe`` (ID 1, Credential Guard)
and ``vmsp.exe`` (ID 2, a vTPM-like trustlet with the secure-storage capability) follow
vbs-internals §3.2's policies: LsaIso ETW on, debug off, crash dump off; vmsp with a parent
security descriptor ``S-1-5-83-0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

# The trustlets' code must be registered wherever their images can run.
from vbsim.ium import lsaiso as _lsaiso  # noqa: F401
from vbsim.ium import vmsp as _vmsp  # noqa: F401


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
TRUSTLETS: Mapping[str, tuple[int, str, tuple[str, ...], int | None, str | None]] = (
    MappingProxyType(
        {
            LSAISO: (1, "lsaiso.main", (), None, None),
            VMSP: (2, "vmsp.main", (), 2, "S-1-5-83-0"),
        }
    )
)
