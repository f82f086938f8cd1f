"""Who is on the other end of a peer connection: each agent's own key and certificate.

Every agent makes a fresh key pair when it starts, keeps the private key on its node (a 0600 file
in a 0700 directory under its state directory, never sent anywhere), and publishes only the
self-signed certificate in its own StorageNode's status. That StorageNode is the trust anchor: the
admission policy lets only the agent of node N write StorageNode N, so a certificate found there
speaks for N. Peers pin it: a server trusts exactly the certificates the StorageNodes publish and
names the client by the one it presented; a client trusts only the certificate of the node it meant
to reach. No CA exists whose key could sign for every node.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cairn.certificates import issue_certificate

PEER_IDENTITY_DIR = "peer-identity"
"""Under the agent's state directory; a root CLI on the node finds the pair there."""
CERTIFICATE_FILE = "peer.crt"
KEY_FILE = "peer.key"
VALIDITY = datetime.timedelta(days=365)


class IdentityError(Exception):
    """This node's peer identity cannot be made or read; the message says why."""


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    """The SHA-256 of a PEM certificate's DER form; IdentityError if it is not one."""
    try:
        return fingerprint(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError as error:
        raise IdentityError(f"not a PEM certificate: {error}") from None


@dataclass(frozen=True)
class PeerIdentity:
    node_name: str
    certificate_pem: str
    certificate_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return pem_fingerprint(self.certificate_pem)

    @classmethod
    def create(cls, node_name: str, directory: Path) -> PeerIdentity:
        """A new key and certificate for this node, replacing any earlier pair in `directory`."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)])
        both_ends = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        pem = issue_certificate(
            subject,
            key.public_key(),
            subject,
            key,
            datetime.datetime.now(datetime.UTC) + VALIDITY,
            [
                (x509.SubjectAlternativeName([x509.DNSName(node_name)]), False),
                (x509.BasicConstraints(ca=False, path_length=None), True),
                (both_ends, False),
            ],
        )
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(directory / KEY_FILE, key_bytes)
        _write_private(directory / CERTIFICATE_FILE, pem.encode())
        return cls(node_name, pem, directory / CERTIFICATE_FILE, directory / KEY_FILE)

    @classmethod
    def load(cls, node_name: str, directory: Path) -> PeerIdentity:
        """The pair the running agent of this node made (for a root CLI on the node)."""
        try:
            pem = (directory / CERTIFICATE_FILE).read_text()
            (directory / KEY_FILE).stat()
        except OSError as error:
            raise IdentityError(
                f"no peer identity of node {node_name} in {directory} ({error.strerror}); "
                "is its agent running, and are you root on that node?"
            ) from None
        return cls(node_name, pem, directory / CERTIFICATE_FILE, directory / KEY_FILE)

    def server_context(self, trusted_pems: Iterable[str]) -> ssl.SSLContext:
        """TLS for the peer server: a client must present one of `trusted_pems`, nothing else."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.certificate_path, self.key_path)
        context.verify_mode = ssl.CERT_REQUIRED
        _trust_exactly(context, trusted_pems)
        return context

    def client_context(self, server_pem: str) -> ssl.SSLContext:
        """TLS to one peer: it must present `server_pem` (what its StorageNode publishes); we show ours."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # pinned to the certificate itself, not to a name or address
        context.load_cert_chain(self.certificate_path, self.key_path)
        _trust_exactly(context, [server_pem])
        return context


def _trust_exactly(context: ssl.SSLContext, pems: Iterable[str]) -> None:
    # Each published certificate is its own anchor: partial-chain lets a self-signed leaf stand alone.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    bundle = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems)
    if bundle:
        context.load_verify_locations(cadata=bundle)


def _write_private(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
