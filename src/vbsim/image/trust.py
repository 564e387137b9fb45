"""Whom a verifier trusts (a :class:`TrustStore`).  Who signs is host side
(:class:`vbsim.signing.Signer`): nothing here holds a private key."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from vbsim.image.memo import BytesMemo


@dataclass(frozen=True)
class TrustStore:
    """The roots a verifier accepts (the model's analogue of the Microsoft root list)."""

    roots: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(cls, pem: bytes) -> TrustStore:
        return cls(tuple(x509.load_pem_x509_certificates(pem)))

    @classmethod
    def from_der(cls, der: bytes) -> TrustStore:
        """A store of the one root ``der`` (a kernel's anchor, as read from its memory).
        Memoised by the exact bytes: decoding decides nothing, the chain is still checked.
        Raises ``ValueError`` for bytes that are not a certificate."""
        known = _FROM_DER.get(der)
        if known is None:
            known = cls((x509.load_der_x509_certificate(der),))
            _FROM_DER.put(der, known)
        return known

    def __add__(self, other: TrustStore) -> TrustStore:
        return TrustStore(self.roots + other.roots)


_FROM_DER: BytesMemo[TrustStore] = BytesMemo(16)
