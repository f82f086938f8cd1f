"""SSL torrents between real libtorrent sessions: only a node the dataset's CA signed gets a byte.

The certificates come from the controller's real `SwarmAuthority`, for the real node identities
agents publish; only the StorageNode and Dataset records around them are left out.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from cairn.controller.datasets.swarm_authority import SEED_BYTES, SwarmAuthority
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.session import TorrentEvent, TorrentFailed, TorrentMeta, TorrentNode, make_torrent
from tests.unit.node_agent.p2p.test_session import NESTED, KiB, same_tree, wait_for, write_dataset

SEEDER, MEMBER, OUTSIDER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def authority() -> SwarmAuthority:
    return SwarmAuthority(secrets.token_bytes(SEED_BYTES))


@pytest.fixture
def tls_nodes(tmp_path: Path) -> Iterator[Callable[[str, str], tuple[TorrentNode, PeerIdentity]]]:
    started: list[TorrentNode] = []

    def start(address: str, name: str) -> tuple[TorrentNode, PeerIdentity]:
        node = TorrentNode(address, tls=True)
        started.append(node)
        return node, PeerIdentity.create(name, tmp_path / "identities" / name)

    yield start
    for node in started:
        node.close()


def ssl_dataset(tmp_path: Path, ca_pem: str) -> tuple[Path, TorrentMeta]:
    root = tmp_path / "origin" / "corpus"
    write_dataset(root, NESTED)
    return root, make_torrent(root, 64 * KiB, root_certificate=ca_pem)


Nodes = Callable[[str, str], tuple[TorrentNode, PeerIdentity]]


def certify(node: TorrentNode, identity: PeerIdentity, info_hash: str, certificate: str) -> None:
    node.set_certificate(info_hash, certificate, identity.key_path.read_text())


def signed(authority: SwarmAuthority, ca: str, identity: PeerIdentity) -> str:
    return authority.node_certificate("uid-corpus", ca, identity.node_name, identity.certificate_pem)


def ask_the_seeder(node: TorrentNode, seeder: TorrentNode, info_hash: str) -> list[TorrentEvent]:
    """Point `node` at the seeder and give it 3 s: libtorrent retries a peer about once a second."""
    node.add_peers(info_hash, [(SEEDER, seeder.port)])
    events: list[TorrentEvent] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        events += node.poll_alerts(0.1)
    return events


def test_a_node_the_datasets_ca_signed_downloads_and_one_it_did_not_gets_nothing(
    tmp_path: Path,
    authority: SwarmAuthority,
    tls_nodes: Nodes,
) -> None:
    ca = authority.ca_certificate("uid-corpus", "team-a", "corpus")
    origin, meta = ssl_dataset(tmp_path, ca)
    (seeder, seeder_id), (member, member_id) = tls_nodes(SEEDER, "node-a"), tls_nodes(MEMBER, "node-b")
    outsider, outsider_id = tls_nodes(OUTSIDER, "node-c")
    # node-c is a Cairn agent too, but a target only of another dataset: its certificate is real,
    # signed by the same controller, just not by this dataset's CA.
    other_ca = authority.ca_certificate("uid-other", "team-b", "other")
    outsider_certificate = authority.node_certificate(
        "uid-other", other_ca, "node-c", outsider_id.certificate_pem
    )

    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    certify(seeder, seeder_id, info_hash, signed(authority, ca, seeder_id))
    outsider.download(meta.torrent, tmp_path / "node-c")
    certify(outsider, outsider_id, info_hash, outsider_certificate)
    ask_the_seeder(outsider, seeder, info_hash)
    assert outsider.status(info_hash).total_payload_download == 0
    assert seeder.status(info_hash).total_payload_upload == 0

    member.download(meta.torrent, tmp_path / "node-b")
    certify(member, member_id, info_hash, signed(authority, ca, member_id))
    member.add_peers(info_hash, [(SEEDER, seeder.port)])
    wait_for(lambda: member.status(info_hash).is_seeding, 20, "the signed member finishing")
    member.flush(info_hash)
    assert same_tree(origin, tmp_path / "node-b")
    assert outsider.status(info_hash).total_payload_download == 0


def test_a_certificate_for_another_nodes_key_is_useless(
    tmp_path: Path,
    authority: SwarmAuthority,
    tls_nodes: Nodes,
) -> None:
    ca = authority.ca_certificate("uid-corpus", "team-a", "corpus")
    origin, meta = ssl_dataset(tmp_path, ca)
    (seeder, seeder_id), (thief, thief_id) = tls_nodes(SEEDER, "node-a"), tls_nodes(OUTSIDER, "node-c")
    member_id = PeerIdentity.create("node-b", tmp_path / "identities" / "node-b-elsewhere")
    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    certify(seeder, seeder_id, info_hash, signed(authority, ca, seeder_id))
    # The certificates are public (they sit in the Dataset's status); node-b's is no use without
    # node-b's private key, which never leaves node-b.
    stolen = authority.node_certificate("uid-corpus", ca, "node-b", member_id.certificate_pem)
    thief.download(meta.torrent, tmp_path / "node-c")
    certify(thief, thief_id, info_hash, stolen)
    events = ask_the_seeder(thief, seeder, info_hash)
    assert TorrentFailed(info_hash, "key values mismatch (x509 certificate routines)") in events
    assert thief.status(info_hash).total_payload_download == 0
    assert seeder.status(info_hash).total_payload_upload == 0


def test_the_authority_signs_each_nodes_own_key_keeps_what_holds_and_re_signs_a_new_key(
    tmp_path: Path,
) -> None:
    seed = secrets.token_bytes(SEED_BYTES)
    authority = SwarmAuthority(seed)
    a = PeerIdentity.create("node-a", tmp_path / "a")
    b = PeerIdentity.create("node-b", tmp_path / "b")
    first = authority.credentials("uid-1", "team-a", "corpus", None, {"node-a": a.certificate_pem})
    assert set(first.node_certificates) == {"node-a"}
    again = authority.credentials(
        "uid-1", "team-a", "corpus", first, {"node-a": a.certificate_pem, "node-b": b.certificate_pem}
    )
    assert again.ca_certificate == first.ca_certificate  # part of every info-hash: never re-made
    assert again.node_certificates["node-a"] == first.node_certificates["node-a"]
    restarted = PeerIdentity.create("node-a", tmp_path / "a")  # a restarted agent has a new key
    renewed = authority.credentials("uid-1", "team-a", "corpus", again, {"node-a": restarted.certificate_pem})
    assert renewed.node_certificates["node-a"] != again.node_certificates["node-a"]
    assert renewed.node_certificates["node-b"] == again.node_certificates["node-b"]
    # Another controller replica, with the same seed, signs with the same CA key.
    replica = SwarmAuthority(seed)
    leaf = replica.node_certificate("uid-1", first.ca_certificate, "node-b", b.certificate_pem)
    ca = x509.load_pem_x509_certificate(first.ca_certificate.encode())
    x509.load_pem_x509_certificate(leaf.encode()).verify_directly_issued_by(ca)
    with pytest.raises(InvalidSignature):
        other = SwarmAuthority(secrets.token_bytes(SEED_BYTES)).node_certificate(
            "uid-1", first.ca_certificate, "node-b", b.certificate_pem
        )
        x509.load_pem_x509_certificate(other.encode()).verify_directly_issued_by(ca)


def test_a_torrent_rejoined_with_its_bans_forgiven_still_presents_its_certificate(
    tmp_path: Path,
    authority: SwarmAuthority,
    tls_nodes: Nodes,
) -> None:
    """Rejoining re-adds the torrent to the session; without its certificate no peer would take it."""
    ca = authority.ca_certificate("uid-corpus", "team-a", "corpus")
    origin, meta = ssl_dataset(tmp_path, ca)
    (seeder, seeder_id), (member, member_id) = tls_nodes(SEEDER, "node-a"), tls_nodes(MEMBER, "node-b")
    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    certify(seeder, seeder_id, info_hash, signed(authority, ca, seeder_id))
    member.download(meta.torrent, tmp_path / "node-b")
    certify(member, member_id, info_hash, signed(authority, ca, member_id))

    member.forgive_peers(info_hash)
    member.add_peers(info_hash, [(SEEDER, seeder.port)])

    wait_for(lambda: member.status(info_hash).is_seeding, 20, "the rejoined member finishing")
    member.flush(info_hash)
    assert same_tree(origin, tmp_path / "node-b")
