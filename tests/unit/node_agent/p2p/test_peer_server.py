"""The peer server admits only Cairn agents, authorises each request, and cannot be held by a client.

Real TLS on 127.0.0.1 throughout. The hostile clients bind 127.0.0.2, so per-address limits on them
leave the real peer (127.0.0.1) alone, as two machines would.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cairn.api.volume import LocalVolume, LocalVolumeSpec, PopulateSource
from cairn.node_agent.checkpoints.restore.engine import PeerSource, checkpoint_url_path
from cairn.node_agent.manifests import MANIFEST_NAME, Manifest, build_manifest
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.authorisation import CheckpointCopy, dataset_read_refusal
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.peer_server import VOLUME_HEADER, PeerDirectory, PeerRefused, PeerServer
from tests.unit.node_agent.p2p.peers import Identities, get, peer_server, published

NAMESPACE, NAME = "team-a", "trainer-step-100"
MANIFEST_PATH = checkpoint_url_path(NAMESPACE, NAME, "manifest")
ATTACKER = "127.0.0.2"


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    return Identities(tmp_path / "identities")


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, Manifest]:
    root = tmp_path / "copy"
    root.mkdir()
    (root / "__0_0.distcp").write_bytes(os.urandom(4096))
    manifest = build_manifest(root)
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root, manifest


def written_by(root: Path, manifest: Manifest, origin: str, replica: str | None = None) -> Callable:
    held = CheckpointCopy(NAMESPACE, NAME, root, manifest.digest, origin, replica)
    return lambda ns, name: held if (ns, name) == (NAMESPACE, NAME) else None


def volume(node: str, source: tuple[str, str] | None) -> LocalVolume:
    populate = PopulateSource(kind="Checkpoint", namespace=source[0], name=source[1]) if source else None
    return LocalVolume(
        spec=LocalVolumeSpec(csi_name="pvc-1", node_name=node, size_bytes=1 << 30, populate_from=populate)
    )


def tls_connect(server: PeerServer, context: ssl.SSLContext, source: str = ATTACKER) -> ssl.SSLSocket:
    raw = socket.create_connection(split_address(server.address), timeout=5, source_address=(source, 0))
    return context.wrap_socket(raw)


def test_a_client_without_a_certificate_is_refused_while_a_real_peer_is_served(
    identities: Identities, copy: tuple[Path, Manifest]
) -> None:
    root, manifest = copy
    with peer_server(identities, "n1", ["n2"], written_by(root, manifest, "n2")) as server:
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            sock = tls_connect(server, anonymous)
            sock.sendall(f"GET {MANIFEST_PATH} HTTP/1.0\r\n\r\n".encode())
            assert sock.recv(100) == b""  # TLS 1.3: the refusal may arrive only at the first read
            raise ConnectionResetError("closed without an answer")
        plain = socket.create_connection(split_address(server.address), timeout=5)
        plain.sendall(f"GET {MANIFEST_PATH} HTTP/1.0\r\n\r\n".encode())
        try:
            answer = plain.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # plain HTTP gets no answer at all, only a closed connection
        plain.close()
        status, body = get(server, MANIFEST_PATH, identities["n2"])
        assert status == 200 and Manifest.from_json(body).digest == manifest.digest
        deadline = time.monotonic() + 5
        while server.refused.get("tls") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.refused.get("tls") == 2


def test_a_certificate_no_storage_node_publishes_is_refused(
    identities: Identities, copy: tuple[Path, Manifest], tmp_path: Path
) -> None:
    root, manifest = copy
    # The same node name, its own key: what a pod on node n2 could make, without n2's private key.
    impostor = PeerIdentity.create("n2", tmp_path / "impostor")
    with peer_server(identities, "n1", ["n2"], written_by(root, manifest, "n2")) as server:
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            get(server, MANIFEST_PATH, impostor)
        assert get(server, MANIFEST_PATH, identities["n2"])[0] == 200


def test_another_nodes_certificate_gets_only_what_that_node_may_have(
    identities: Identities, copy: tuple[Path, Manifest]
) -> None:
    root, manifest = copy
    volumes = {
        "vol-n3-fills-it": volume("n3", (NAMESPACE, NAME)),
        "vol-n4-fills-it": volume("n4", (NAMESPACE, NAME)),
        "vol-n3-other": volume("n3", (NAMESPACE, "another-checkpoint")),
        "vol-n3-empty": volume("n3", None),
    }
    with peer_server(
        identities,
        "n1",
        ["n2", "n3", "n4", "n5"],
        written_by(root, manifest, origin="n2", replica="n5"),
        read_volume=volumes.get,
    ) as server:
        n3 = identities["n3"]
        status, body = get(server, MANIFEST_PATH, n3)
        assert status == 403 and b"node n3 neither wrote checkpoint team-a/trainer-step-100" in body
        for name, reason in [
            ("vol-n4-fills-it", b"is on node n4, not on n3"),
            ("vol-n3-other", b"is not being filled from checkpoint team-a/trainer-step-100"),
            ("vol-n3-empty", b"is not being filled from checkpoint"),
            ("vol-missing", b"names no volume it restores it into"),
        ]:
            status, body = get(server, MANIFEST_PATH, n3, {VOLUME_HEADER: name})
            assert (status, reason in body) == (403, True), (name, body)
        file_path = checkpoint_url_path(NAMESPACE, NAME, "files/__0_0.distcp")
        assert get(server, file_path, n3)[0] == 403
        status, body = get(server, file_path, n3, {VOLUME_HEADER: "vol-n3-fills-it"})
        assert status == 200 and body == (root / "__0_0.distcp").read_bytes()
        assert get(server, MANIFEST_PATH, identities["n2"])[0] == 200  # the node that wrote it
        assert get(server, MANIFEST_PATH, identities["n5"])[0] == 200  # the node named as its replica


def test_a_datasets_torrent_goes_only_to_its_targets(identities: Identities) -> None:
    def torrent(namespace: str, name: str, part: int, node: str) -> bytes:
        refusal = dataset_read_refusal(node, ["n1", "n2"], namespace, name)
        if refusal:
            raise PeerRefused(refusal)
        return b"d4:infod...ee"

    with peer_server(identities, "n1", ["n2", "n3"], lambda ns, n: None, dataset_torrent=torrent) as server:
        path = "/v1/datasets/team-a/corpus/parts/0/torrent"
        assert get(server, path, identities["n2"]) == (200, b"d4:infod...ee")
        status, body = get(server, path, identities["n3"])
        assert status == 403 and b"node n3 is not a target of dataset team-a/corpus" in body


def test_slow_loris_clients_are_cut_off_while_a_real_peer_is_served_at_once(
    identities: Identities, copy: tuple[Path, Manifest]
) -> None:
    root, manifest = copy
    with peer_server(
        identities,
        "n1",
        ["n2"],
        written_by(root, manifest, "n2"),
        per_address_limit=8,
        head_deadline=1.5,
    ) as server:
        # Thirty connections that never finish a handshake, and one authenticated agent that
        # trickles its request head a byte at a time.
        idle = [
            socket.create_connection(split_address(server.address), timeout=5, source_address=(ATTACKER, 0))
            for _ in range(30)
        ]
        context = identities["n2"].client_context(server.identity.certificate_pem)
        trickler = tls_connect(server, context, source="127.0.0.3")
        stop = threading.Event()

        def trickle() -> None:
            with pytest.raises(OSError):
                while not stop.is_set():
                    trickler.sendall(b"G")
                    time.sleep(0.2)

        dribbling = threading.Thread(target=trickle)
        dribbling.start()
        try:
            for _ in range(5):
                began = time.monotonic()
                status, _body = get(server, MANIFEST_PATH, identities["n2"], timeout=5)
                assert status == 200 and time.monotonic() - began < 1.0
            assert server.refused.get("too many pending") >= 30 - 8
            deadline = time.monotonic() + 5
            while server.refused.get("deadline") < 8 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.refused.get("deadline") >= 8  # every held connection was cut at its deadline
            dribbling.join(timeout=5)
            assert not dribbling.is_alive()  # the trickling agent was cut off too
        finally:
            stop.set()
            for sock in idle:
                sock.close()
            trickler.close()
        assert get(server, MANIFEST_PATH, identities["n2"])[0] == 200


def test_a_full_worker_pool_answers_503_at_once_and_recovers(identities: Identities) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_torrent(namespace: str, name: str, part: int, node: str) -> bytes:
        entered.release()
        release.wait(10)
        return b"torrent"

    with peer_server(
        identities, "n1", ["n2"], lambda ns, n: None, dataset_torrent=slow_torrent, workers=2, queue=0
    ) as server:
        path = "/v1/datasets/team-a/corpus/parts/0/torrent"
        results: list[tuple[int, bytes]] = []
        busy = [
            threading.Thread(target=lambda: results.append(get(server, path, identities["n2"])))
            for _ in range(2)
        ]
        for thread in busy:
            thread.start()
        assert entered.acquire(timeout=5) and entered.acquire(timeout=5)
        began = time.monotonic()
        status, body = get(server, path, identities["n2"])
        assert status == 503 and b"too busy" in body and time.monotonic() - began < 2
        release.set()
        for thread in busy:
            thread.join(timeout=10)
        assert results == [(200, b"torrent")] * 2
        assert get(server, path, identities["n2"]) == (200, b"torrent")


def test_the_peer_directory_names_nodes_by_their_published_certificate_and_follows_changes(
    identities: Identities,
) -> None:
    now = [0.0]
    listings = [[published("n1", "10.0.0.1:9750", identities["n1"])]]
    directory = PeerDirectory(lambda: listings[-1], min_interval=3, max_age=30, clock=lambda: now[0])
    assert directory.refresh_if_due()
    der = ssl.PEM_cert_to_DER_cert(identities["n1"].certificate_pem)
    assert directory.node_of(der) == "n1"
    listings.append([*listings[0], published("n2", "10.0.0.2:9750", identities["n2"])])
    now[0] = 1.0
    directory.mark_stale()
    assert not directory.refresh_if_due()  # at most every 3 s, even when a handshake failed
    now[0] = 3.5
    assert directory.refresh_if_due() and len(directory.trusted()) == 2
    listings.append([published("n2", "10.0.0.2:9750", identities["n2"])])
    now[0] = 40.0
    assert directory.refresh_if_due() and directory.node_of(der) is None  # a removed node is shut out


def test_a_node_that_joined_after_the_servers_last_listing_is_served_on_its_first_restore(
    identities: Identities, copy: tuple[Path, Manifest]
) -> None:
    root, manifest = copy
    nodes = [published("n2", None, identities["n2"])]
    directory = PeerDirectory(lambda: list(nodes))  # the agent's timings: re-listed 1 s after a refusal
    held = written_by(root, manifest, origin="n3")
    server = PeerServer("127.0.0.1:0", identities["n1"], directory, held).serve_in_background()
    try:
        nodes.append(published("n3", None, identities["n3"]))  # joins after the server listed
        tls = identities["n3"].client_context(server.identity.certificate_pem)
        source = PeerSource(server.address, NAMESPACE, NAME, tls, name="peer n1")
        assert Manifest.from_json(source.manifest_text()).digest == manifest.digest
        assert server.refused.get("tls") >= 1  # refused once, then trusted
    finally:
        server.close()


def test_one_unreadable_published_certificate_does_not_shut_the_others_out(
    identities: Identities, copy: tuple[Path, Manifest]
) -> None:
    root, manifest = copy
    broken = published("n9", None, None)
    broken.status.endpoints.peer_certificate = (
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    nodes = [published("n2", None, identities["n2"]), broken]
    server = PeerServer(
        "127.0.0.1:0", identities["n1"], PeerDirectory(lambda: nodes), written_by(root, manifest, "n2")
    ).serve_in_background()
    try:
        assert get(server, MANIFEST_PATH, identities["n2"])[0] == 200
    finally:
        server.close()
