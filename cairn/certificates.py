"""X.509 certificates: issuing them and comparing them by key, for who signs and who presents them."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


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


def issue_certificate(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Name,
    signing_key: ec.EllipticCurvePrivateKey,
    not_after: datetime.datetime,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> str:
    """A PEM certificate for `public_key`, signed by `signing_key`, with (extension, critical) pairs.

    Valid from five minutes ago: the clocks of the nodes that check it drift a little.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
