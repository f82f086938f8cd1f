"""Who may join a dataset's swarm: one CA per dataset, and one certificate per target node.

Each part's torrent embeds its dataset's CA certificate (libtorrent's SSL torrents), and libtorrent
then admits a peer only over TLS with a certificate that CA signed. The controller signs one for
each target node, for the public key that node's agent publishes in its StorageNode (the admission
policy lets only that agent write it), so the private key stays on the node and a node that is no
target, or a process that only shares a node's address, cannot take part.

The CA's private key is never stored: it is derived from one cluster secret and the dataset's uid,
so every controller replica, now or after a restart, signs with the same key. The CA certificate
itself is made once and kept in the Dataset's status, because it is part of every info-hash.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cairn.api.dataset import SwarmCredentials
from cairn.certificates import issue_certificate, same_public_key

SEED_BYTES = 32
SWARM_AUTHORITY_SECRET = "cairn-swarm-authority"
"""In the controller's namespace: the one seed every dataset's CA key is derived from."""
VALIDITY = datetime.timedelta(days=3650)
"""As long as the dataset: a part's info-hash depends on its CA certificate, so it never changes."""
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


class SwarmAuthority:
    def __init__(self, seed: bytes) -> None:
        if len(seed) < SEED_BYTES:
            raise ValueError(f"the swarm authority's seed must be at least {SEED_BYTES} bytes")
        self._seed = seed

    def _key(self, dataset_uid: str) -> ec.EllipticCurvePrivateKey:
        digest = hmac.new(self._seed, f"cairn swarm ca/{dataset_uid}".encode(), hashlib.sha512).digest()
        return ec.derive_private_key(int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())

    def ca_certificate(self, dataset_uid: str, namespace: str, name: str) -> str:
        key = self._key(dataset_uid)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cairn swarm {namespace}/{name}"[:64])])
        signs_certificates_only = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        return issue_certificate(
            subject,
            key.public_key(),
            subject,
            key,
            datetime.datetime.now(datetime.UTC) + VALIDITY,
            [(x509.BasicConstraints(ca=True, path_length=0), True), (signs_certificates_only, True)],
        )

    def node_certificate(self, dataset_uid: str, ca_pem: str, node: str, node_pem: str) -> str:
        """A certificate for `node`'s published key, signed by the dataset's CA; valid for its swarm only."""
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        return issue_certificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]),
            x509.load_pem_x509_certificate(node_pem.encode()).public_key(),
            ca.subject,
            self._key(dataset_uid),
            ca.not_valid_after_utc,
            [
                # libtorrent accepts a peer named as the torrent or "*"; the CA is this dataset's alone.
                (x509.SubjectAlternativeName([x509.DNSName("*")]), False),
                (x509.BasicConstraints(ca=False, path_length=None), True),
            ],
        )

    def credentials(
        self,
        dataset_uid: str,
        namespace: str,
        name: str,
        current: SwarmCredentials | None,
        published: dict[str, str],
    ) -> SwarmCredentials:
        """The swarm credentials for these targets: `published` maps each target to its agent's PEM.

        The CA certificate is kept once made; a node's certificate is kept while it is for the key
        its agent publishes now and re-signed when the agent's key changed. A node that is no longer
        a target keeps its entry: what was issued cannot be taken back (it holds the data anyway).
        """
        ca_pem = current.ca_certificate if current else self.ca_certificate(dataset_uid, namespace, name)
        held = current.node_certificates if current else {}
        issued = dict(held)
        for node, node_pem in sorted(published.items()):
            existing = held.get(node)
            if existing is not None and same_public_key(existing, node_pem):
                issued[node] = existing
            else:
                issued[node] = self.node_certificate(dataset_uid, ca_pem, node, node_pem)
        return SwarmCredentials(ca_certificate=ca_pem, node_certificates=issued)
