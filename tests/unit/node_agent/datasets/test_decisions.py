"""Dataset decisions without a cluster: targets, seeder, space, summary, and origin names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cairn.api.dataset import (
    Dataset,
    DatasetNodes,
    DatasetNodeStatus,
    DatasetPart,
    DatasetPhase,
    DatasetSource,
    NodePhase,
    PvcSource,
    S3Source,
)
from cairn.api.volume import LocalVolumeSpec, PopulateSource
from cairn.controller.datasets.planner import (
    NodeInfo,
    choose_seeder,
    space_problem,
    summarize,
    target_nodes,
    volume_bytes,
)
from cairn.node_agent.datasets.agent import no_copy_coming
from cairn.node_agent.datasets.origin import DirectoryOrigin, OriginError, checked_listing, listing_digest
from cairn.node_agent.datasets.seeder import published_patch
from cairn.node_agent.volumes.node_service import stage_mount_flags
from cairn.node_agent.volumes.reconciler import serves_read_only

GiB = 1024**3
NODES = [
    NodeInfo("a", {"gpu": "h100"}, True, 10 * GiB),
    NodeInfo("b", {"gpu": "h100"}, True, 1 * GiB),
    NodeInfo("c", {"gpu": "a10"}, False, 10 * GiB),
]


def test_targets_by_selector_list_or_consumers() -> None:
    assert target_nodes(DatasetNodes(), NODES) == ["a", "b", "c"]
    assert target_nodes(DatasetNodes(selector={"gpu": "h100"}), NODES) == ["a", "b"]
    assert target_nodes(DatasetNodes(names=["c", "zz"]), NODES) == ["c"]
    assert target_nodes(DatasetNodes(on_demand=True), NODES) == []
    assert target_nodes(DatasetNodes(on_demand=True), NODES, consumers=["b", "gone"]) == ["b"]
    # A consumer outside the selector still gets its copy: the pod is already there.
    assert target_nodes(DatasetNodes(selector={"gpu": "a10"}), NODES, consumers=["a"]) == ["a", "c"]


def test_the_seeder_is_a_ready_target_and_a_pvc_source_pins_it() -> None:
    assert choose_seeder("ns.ds", ["a", "b", "c"], NODES) in {"a", "b"}
    assert choose_seeder("ns.ds", ["c"], NODES) is None  # not ready
    assert choose_seeder("ns.ds", ["a", "b"], NODES, required="b") == "b"
    assert choose_seeder("ns.ds", ["a", "b"], NODES, required="c") is None
    spread = {choose_seeder(f"ns.ds{i}", ["a", "b"], NODES) for i in range(40)}
    assert spread == {"a", "b"}


def test_a_dataset_larger_than_the_pool_fails_before_download() -> None:
    assert space_problem(NODES[0], 4 * GiB, "nvme") is None
    problem = space_problem(NODES[1], 4 * GiB, "nvme")
    assert problem is not None and "pool nvme on node b has 1Gi free" in problem
    assert volume_bytes(4 * GiB) > 4 * GiB


def test_summary_counts_ready_targets_and_bytes() -> None:
    reports = {
        "a": DatasetNodeStatus(phase=NodePhase.READY, bytes_from_origin=100),
        "b": DatasetNodeStatus(phase=NodePhase.DOWNLOADING, bytes_from_peers=40),
    }
    summary = summarize(["a", "b"], reports, True, failed=False)
    assert (summary.phase, summary.ready, summary.bytes_from_origin, summary.bytes_from_peers) == (
        DatasetPhase.DISTRIBUTING,
        "1/2",
        100,
        40,
    )
    reports["b"] = DatasetNodeStatus(phase=NodePhase.READY)
    assert summarize(["a", "b"], reports, True, failed=False).phase == DatasetPhase.READY
    assert summarize(["a"], {}, False, failed=False).phase == DatasetPhase.SEEDING
    assert summarize(["a"], {}, False, failed=True).phase == DatasetPhase.FAILED


def test_a_source_is_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        DatasetSource()
    with pytest.raises(ValidationError, match="exactly one"):
        DatasetSource(http={"urls": ["https://x/a"]}, pvc={"name": "p"})
    assert DatasetSource(s3={"url": "s3://b/p", "endpoint": "http://s3"}).describe() == "s3://b/p"


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/file", "a/../../b", "a\\..\\b", ""])
def test_an_unsafe_origin_name_refuses_the_whole_listing(name: str) -> None:
    with pytest.raises(OriginError) as caught:
        checked_listing([("good/file", 1, "k1", None), (name, 1, "k2", None)])
    assert caught.value.reason == "UnsafeName"


def test_duplicate_and_file_directory_clashes_are_refused() -> None:
    with pytest.raises(OriginError, match="both"):
        checked_listing([("A/x", 1, "1", None), ("a/x", 1, "2", None)])
    with pytest.raises(OriginError, match="file and as a directory"):
        checked_listing([("a", 1, "1", None), ("a/b", 1, "2", None)])


def test_a_listing_names_its_store_and_every_version_and_one_untagged_file_makes_it_unshareable() -> None:
    tagged = checked_listing([("b", 2, "p/b", '"e2"'), ("a", 1, "p/a", '"e1"')])
    store = DatasetSource(
        s3=S3Source(url="s3://bucket/p", endpoint="http://s3.local:9000/")
    ).origin_identity()
    same_store = DatasetSource(
        s3=S3Source(url="s3://bucket/q", endpoint="HTTP://S3.LOCAL:9000")
    ).origin_identity()
    other_bucket = DatasetSource(
        s3=S3Source(url="s3://other/p", endpoint="http://s3.local:9000")
    ).origin_identity()
    digest = listing_digest(store, tagged)
    assert digest is not None and len(digest) == 64
    assert listing_digest(same_store, list(reversed(tagged))) == digest  # the prefix is in each locator
    assert listing_digest(other_bucket, tagged) != digest
    replaced = checked_listing([("a", 1, "p/a", '"e1"'), ("b", 2, "p/b", '"e3"')])
    assert listing_digest(store, replaced) != digest
    assert listing_digest(store, checked_listing([("a", 1, "p/a", None)])) is None
    assert DatasetSource(pvc=PvcSource(name="claim")).origin_identity() is None


def test_a_source_volume_with_a_link_or_a_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shard-0").write_bytes(b"x" * 10)
    origin = DirectoryOrigin(tmp_path)
    assert [(f.path, f.size) for f in origin.list_files()] == [("data/shard-0", 10)]
    os.symlink("/etc/passwd", tmp_path / "data" / "passwd")
    with pytest.raises(OriginError, match="symbolic link"):
        origin.list_files()
    (tmp_path / "data" / "passwd").unlink()
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OriginError, match="not a regular file"):
        origin.list_files()


def test_our_info_hash_matches_libtorrents_and_refuses_garbage(tmp_path: Path) -> None:
    from cairn.node_agent.p2p.metadata import TorrentMetadataError, info_hash_of
    from cairn.node_agent.p2p.session import make_torrent

    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(300_000))
    (data / "nested" / "b.bin").write_bytes(b"b" * 17)
    meta = make_torrent(data)
    assert info_hash_of(meta.torrent) == meta.info_hash
    tampered = meta.torrent.replace(b"a.bin", b"c.bin")
    assert info_hash_of(tampered) != meta.info_hash
    for garbage in (b"", b"le", b"d4:infoi1e", b"d3:foo3:bare", meta.torrent[: len(meta.torrent) // 2]):
        with pytest.raises(TorrentMetadataError):
            info_hash_of(garbage)


def test_only_a_volume_filled_from_a_dataset_is_served_read_only() -> None:
    def spec(populate_from: PopulateSource | None) -> LocalVolumeSpec:
        return LocalVolumeSpec(csi_name="v", node_name="a", size_bytes=1, populate_from=populate_from)

    assert serves_read_only(spec(PopulateSource(kind="Dataset", namespace="ns", name="corpus")))
    assert not serves_read_only(spec(PopulateSource(kind="Checkpoint", namespace="ns", name="step-7")))
    assert not serves_read_only(spec(None))


def test_a_read_only_volume_is_staged_ro_whatever_flags_the_pod_asks_for() -> None:
    assert stage_mount_flags(["noatime", "rw"], read_only=True) == ["noatime", "ro"]
    assert stage_mount_flags([], read_only=True) == ["ro"]
    assert stage_mount_flags(["noatime", "rw"], read_only=False) == ["noatime", "rw"]


def test_a_consumer_stops_waiting_when_its_nodes_copy_will_never_come() -> None:
    def dataset(status: dict) -> Dataset:
        return Dataset.model_validate(
            {"spec": {"source": {"http": {"urls": ["https://data.example/a.bin"]}}}, "status": status}
        )

    downloading = {"nodes": {"a": {"phase": "Downloading", "progress": 0.4}}}
    assert no_copy_coming(dataset(downloading), "ns", "corpus", "a") is None
    assert no_copy_coming(dataset({}), "ns", "corpus", "a") is None  # not a target yet; it will be
    no_room = {"nodes": {"a": {"phase": "Failed", "reason": "InsufficientSpace", "message": "pool full"}}}
    assert no_copy_coming(dataset(no_room), "ns", "corpus", "a") == (
        "InsufficientSpace",
        "the copy of Dataset ns/corpus on node a failed: pool full",
    )
    assert no_copy_coming(dataset(no_room), "ns", "corpus", "b") is None
    unsafe = {"conditions": [{"type": "Failed", "status": "True", "reason": "UnsafeName", "message": "../x"}]}
    assert no_copy_coming(dataset(unsafe), "ns", "corpus", "a") == (
        "DatasetFailed",
        "Dataset ns/corpus failed: UnsafeName: ../x",
    )
    assert no_copy_coming(None, "ns", "corpus", "a") == (
        "DatasetNotFound",
        "Dataset ns/corpus does not exist",
    )


# -- the seeder's status patches ----------------------------------------------------------------


def test_a_published_part_patches_only_the_parts_and_the_last_one_adds_digest_and_ready() -> None:
    parts = [DatasetPart(info_hash="a" * 64, files=2, bytes=100)]
    middle = published_patch(parts, 2, 262144, "gpu-1", None).merge_patch()
    assert set(middle) == {"parts", "partCount", "pieceSize"}  # no default may reset the phase
    ready = DatasetNodeStatus(phase=NodePhase.READY, progress=1.0, digest="blake3:" + "b" * 64)
    last = published_patch(parts, 1, 262144, "gpu-1", ready).merge_patch()
    assert set(last) == {"parts", "partCount", "pieceSize", "digest", "nodes"}
    assert last["digest"] == ready.digest and last["nodes"]["gpu-1"]["phase"] == "Ready"
