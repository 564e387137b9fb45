"""The model's own PKI with its private keys: what plays Microsoft's signing service (host side).

Never a real vendor key.  This package (:mod:`vbsim.signing`) is the only place that holds a
private key or signs: the disk builders (``vbsim.boot.disk``), the CLI's ``image sign`` and tests
use it; guest code (NT, the Secure Kernel, IUM, attack steps) never imports it.  What a kernel
may contain — parsing, Authenticode digests, chain building and CMS signature checks over public
keys, the public root certificate — is :mod:`vbsim.image`.

The root ("vbsim model root") is created on first use and stored under the user's data
directory: ``$VBSIM_DATA_DIR``, else ``$XDG_DATA_HOME/vbsim``, else
``~/.local/share/vbsim``, in ``pki/<name>/`` as PEM files (so ``osslsigncode`` can use them).
A PKI is generated in a scratch directory and renamed into place, so concurrent first uses never
see a half-written one.  Loaded PKIs are cached in memory too.  Keys are RSA-2048.

Profiles (leaf certificates, all sharing the PKI's leaf key; EKUs from vbs-internals §3.4):
``ium`` code signing + Windows System Component Verification + IUM (trustlets), ``windows``
code signing + WSCV (hypervisor, Secure Kernel, NT), ``codesign`` code signing only.
:func:`other_pki` is a separate hierarchy ("vbsim other root") for negative tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vbsim.image.pki import (
    MODEL_ROOT_NAME,
    OTHER_ROOT_NAME,
    PkiError,
    data_dir,
    pki_directory,
)
from vbsim.image.signing_level import EKU_CODE_SIGNING, EKU_IUM, EKU_WINDOWS_SYSTEM_COMPONENT
from vbsim.image.trust import TrustStore
from vbsim.signing.signer import Signer

__all__ = ["MODEL_ROOT_NAME", "OTHER_ROOT_NAME", "PROFILES", "Pki", "PkiError", "data_dir"]
_NOT_BEFORE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
_NOT_AFTER = dt.datetime(2070, 1, 1, tzinfo=dt.UTC)
PROFILES: dict[str, tuple[str, ...]] = {
    "ium": (EKU_CODE_SIGNING, EKU_WINDOWS_SYSTEM_COMPONENT, EKU_IUM),
    "windows": (EKU_CODE_SIGNING, EKU_WINDOWS_SYSTEM_COMPONENT),
    "codesign": (EKU_CODE_SIGNING,),
}


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vbsim model PKI (not a real vendor)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    ekus: Iterable[str] | None = None,
) -> x509.Certificate:
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer.subject)
        .public_key(public)
        .serial_number(_serial(subject, public))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    authority = issuer_key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False
    )
    if ekus is not None:
        usages = [x509.ObjectIdentifier(oid) for oid in ekus]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _serial(subject: str, public: rsa.RSAPublicKey) -> int:
    """A positive 152-bit serial (RFC 5280 §4.1.2.2: unique per issuer, at most 20 octets) from
    the subject and its key.  Fixed length, unlike ``x509.random_serial_number``'s: a
    certificate's DER size, and with it every signed image's layout in guest memory, must not
    vary from run to run (a replayed soak depends on it)."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    digest = hashlib.sha256(subject.encode() + b"\0" + der).digest()
    return int.from_bytes(digest[:19], "big") | (1 << 151)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    """One certificate hierarchy: root -> intermediate -> leaves."""

    name: str
    directory: Path
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    intermediate: x509.Certificate
    intermediate_key: rsa.RSAPrivateKey
    leaf_key: rsa.RSAPrivateKey
    profiles: dict[str, x509.Certificate]
    _custom: dict[tuple[frozenset[str], str], Signer] = field(default_factory=dict, repr=False)

    def signer(self, profile: str = "ium") -> Signer:
        """The stored signer for ``profile`` (see :data:`PROFILES`)."""
        return Signer(self.leaf_key, self.profiles[profile], (self.intermediate,))

    def make_leaf(self, ekus: Iterable[str], common_name: str | None = None) -> Signer:
        """A leaf (in-memory, cached) carrying exactly ``ekus``, issued by the intermediate.

        With no EKUs the certificate has no EKU extension at all (an empty one is invalid).
        """
        wanted = frozenset(ekus)
        cn = common_name or f"{self.name.removesuffix(' root')} custom signer"
        cached = self._custom.get((wanted, cn))
        if cached is None:
            cert = _issue(
                cn,
                self.leaf_key,
                self.intermediate,
                self.intermediate_key,
                ca=False,
                ekus=sorted(wanted) or None,
            )
            cached = self._custom[(wanted, cn)] = Signer(self.leaf_key, cert, (self.intermediate,))
        return cached

    def trust_store(self) -> TrustStore:
        return TrustStore((self.root,))

    def path(self, filename: str) -> Path:
        """A file of the stored PKI: ``root.pem``, ``chain-<profile>.pem``, ``leaf.key`` ..."""
        return self.directory / filename


