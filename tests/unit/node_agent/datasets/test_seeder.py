"""The seeder without a cluster: it reads a directory origin once, publishes each part, and refuses
an origin that changed under parts others may already hold.

The swarm behind it is an in-process fake that records what it was asked to seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cairn.api.dataset import Dataset, DatasetStatus, NodePhase
from cairn.api.volume import VolumeAccess
from cairn.kube import Typed
from cairn.node_agent.datasets import parts
from cairn.node_agent.datasets.origin import DirectoryOrigin, Origin, OriginError
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.seeder import Seeder
from cairn.node_agent.datasets.store import PartStore
from cairn.node_agent.manifests import build_manifest
from cairn.node_agent.p2p.metadata import info_hash_of
from cairn.node_agent.volumes.index import StagedVolume

NODE = "node-a"


class FakeSwarm:
    def __init__(self) -> None:
        self.seeded: list[int] = []
        self.left: list[str] = []
        self.verified: list[str] = []

    def seed_part(self, key: str, index: int, torrent: bytes, data: Path, *_: Any) -> str:
        self.seeded.append(index)
        return info_hash_of(torrent)

    def leave(self, key: str) -> None:
        self.left.append(key)

    def mark_verified(self, key: str) -> None:
        self.verified.append(key)


class FakeDatasets:
    def __init__(self) -> None:
        self.status_patches: list[dict[str, Any]] = []

    def patch_status(self, name: str, status: DatasetStatus, namespace: str | None = None) -> None:
        self.status_patches.append(status.merge_patch())


class SeederOfADirectory(Seeder):
    """The real seeder, with its origin pointed at a local directory instead of a mounted claim."""

    origin_root: Path

    def _origin(self, dataset: Dataset, namespace: str, dataset_name: str) -> Origin:
        return DirectoryOrigin(self.origin_root)


def make_seeder(tmp_path: Path) -> tuple[SeederOfADirectory, FakeSwarm, FakeDatasets, PartStore]:
    origin = tmp_path / "origin"
    origin.mkdir()
    for index in range(12):
        (origin / f"shard-{index:02}.bin").write_bytes(bytes([index]) * (100_000 + index))
    swarm, datasets = FakeSwarm(), FakeDatasets()
    store = PartStore(tmp_path / "datasets")
    seeder = SeederOfADirectory(
        NODE,
        lambda namespace, name: {},
        datasets,  # type: ignore[arg-type]
        lambda volume: None,
        tmp_path,
        store,
        swarm,  # type: ignore[arg-type]
        NodeReports(NODE, datasets),  # type: ignore[arg-type]
    )
    seeder.origin_root = origin
    return seeder, swarm, datasets, store


def item(published_parts: list[dict[str, Any]] | None = None) -> Typed:
    model = Dataset.model_validate(
        {
            "spec": {"source": {"pvc": {"name": "raw"}}},
            "status": {"seeder": NODE, "targetNodes": [NODE, "node-b"], "parts": published_parts or []},
        }
    )
    return Typed(model, {"name": "corpus", "namespace": "ns"})


def test_the_origin_is_read_once_into_parts_and_the_last_patch_carries_digest_and_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parts, "MIN_PART_BYTES", 200_000)  # parts of two shards, not one of all twelve
    seeder, swarm, datasets, store = make_seeder(tmp_path)
    mount = store.mount_point("ns", "corpus")
    mount.mkdir(parents=True)
    seeder.seed(item(), "ns", mount, [])

    published = [p for p in datasets.status_patches if "parts" in p]
    assert len(published) == 6
    assert swarm.seeded == list(range(len(published)))
    assert [len(p["parts"]) for p in published] == list(range(1, len(published) + 1))
    assert all("digest" not in p for p in published[:-1]), "the digest comes with the last part only"
    last = published[-1]
    copy = store.data_directory("ns", "corpus")
    assert last["digest"] == build_manifest(copy).digest
    ready = last["nodes"][NODE]
    assert ready["phase"] == NodePhase.READY
    assert ready["bytesFromOrigin"] == sum(100_000 + i for i in range(12))
    for index in range(len(published)):
        assert store.torrent("ns", "corpus", index) is not None, "peers fetch each part's torrent here"
    assert swarm.left == []
    assert swarm.verified == ["ns/corpus"], "the seeder's own copy is checked by construction"


def test_an_origin_that_changed_under_published_parts_fails_the_dataset_and_leaves_the_swarm(
    tmp_path: Path,
) -> None:
    seeder, swarm, datasets, store = make_seeder(tmp_path)
    mount = store.mount_point("ns", "corpus")
    mount.mkdir(parents=True)
    earlier = [{"infoHash": "0" * 64, "files": 1, "bytes": 1}]
    seeder.seed(item(earlier), "ns", mount, [])

    failed = [p for p in datasets.status_patches if "conditions" in p]
    assert failed, "the Dataset gets a Failed condition"
    condition = failed[-1]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Failed",
        "True",
        "OriginChanged",
    )
    assert "0" * 64 in condition["message"]
    assert swarm.left == ["ns/corpus"]
    assert not any("parts" in p for p in datasets.status_patches), "nothing different is published"


def test_a_block_claim_is_refused_as_a_source_before_anything_is_mounted(tmp_path: Path) -> None:
    block = StagedVolume("lv-raw", "/dev/does-not-matter", VolumeAccess.BLOCK, None, "nvme")
    swarm, datasets = FakeSwarm(), FakeDatasets()
    seeder = Seeder(
        NODE,
        lambda namespace, name: {},
        datasets,  # type: ignore[arg-type]
        lambda volume: block if volume == "lv-raw" else None,
        tmp_path,
        PartStore(tmp_path / "datasets"),
        swarm,  # type: ignore[arg-type]
        NodeReports(NODE, datasets),  # type: ignore[arg-type]
    )
    dataset = item().model
    dataset.status.source_volume = "lv-raw"
    with pytest.raises(OriginError) as refused:
        seeder._origin(dataset, "ns", "corpus")
    assert refused.value.reason == "BlockSourceRefused"
    assert not (tmp_path / "dataset-sources").exists()
