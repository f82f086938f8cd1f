"""The swarm's decisions without libtorrent: who is told, when a part is unstuck, when a copy is Ready.

The torrent session is an in-process fake (`FakeTorrentSession`): it reports whatever status a test
sets, so a stalled or finished part can be shown on demand.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cairn.api.dataset import Dataset, DatasetNodeStatus, DatasetStatus, NodePhase
from cairn.api.disk import StorageNode
from cairn.kube import Typed
from cairn.node_agent.datasets import swarm as swarm_module
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.store import PartStore
from cairn.node_agent.datasets.swarm import Swarm
from cairn.node_agent.manifests import build_manifest
from cairn.node_agent.p2p.metadata import info_hash_of
from cairn.node_agent.p2p.session import TorrentMeta, TorrentSessionError, TransferStatus, make_torrent

ME, SEEDER, OTHER = "node-b", "node-a", "node-c"
ADDRESSES = {ME: ("10.0.0.2", 6881), SEEDER: ("10.0.0.1", 6881), OTHER: ("10.0.0.3", 6881)}
DOWNLOADING = TransferStatus(
    progress=0.5,
    total_done=500,
    total_wanted=1000,
    download_rate=0,
    upload_rate=0,
    num_peers=1,
    state="downloading",
    is_seeding=False,
    total_payload_download=500,
    total_payload_upload=0,
    total_failed_bytes=0,
    total_redundant_bytes=0,
)


class FakeTorrentSession:
    """Stands in for TorrentNode: torrents are their info-hash, and status is whatever a test sets."""

    def __init__(self) -> None:
        self.statuses: dict[str, TransferStatus] = {}
        self.told: list[tuple[str, list[tuple[str, int]]]] = []
        self.forgiven: list[str] = []
        self.flushed: list[str] = []
        self.limits: dict[str, tuple[int, int]] = {}

    def download(self, torrent: bytes, data_dir: Path, resume_data: bytes | None = None) -> str:
        info_hash = info_hash_of(torrent)
        self.statuses.setdefault(info_hash, DOWNLOADING)
        return info_hash

    def add_peers(self, info_hash: str, peers: list[tuple[str, int]]) -> None:
        self.told.append((info_hash, list(peers)))

    def status(self, info_hash: str) -> TransferStatus:
        return self.statuses[info_hash]

    def forgive_peers(self, info_hash: str) -> None:
        self.forgiven.append(info_hash)

    def limit(self, info_hash: str, *, download: int = 0, upload: int = 0) -> None:
        self.limits[info_hash] = (download, upload)

    def flush(self, info_hash: str) -> None:
        self.flushed.append(info_hash)

    def save_resume(self, info_hash: str, timeout: float) -> bytes:
        raise TorrentSessionError("no resume data in this fake")


class FakeResources:
    def __init__(self, items: list[Typed] | None = None) -> None:
        self.items = items or []
        self.status_patches: list[dict[str, Any]] = []

    def list(self) -> list[Typed]:
        return self.items

    def patch_status(self, name: str, status: DatasetStatus, namespace: str | None = None) -> None:
        self.status_patches.append(status.merge_patch())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def storage_node(name: str) -> Typed:
    host, port = ADDRESSES[name]
    node = StorageNode.model_validate(
        {"spec": {"nodeName": name}, "status": {"endpoints": {"p2PAddress": f"{host}:{port}"}}}
    )
    return Typed(node, {"name": name})


@pytest.fixture(scope="module")
def torrents(tmp_path_factory: pytest.TempPathFactory) -> list[TorrentMeta]:
    """Three real one-file part torrents, so their info-hashes check as they do on a node."""
    data = tmp_path_factory.mktemp("origin") / "data"
    data.mkdir()
    for index in range(3):
        (data / f"{index}.bin").write_bytes(bytes([index]) * 1000)
    return [make_torrent(data, files=[(f"{index}.bin", 1000)]) for index in range(3)]


def dataset(
    parts: int, *, digest: str | None = None, published: int | None = None, spec: dict[str, Any] | None = None
) -> Typed:
    status = {
        "seeder": SEEDER,
        "targetNodes": [SEEDER, ME, OTHER],
        "totalBytes": 1000 * parts,
        "partCount": parts,
        "parts": [{"infoHash": HASHES[i], "files": 1, "bytes": 1000} for i in range(published or parts)],
        "digest": digest,
    }
    model = Dataset.model_validate(
        {
            "spec": {"source": {"http": {"urls": ["https://data.example/a.bin"]}}, **(spec or {})},
            "status": status,
        }
    )
    return Typed(model, {"name": "corpus", "namespace": "ns"})


HASHES: list[str] = []


@pytest.fixture(autouse=True)
def part_hashes(torrents: list[TorrentMeta]) -> None:
    HASHES[:] = [t.info_hash for t in torrents]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(swarm_module, "time", clock)
    return clock


def make_swarm(
    tmp_path: Path, torrents: list[TorrentMeta]
) -> tuple[Swarm, FakeTorrentSession, FakeResources]:
    session = FakeTorrentSession()
    datasets = FakeResources()
    nodes = FakeResources([storage_node(n) for n in (SEEDER, ME, OTHER)])
    store = PartStore(tmp_path / "datasets")
    for index, meta in enumerate(torrents):
        store.save_torrent("ns", "corpus", index, meta.torrent)
    swarm = Swarm(ME, session, store, nodes, NodeReports(ME, datasets))  # type: ignore[arg-type]
    return swarm, session, datasets


def join(swarm: Swarm, item: Typed, tmp_path: Path) -> Any:
    nodes = [n.model for n in swarm.storage_nodes.list()]
    return swarm.join(item, "ns", tmp_path / "mount", DatasetNodeStatus(), nodes)


def test_a_part_is_joined_from_its_saved_torrent_and_its_peers_are_told_once(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    item = dataset(3, published=2)
    joined = join(swarm, item, tmp_path)
    assert joined.parts == {0: HASHES[0], 1: HASHES[1]}, "part 2 is not published yet"
    # While the origin is read, the seeder is asked only by each part's first hop (this node for
    # part 0, the other target for part 1).
    first_told = [
        (HASHES[0], [ADDRESSES[SEEDER], ADDRESSES[OTHER]]),
        (HASHES[1], [ADDRESSES[OTHER]]),
    ]
    assert session.told == first_told

    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    clock.now += 1
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.told == first_told, "a peer already told is never told again"


def test_a_part_that_stops_moving_asks_the_seeder_then_rejoins_with_bans_forgiven(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    item = dataset(3, published=2)
    joined = join(swarm, item, tmp_path)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    clock.now += swarm_module.STALL_SECONDS
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.told[-1] == (HASHES[1], [ADDRESSES[SEEDER]]), "a stalled part asks the seeder too"
    assert session.forgiven == []

    session.statuses[HASHES[1]] = replace(DOWNLOADING, num_peers=0)
    clock.now += 60
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.forgiven == [HASHES[1]], "only the part with no peer left is forgiven"
    # Forgiven: its peers are told again, or the rejoined torrent would know no one.
    assert session.told[-1] == (HASHES[1], [ADDRESSES[SEEDER], ADDRESSES[OTHER]])


def test_a_moving_part_is_never_forgiven(tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    item = dataset(1, published=1)
    joined = join(swarm, item, tmp_path)
    for step in range(10):
        session.statuses[HASHES[0]] = replace(DOWNLOADING, num_peers=0, total_done=100 * step)
        clock.now += 30
        swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.forgiven == []


def finished(session: FakeTorrentSession) -> None:
    for info_hash in session.statuses:
        session.statuses[info_hash] = replace(
            DOWNLOADING, progress=1.0, total_done=1000, state="seeding", is_seeding=True
        )


def write_copy(swarm: Swarm) -> str:
    data = swarm.store.data_directory("ns", "corpus")
    data.mkdir(parents=True)
    (data / "a.bin").write_bytes(b"the dataset")
    return build_manifest(data).digest


def test_a_complete_copy_is_flushed_then_ready_only_when_its_digest_is_the_seeders(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, datasets = make_swarm(tmp_path, torrents)
    digest = write_copy(swarm)
    item = dataset(2, digest=digest)
    joined = join(swarm, item, tmp_path)
    finished(session)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert sorted(session.flushed) == [HASHES[0], HASHES[1]], "the write buffer reaches the files first"
    report = datasets.status_patches[-1]["nodes"][ME]
    assert report["phase"] == NodePhase.READY
    assert report["digest"] == digest
    assert report["progress"] == 1.0


def test_a_complete_copy_with_another_digest_fails_with_the_reason(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, datasets = make_swarm(tmp_path, torrents)
    digest = write_copy(swarm)
    item = dataset(2, digest="blake3:" + "0" * 64)
    joined = join(swarm, item, tmp_path)
    finished(session)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    report = datasets.status_patches[-1]["nodes"][ME]
    assert report["phase"] == NodePhase.FAILED
    assert report["reason"] == "DigestMismatch"
    assert digest in report["message"]


def test_a_copy_is_not_verified_before_the_seeder_published_every_part(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, datasets = make_swarm(tmp_path, torrents)
    write_copy(swarm)
    item = dataset(2, published=1)  # no digest, one part of two
    joined = join(swarm, item, tmp_path)
    finished(session)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.flushed == []
    assert datasets.status_patches[-1]["nodes"][ME]["phase"] == NodePhase.DOWNLOADING


def test_leaving_removes_every_part_from_the_session(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    removed: list[str] = []
    session.remove = removed.append  # type: ignore[attr-defined]
    join(swarm, dataset(2), tmp_path)
    assert swarm.shares() == ["ns/corpus"]
    swarm.leave("ns/corpus")
    assert sorted(removed) == [HASHES[0], HASHES[1]]
    assert swarm.shares() == []


def test_a_background_dataset_shares_its_inbound_cap_among_the_parts_still_to_come(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    rate = 9 * 1024 * 1024
    item = dataset(3, spec={"priority": "Background", "backgroundBytesPerSecond": rate})
    joined = join(swarm, item, tmp_path)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.limits == {h: (rate // 3, rate) for h in HASHES}

    session.statuses[HASHES[0]] = replace(DOWNLOADING, is_seeding=True, total_done=1000)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.limits[HASHES[0]] == (0, rate), "a finished part only sends"
    assert session.limits[HASHES[1]] == session.limits[HASHES[2]] == (rate // 2, rate)

    session.limits.clear()
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.limits == {}, "limits already set are not set again on every pass"


def test_a_dataset_raised_to_normal_has_its_caps_lifted(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    swarm.background_bytes_per_second = 3 * 1024 * 1024  # the agent's default: the Dataset names none
    background = dataset(3, spec={"priority": "Background"})
    joined = join(swarm, background, tmp_path)
    swarm.advance(background, "ns", joined, DatasetNodeStatus())
    assert set(session.limits.values()) == {(1024 * 1024, 3 * 1024 * 1024)}

    swarm.advance(dataset(3), "ns", joined, DatasetNodeStatus())
    assert set(session.limits.values()) == {(0, 0)}


def test_a_normal_dataset_never_touches_the_limits(
    tmp_path: Path, clock: Clock, torrents: list[TorrentMeta]
) -> None:
    swarm, session, _ = make_swarm(tmp_path, torrents)
    item = dataset(3)
    joined = join(swarm, item, tmp_path)
    swarm.advance(item, "ns", joined, DatasetNodeStatus())
    assert session.limits == {}