def _generate(name: str, target: Path) -> None:
    root_key, intermediate_key, leaf_key = _new_key(), _new_key(), _new_key()
    root = _issue(name, root_key, None, root_key, ca=True)
    base = name.removesuffix(" root")
    intermediate_cn = f"{base} intermediate CA"
    intermediate = _issue(intermediate_cn, intermediate_key, root, root_key, ca=True, path_length=0)
    files = {
        "root.pem": _pem(root),
        "root.key": _key_pem(root_key),
        "intermediate.pem": _pem(intermediate),
        "intermediate.key": _key_pem(intermediate_key),
        "leaf.key": _key_pem(leaf_key),
    }
    for profile, ekus in PROFILES.items():
        cn = f"{base} {profile} signer"
        leaf = _issue(cn, leaf_key, intermediate, intermediate_key, ca=False, ekus=ekus)
        files[f"leaf-{profile}.pem"] = _pem(leaf)
        files[f"chain-{profile}.pem"] = _pem(leaf) + _pem(intermediate)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for filename, content in files.items():
            path = scratch / filename
            path.write_bytes(content)
            if filename.endswith(".key"):
                path.chmod(0o600)
        os.rename(scratch, target)  # atomic; fails if another process won the race
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PkiError(f"{path} is not an RSA key")
    return key


def _load(name: str, directory: Path) -> Pki:
    try:
        return Pki(
            name=name,
            directory=directory,
            root=x509.load_pem_x509_certificate((directory / "root.pem").read_bytes()),
            root_key=_load_key(directory / "root.key"),
            intermediate=x509.load_pem_x509_certificate(
                (directory / "intermediate.pem").read_bytes()
            ),
            intermediate_key=_load_key(directory / "intermediate.key"),
            leaf_key=_load_key(directory / "leaf.key"),
            profiles={
                p: x509.load_pem_x509_certificate((directory / f"leaf-{p}.pem").read_bytes())
                for p in PROFILES
            },
        )
    except (OSError, ValueError) as exc:
        raise PkiError(
            f"cannot load the PKI in {directory}: {exc} (delete it to regenerate)"
        ) from exc


_cache: dict[tuple[Path, str], Pki] = {}


def load_pki(name: str, base: Path | None = None) -> Pki:
    """The hierarchy whose root is called ``name``, generated on first use."""
    root_dir = (base if base is not None else data_dir()).expanduser().resolve()
    key = (root_dir, name)
    if key not in _cache:
        directory = pki_directory(name, root_dir)
        if not directory.is_dir():
            _generate(name, directory)
        _cache[key] = _load(name, directory)
    return _cache[key]


def model_pki(base: Path | None = None) -> Pki:
    """The model's PKI ("vbsim model root")."""
    return load_pki(MODEL_ROOT_NAME, base)


def other_pki(base: Path | None = None) -> Pki:
    """An unrelated hierarchy ("vbsim other root"), for chain-to-another-root tests."""
    return load_pki(OTHER_ROOT_NAME, base)
