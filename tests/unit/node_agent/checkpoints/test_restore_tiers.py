"""A memory volume's checkpoint restores from memory first, then from the tier store's copy on the
node's disks, then from a peer and S3; every byte verified, a bad memory copy falls through."""

from __future__ import annotations

import shutil
from pathlib import Path

from cairn.api.checkpoint import Checkpoint, LocalCopy
from cairn.node_agent.checkpoints.restore.engine import LocalDirectorySource, PeerSource, S3Source, restore
from cairn.node_agent.checkpoints.restore.plan import SourceKind
from cairn.node_agent.checkpoints.restore.sources import build_sources, checkpoint_tiers
from cairn.node_agent.manifests import verify_tree
from tests.unit.node_agent.checkpoints.test_restore_engine import (
    IDENTITIES,
    NAME,
    NAMESPACE,
    flip_byte,
    no_client,
    recorded,
    storage_node,
    write_checkpoint,
)


def in_memory_with_disk_copy(node: str, *, verified: bool = True) -> Checkpoint:
    checkpoint = recorded(node, verified=verified)
    assert checkpoint.status.local is not None
    checkpoint.status.local.pool = "memory"
    checkpoint.status.disk = LocalCopy(
        node_name=node, volume="", path=f"tier-store/{NAMESPACE}/{NAME}", pool="nvme"
    )
    return checkpoint


def test_the_tiers_of_a_memory_checkpoint_come_from_its_copies_pools() -> None:
    nodes = [storage_node("n1", "10.0.0.1:9750")]
    tiers = checkpoint_tiers(in_memory_with_disk_copy("n1"), nodes, "n1")
    assert [(c.tier, c.held_as, c.path) for c in tiers.node_copies] == [
        (SourceKind.MEMORY, "local", "checkpoints/step_100"),
        (SourceKind.LOCAL, "disk", f"tier-store/{NAMESPACE}/{NAME}"),
    ]


def test_this_nodes_memory_and_disk_copies_are_read_from_their_own_directories(tmp_path: Path) -> None:
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    nodes = [storage_node("n1", "10.0.0.1:9750"), storage_node("n2", "10.0.0.2:9750")]
    checkpoint = in_memory_with_disk_copy("n1")
    checkpoint.status.peer = LocalCopy(node_name="n2", volume="", path=f"replicas/{NAMESPACE}/{NAME}")
    sources = build_sources(
        NAMESPACE,
        NAME,
        checkpoint,
        nodes,
        "n1",
        s3_client=no_client,
        identity=IDENTITIES["n1"],
        local_directory=lambda c: memory,
        disk_directory=lambda c: disk,
    )
    assert [(s.kind, s.name, type(s)) for s in sources] == [
        (SourceKind.MEMORY, "memory", LocalDirectorySource),
        (SourceKind.LOCAL, "local", LocalDirectorySource),
        (SourceKind.PEER, "peer n2", PeerSource),
        (SourceKind.S3, "s3", S3Source),
    ]
    first, second = sources[0], sources[1]
    assert isinstance(first, LocalDirectorySource) and first.directory == memory
    assert isinstance(second, LocalDirectorySource) and second.directory == disk


def test_a_corrupt_memory_copy_falls_through_to_the_disk_copy(tmp_path: Path) -> None:
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    manifest = write_checkpoint(memory)
    shutil.copytree(memory, disk)
    checkpoint = in_memory_with_disk_copy("n1", verified=False)
    checkpoint.spec.manifest_digest = manifest.digest
    sources = build_sources(
        NAMESPACE,
        NAME,
        checkpoint,
        [storage_node("n1", "10.0.0.1:9750")],
        "n1",
        s3_client=no_client,
        local_directory=lambda c: memory,
        disk_directory=lambda c: disk,
    )
    intact = restore(manifest.digest, sources, tmp_path / "intact", hash_threads=1)
    assert intact.tiers == [SourceKind.MEMORY]
    flip_byte(memory / "__0_0.distcp")
    report = restore(manifest.digest, sources, tmp_path / "restored", hash_threads=1)
    assert verify_tree(tmp_path / "restored", manifest) == []
    assert SourceKind.LOCAL in report.tiers and report.rejected[0].source == "memory"
