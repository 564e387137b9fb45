"""Who signs: a private key, its certificate and the intermediates above it (host side)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Signer:
    """A signing key, its certificate, and the intermediates up to (not including) the root."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def chain_pem(self) -> bytes:
        """Leaf then intermediates, PEM (what ``osslsigncode sign -certs`` takes)."""
        certs = (self.certificate, *self.chain)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
