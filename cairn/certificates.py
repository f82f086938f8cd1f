"""Comparing X.509 certificates by the key they carry: shared by who signs and who presents them."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def same_public_key(certificate_pem: str, other_pem: str) -> bool:
    """Do two PEM certificates carry the same public key? False if either is unreadable."""
    try:
        keys = [
            x509.load_pem_x509_certificate(pem.encode())
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            for pem in (certificate_pem, other_pem)
        ]
    except ValueError:
        return False
    return keys[0] == keys[1]
