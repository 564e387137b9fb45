"""The model PKI's public half: where it is stored and its certificates, never a private key.

The hierarchy itself (root → intermediate → EKU-bearing leaves, RSA-2048, generated on first
use) and everything that signs live host side in :mod:`vbsim.signing`, the model's stand-in for
Microsoft's signing service.  This module is what verification code may use: the data
directory, the files' location, and the *public* certificates, loaded from the PEM files
(``root.pem``, ``intermediate.pem``).  A kernel does not even call this to decide: the root it
trusts is a copy in its own memory (``vbsim.image.anchors``), written there at load time.

Storage: ``$VBSIM_DATA_DIR``, else ``$XDG_DATA_HOME/vbsim``, else ``~/.local/share/vbsim``, in
``pki/v1/<name>/`` as PEM files (so ``osslsigncode`` can use them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vbsim.image.trust import TrustStore

MODEL_ROOT_NAME = "vbsim model root"
OTHER_ROOT_NAME = "vbsim other root"
LAYOUT_VERSION = "v1"


class PkiError(Exception):
    """The stored PKI exists but cannot be loaded."""


def data_dir() -> Path:
    """vbsim's per-user data directory."""
    explicit = os.environ.get("VBSIM_DATA_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "vbsim"


def pki_directory(name: str, base: Path | None = None) -> Path:
    """Where the hierarchy whose root is called ``name`` is stored."""
    root_dir = (base if base is not None else data_dir()).expanduser().resolve()
    return root_dir / "pki" / LAYOUT_VERSION / name.replace(" ", "-")


@dataclass(frozen=True)
class PublicPki:
    """A hierarchy's public certificates: what anyone may hold (no key)."""

    name: str
    directory: Path
    root: x509.Certificate
    intermediate: x509.Certificate

    def trust_store(self) -> TrustStore:
        return TrustStore((self.root,))

    @property
    def root_der(self) -> bytes:
        """The root certificate, DER (what a kernel's CI data carries: ``vbsim.image.anchors``)."""
        return self.root.public_bytes(serialization.Encoding.DER)

    def path(self, filename: str) -> Path:
        """A file of the stored PKI: ``root.pem``, ``chain-<profile>.pem`` ..."""
        return self.directory / filename


_cache: dict[Path, PublicPki] = {}


def public_pki(name: str, base: Path | None = None) -> PublicPki:
    """The public certificates of the hierarchy ``name``.  A hierarchy not generated yet is
    generated first, host side (:mod:`vbsim.signing`); only its certificates come back."""
    directory = pki_directory(name, base)
    known = _cache.get(directory)
    if known is not None:
        return known
    if not (directory / "root.pem").is_file():
        from vbsim.signing.pki import load_pki  # host side: generates the keys on disk

        load_pki(name, base)
    try:
        loaded = PublicPki(
            name,
            directory,
            x509.load_pem_x509_certificate((directory / "root.pem").read_bytes()),
            x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes()),
        )
    except (OSError, ValueError) as exc:
        raise PkiError(
            f"cannot load the PKI in {directory}: {exc} (delete it to regenerate)"
        ) from exc
    _cache[directory] = loaded
    return loaded


def model_pki(base: Path | None = None) -> PublicPki:
    """The model PKI's public half ("vbsim model root"): its root for verifiers and tools.
    Signing with it is :func:`vbsim.signing.model_pki`'s (host side)."""
    return public_pki(MODEL_ROOT_NAME, base)


def other_root(base: Path | None = None) -> PublicPki:
    """The public half of the unrelated hierarchy ("vbsim other root")."""
    return public_pki(OTHER_ROOT_NAME, base)
