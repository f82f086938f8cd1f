"""Restoring a checkpoint from real directories and a real peer server on 127.0.0.1, every byte verified."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointSpec,
    CheckpointStatus,
    HashAlgorithm,
    LocalCopy,
    RemoteCopy,
)
from cairn.api.disk import StorageNode
from cairn.node_agent.checkpoints.restore.engine import (
    PARTIAL_MARK,
    LocalDirectorySource,
    PeerSource,
    RestoreError,
    RestoreProgress,
    S3Source,
    SourceError,
    UnavailableSource,
    checkpoint_url_path,
    restore,
)
from cairn.node_agent.checkpoints.restore.plan import SourceKind
from cairn.node_agent.checkpoints.restore.sources import SourcesError, build_sources
from cairn.node_agent.manifests import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    build_manifest,
    verify_tree,
)
from cairn.node_agent.p2p.authorisation import CheckpointCopy
from cairn.node_agent.p2p.peer_server import PeerServer
from tests.unit.node_agent.p2p.peers import Identities, published
from tests.unit.node_agent.p2p.peers import get as peer_get
from tests.unit.node_agent.p2p.peers import peer_server as started_peer_server

MiB = 1024 * 1024
NAMESPACE = "team-a"
NAME = "trainer-step-100"


def write_checkpoint(root: Path) -> Manifest:
    """A DCP-like checkpoint with a subdirectory and an empty directory, and its manifest beside it."""
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "__0_0.distcp").write_bytes(os.urandom(3 * MiB))
    (root / "__1_0.distcp").write_bytes(os.urandom(MiB + 7))
    (root / "sub" / "extra.bin").write_bytes(b"extra")
    (root / ".metadata").write_bytes(os.urandom(8192))
    manifest = build_manifest(root)
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def flip_byte(path: Path, offset: int = 1000) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def names_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, Manifest]:
    root = tmp_path / "copy-a"
    return root, write_checkpoint(root)


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    return Identities(tmp_path / "identities")


@pytest.fixture
def peer_server(identities: Identities) -> Iterator[Callable[..., PeerServer]]:
    """Real TLS peer servers of node n1 on 127.0.0.1, trusting node n2; all stopped at the end."""
    with ExitStack() as stack:
        yield lambda locate: stack.enter_context(started_peer_server(identities, "n1", ["n2"], locate))


def serving(directory: Path, manifest: Manifest) -> Callable[[str, str], CheckpointCopy | None]:
    """A copy of the checkpoint that node n2 wrote, so n2 may read it back."""
    return lambda ns, name: (
        CheckpointCopy(ns, name, directory, manifest.digest, "n2", None)
        if (ns, name) == (NAMESPACE, NAME)
        else None
    )


def as_n2(identities: Identities, server: PeerServer) -> ssl.SSLContext:
    return identities["n2"].client_context(server.identity.certificate_pem)


def get(identities: Identities, server: PeerServer, what: str) -> tuple[int, bytes]:
    """GET a checkpoint path as node n2."""
    return peer_get(server, checkpoint_url_path(NAMESPACE, NAME, what), identities["n2"])


# -- restore --------------------------------------------------------------------------------------


def test_restore_from_a_local_directory_is_a_verified_copy(
    checkpoint: tuple[Path, Manifest], tmp_path: Path
) -> None:
    source_dir, manifest = checkpoint
    seen: list[RestoreProgress] = []
    destination = tmp_path / "restored" / "step_100"
    report = restore(manifest.digest, [LocalDirectorySource(source_dir)], destination, seen.append)
    assert verify_tree(destination, manifest) == []
    assert (destination / "empty").is_dir()
    assert Manifest.from_json((destination / MANIFEST_NAME).read_text()).digest == manifest.digest
    assert report.tiers == [SourceKind.LOCAL] and report.rejected == []
    assert report.by_tier[SourceKind.LOCAL].files == 4
    assert report.by_tier[SourceKind.LOCAL].bytes == manifest.total_bytes
    assert seen[-1].done_bytes == seen[-1].total_bytes == manifest.total_bytes
    assert not [p for p in names_under(destination) if PARTIAL_MARK in p]


def test_a_corrupt_file_at_the_first_source_falls_through_to_the_next(
    checkpoint: tuple[Path, Manifest],
    tmp_path: Path,
    peer_server: Callable[..., PeerServer],
    identities: Identities,
) -> None:
    good, manifest = checkpoint
    corrupt = tmp_path / "copy-b"
    shutil.copytree(good, corrupt)
    flip_byte(corrupt / "__1_0.distcp")
    server = peer_server(serving(corrupt, manifest))
    sources = [
        PeerSource(server.address, NAMESPACE, NAME, as_n2(identities, server), name="peer node-b"),
        LocalDirectorySource(good, SourceKind.S3, "s3"),
    ]
    # One stream: which files the peer served before its bad one is then a fixed order to check.
    report = restore(manifest.digest, sources, tmp_path / "out", hash_threads=1, streams=1)
    assert verify_tree(tmp_path / "out", manifest) == []
    assert [str(r) for r in report.rejected] == ["peer node-b: __1_0.distcp digest mismatch"]
    # Sorted order: .metadata and __0_0 came from the peer before the corrupt file; then S3 for the rest.
    assert report.by_source["peer node-b"].files == 2
    assert report.by_source["s3"].files == 2
    assert report.tiers == [SourceKind.PEER, SourceKind.S3]


def test_an_unreachable_or_unusable_source_falls_through(
    checkpoint: tuple[Path, Manifest],
    tmp_path: Path,
    peer_server: Callable[..., PeerServer],
    identities: Identities,
) -> None:
    good, manifest = checkpoint
    closed = peer_server(serving(good, manifest))
    address, tls = closed.address, as_n2(identities, closed)
    closed.close()
    sources = [
        UnavailableSource(SourceKind.LOCAL, "local", "node n1 publishes no peerRestoreAddress"),
        PeerSource(address, NAMESPACE, NAME, tls, name="peer gone", timeout=2),
        LocalDirectorySource(good, SourceKind.PEER, "peer n3"),
    ]
    report = restore(manifest.digest, sources, tmp_path / "out")
    assert verify_tree(tmp_path / "out", manifest) == []
    assert report.manifest_source == "peer n3"
    assert [r.source for r in report.rejected] == ["local", "peer gone"]
    assert "unreachable" in report.rejected[1].reason


def test_a_symlink_in_a_local_copy_is_not_followed(checkpoint: tuple[Path, Manifest], tmp_path: Path) -> None:
    good, manifest = checkpoint
    planted = tmp_path / "planted"
    shutil.copytree(good, planted)
    outside = tmp_path / "secret"
    shutil.copy(good / "__0_0.distcp", outside)  # identical bytes: only the symlink itself is wrong
    (planted / "__0_0.distcp").unlink()
    (planted / "__0_0.distcp").symlink_to(outside)
    destination = tmp_path / "out"
    report = restore(
        manifest.digest,
        [LocalDirectorySource(planted), LocalDirectorySource(good, SourceKind.S3, "s3")],
        destination,
        streams=1,  # the files in manifest order, so `.metadata` comes from the local copy first
    )
    assert [r.source for r in report.rejected] == ["local"]
    assert "__0_0.distcp cannot be opened" in report.rejected[0].reason
    assert report.by_source["local"].files == 1 and report.by_source["s3"].files == 3
    assert not (destination / "__0_0.distcp").is_symlink() and verify_tree(destination, manifest) == []


def test_no_verified_copy_of_a_file_fails_naming_it_and_leaves_no_unverified_file(
    checkpoint: tuple[Path, Manifest], tmp_path: Path
) -> None:
    good, manifest = checkpoint
    corrupt = tmp_path / "copy-b"
    shutil.copytree(good, corrupt)
    flip_byte(corrupt / "__0_0.distcp")
    (corrupt / "sub" / "extra.bin").write_bytes(b"extr")
    destination = tmp_path / "out"
    with pytest.raises(RestoreError) as failure:
        restore(manifest.digest, [LocalDirectorySource(corrupt, SourceKind.S3, "s3")], destination, streams=1)
    message = str(failure.value)
    assert "__0_0.distcp" in message and "s3: __0_0.distcp digest mismatch" in message
    # The source was dropped after its first bad file, so every later file has no source left either.
    assert failure.value.report is not None
    assert failure.value.report.failed_files == ["__0_0.distcp", "__1_0.distcp", "sub/extra.bin"]
    left = names_under(destination)
    assert left <= {".metadata", "sub"}  # verified before the corruption; nothing else, no partials
    assert MANIFEST_NAME not in left


def test_a_manifest_with_a_traversal_name_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "evil"
    source.mkdir()
    (source / "payload").write_bytes(b"owned")
    entries = (ManifestEntry("../escaped", 5, "blake3:" + "0" * 64),)
    # A manifest whose digest really covers the evil name, so only the name check can stop it.
    forged = object.__new__(Manifest)
    object.__setattr__(forged, "algorithm", HashAlgorithm.BLAKE3)
    object.__setattr__(forged, "files", entries)
    object.__setattr__(forged, "empty_dirs", ())
    document = {
        "format": "cairn.dev/checkpoint-manifest",
        "version": 1,
        "algorithm": "blake3",
        "totalBytes": 5,
        "digest": forged.digest,
        "files": [{"path": "../escaped", "size": 5, "digest": entries[0].digest}],
        "emptyDirs": [],
    }
    (source / MANIFEST_NAME).write_text(json.dumps(document))
    destination = tmp_path / "out"
    with pytest.raises(RestoreError, match=r"'\.\.' part"):
        restore(forged.digest, [LocalDirectorySource(source)], destination)
    assert not (tmp_path / "escaped").exists()
    assert list(destination.iterdir()) == []


def test_a_manifest_with_another_digest_is_refused(checkpoint: tuple[Path, Manifest], tmp_path: Path) -> None:
    good, manifest = checkpoint
    other = Manifest(manifest.algorithm, manifest.files[:-1]).digest
    with pytest.raises(RestoreError, match="no source gave the checkpoint's manifest") as failure:
        restore(other, [LocalDirectorySource(good)], tmp_path / "out")
    assert f"is not the checkpoint's {other}" in str(failure.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_non_empty_destination_is_refused_and_left_alone(
    checkpoint: tuple[Path, Manifest], tmp_path: Path
) -> None:
    good, manifest = checkpoint
    destination = tmp_path / "someones-data"
    destination.mkdir()
    (destination / "notes.txt").write_text("precious")
    with pytest.raises(RestoreError, match=r"is not empty \(1 entries: notes.txt\).*never overwrites"):
        restore(manifest.digest, [LocalDirectorySource(good)], destination)
    assert names_under(destination) == {"notes.txt"}
    assert (destination / "notes.txt").read_text() == "precious"


# -- the peer server ------------------------------------------------------------------------------


def test_restore_from_a_peer_server_over_http(
    checkpoint: tuple[Path, Manifest],
    tmp_path: Path,
    peer_server: Callable[..., PeerServer],
    identities: Identities,
) -> None:
    good, manifest = checkpoint
    server = peer_server(serving(good, manifest))
    report = restore(
        manifest.digest,
        [PeerSource(server.address, NAMESPACE, NAME, as_n2(identities, server), name="peer n2")],
        tmp_path / "o",
    )
    assert verify_tree(tmp_path / "o", manifest) == []
    assert report.by_tier == {SourceKind.PEER: report.by_source["peer n2"]}


def test_the_peer_server_serves_only_files_its_manifest_names(
    checkpoint: tuple[Path, Manifest],
    peer_server: Callable[..., PeerServer],
    identities: Identities,
) -> None:
    good, manifest = checkpoint
    (good / "unlisted.bin").write_bytes(b"not part of the checkpoint")
    server = peer_server(serving(good, manifest))
    assert get(identities, server, "files/__1_0.distcp") == (200, (good / "__1_0.distcp").read_bytes())
    status, body = get(identities, server, "files/unlisted.bin")
    assert status == 404 and b"not a file of this checkpoint's manifest" in body
    status, body = get(identities, server, "files/sub/../unlisted.bin")
    assert status == 404 and b"'..' part" in body
    status, _ = get(identities, server, "files/" + "%2e%2e/" * 3 + "etc/passwd")
    assert status == 404


def test_the_peer_server_refuses_a_copy_whose_manifest_is_not_the_checkpoints(
    checkpoint: tuple[Path, Manifest],
    peer_server: Callable[..., PeerServer],
    identities: Identities,
) -> None:
    good, manifest = checkpoint
    other = Manifest(manifest.algorithm, manifest.files[1:]).digest
    server = peer_server(lambda ns, name: CheckpointCopy(ns, name, good, other, "n2", None))
    status, body = get(identities, server, "files/__0_0.distcp")
    assert status == 404 and b"is not the checkpoint's" in body
    missing = peer_server(lambda ns, name: None)
    status, body = get(identities, missing, "manifest")
    assert status == 404 and f"checkpoint {NAMESPACE}/{NAME} has no copy on this node".encode() in body


IDENTITIES = Identities(Path(tempfile.mkdtemp(prefix="cairn-identities-")))


def storage_node(name: str, address: str | None, ready: bool = True) -> StorageNode:
    return published(name, address, IDENTITIES[name], ready=ready)


def recorded(node: str, *, verified: bool) -> Checkpoint:
    return Checkpoint(
        spec=CheckpointSpec(
            policy="p",
            pvc_name="trainer",
            node_name=node,
            volume="vol-1",
            path="checkpoints/step_100",
            step=100,
            size_bytes=10,
            size="10",
            file_count=1,
            hash_algorithm=HashAlgorithm.BLAKE3,
            manifest_digest="blake3:" + "0" * 64,
        ),
        status=CheckpointStatus(
            local=LocalCopy(node_name=node, volume="vol-1", path="checkpoints/step_100"),
            remote=RemoteCopy(
                url="s3://b/team-a/trainer/step_100/", verified_at=datetime.now(UTC) if verified else None
            ),
        ),
    )


def no_client() -> object:
    raise AssertionError("the S3 client must be made only when S3 is read")


def test_sources_are_the_peer_then_s3_on_another_node() -> None:
    nodes = [storage_node("n1", "10.0.0.1:9750"), storage_node("n2", "10.0.0.2:9750")]
    sources = build_sources(
        NAMESPACE,
        NAME,
        recorded("n1", verified=True),
        nodes,
        "n2",
        s3_client=no_client,
        identity=IDENTITIES["n2"],
        volume="vol-restore",
    )
    assert [(s.kind, s.name) for s in sources] == [(SourceKind.PEER, "peer n1"), (SourceKind.S3, "s3")]
    assert isinstance(sources[0], PeerSource) and sources[0].host == "10.0.0.1"
    assert sources[0].headers == {"X-Cairn-Volume": "vol-restore"}
    assert isinstance(sources[1], S3Source) and sources[1].location.prefix == "team-a/trainer/step_100"


def test_without_a_node_identity_peers_are_passed_over_saying_why() -> None:
    nodes = [storage_node("n1", "10.0.0.1:9750")]
    sources = build_sources(NAMESPACE, NAME, recorded("n1", verified=True), nodes, None, s3_client=no_client)
    assert [(s.kind, type(s)) for s in sources] == [
        (SourceKind.PEER, UnavailableSource),
        (SourceKind.S3, S3Source),
    ]
    with pytest.raises(SourceError, match="only to Cairn agents over mutual TLS"):
        sources[0].manifest_text()


def test_this_nodes_copy_is_local_read_from_disk_or_from_its_own_agent(tmp_path: Path) -> None:
    nodes = [storage_node("n1", "10.0.0.1:9750")]
    checkpoint = recorded("n1", verified=False)
    via_agent = build_sources(
        NAMESPACE, NAME, checkpoint, nodes, "n1", s3_client=no_client, identity=IDENTITIES["n1"]
    )
    assert [(s.kind, type(s)) for s in via_agent] == [(SourceKind.LOCAL, PeerSource)]
    on_disk = build_sources(
        NAMESPACE, NAME, checkpoint, nodes, "n1", s3_client=no_client, local_directory=lambda c: tmp_path
    )
    assert isinstance(on_disk[0], LocalDirectorySource) and on_disk[0].directory == tmp_path


def test_a_peer_without_an_address_is_reported_and_an_unverified_remote_is_not_a_source() -> None:
    with pytest.raises(SourcesError, match="not verified yet; wait for the checkpoint to be Tiered"):
        build_sources(NAMESPACE, NAME, recorded("n1", verified=False), [], "n2", s3_client=no_client)
    this_node_unpublished = build_sources(
        NAMESPACE,
        NAME,
        recorded("n1", verified=False),
        [storage_node("n1", None)],
        "n1",
        s3_client=no_client,
        identity=IDENTITIES["n1"],
    )
    assert isinstance(this_node_unpublished[0], UnavailableSource)
    with pytest.raises(SourceError, match="publishes no peerRestoreAddress"):
        this_node_unpublished[0].manifest_text()


class GatedSourceFault:
    """A source that opens a file only once `together` files are open at once, or fails after 10 s:
    the proof that the files really move in parallel (no real part holds a stream back on demand)."""

    def __init__(self, inner: LocalDirectorySource, together: int) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.name = inner.name
        self.barrier = threading.Barrier(together, timeout=10)

    def manifest_text(self) -> bytes:
        return self.inner.manifest_text()

    def open_file(self, relative: PurePosixPath) -> Any:
        stream = self.inner.open_file(relative)
        if stream.length and stream.length >= MiB:  # the two shards; `.metadata` and the small file pass
            self.barrier.wait()
        return stream


def test_the_files_of_a_checkpoint_move_several_at_once(
    checkpoint: tuple[Path, Manifest], tmp_path: Path
) -> None:
    good, manifest = checkpoint
    source = GatedSourceFault(LocalDirectorySource(good, SourceKind.S3, "s3"), together=2)
    report = restore(manifest.digest, [source], tmp_path / "out", streams=4)
    assert verify_tree(tmp_path / "out", manifest) == [] and report.rejected == []


def test_a_corrupt_source_is_dropped_while_several_files_move_and_the_next_serves_the_rest(
    checkpoint: tuple[Path, Manifest], tmp_path: Path
) -> None:
    good, manifest = checkpoint
    corrupt = tmp_path / "copy-b"
    shutil.copytree(good, corrupt)
    for name in ("__0_0.distcp", "__1_0.distcp"):
        flip_byte(corrupt / name)
    seen: list[RestoreProgress] = []
    sources = [
        LocalDirectorySource(corrupt, SourceKind.PEER, "peer"),
        LocalDirectorySource(good, SourceKind.S3, "s3"),
    ]
    report = restore(manifest.digest, sources, tmp_path / "out", seen.append, streams=4)
    assert verify_tree(tmp_path / "out", manifest) == []
    assert report.rejected and {r.source for r in report.rejected} == {"peer"}
    assert report.by_source["s3"].files >= 2  # both corrupt shards came from the second source
    assert seen[-1].done_bytes == manifest.total_bytes
    assert all(0 <= p.done_bytes <= manifest.total_bytes for p in seen)
