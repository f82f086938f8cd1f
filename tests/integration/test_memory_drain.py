"""The memory drain against a real memory volume (a tmpfs of the memory pool): its checkpoint is
copied to the node's disks verified, retention then frees the memory, and the disk copy is what
is left to restore from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.node_agent.checkpoints.local import disk_copy_directory
from cairn.node_agent.checkpoints.local_tier import LocalTierCopier
from cairn.node_agent.checkpoints.tiering import CheckpointTierer
from cairn.node_agent.manifests import MANIFEST_NAME, Manifest, verify_tree
from cairn.node_agent.memory.pool import TmpfsPool
from tests.integration.memory_pool import VG, MiB
from tests.unit.node_agent.checkpoints.test_local_tier import DRAINED, NAMESPACE, Policies
from tests.unit.node_agent.checkpoints.test_restore_engine import write_checkpoint
from tests.unit.node_agent.checkpoints.test_tiering_isolation import NODE, FakeCheckpointApi, RecordedEvents

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount tmpfs"),
    pytest.mark.timeout(60),
]


def test_a_checkpoint_leaves_memory_only_after_its_disk_copy_is_verified(
    pool: TmpfsPool, tmp_path: Path
) -> None:
    memory = Path(pool.lvcreate(VG, "mem", 16 * MiB).path)
    api, events = FakeCheckpointApi(), RecordedEvents()
    for step in (1, 2):
        manifest = write_checkpoint(memory / "ckpt" / f"step_{step}")
        item = api.objects[(NAMESPACE, api.add(NAMESPACE, "mem", step))]
        item.model.spec.manifest_digest = manifest.digest
        assert item.model.status.local is not None
        item.model.status.local.pool = "memory"

    def path_of(volume: str) -> Path | None:
        found = pool.device_path(VG, volume)
        return Path(found) if found else None

    store = tmp_path / "state" / "tier-store"
    copier = LocalTierCopier(
        NODE,
        api,  # type: ignore[arg-type]
        Policies(DRAINED),  # type: ignore[arg-type]
        path_of,
        store,
        events,  # type: ignore[arg-type]
    )
    tierer = CheckpointTierer(
        NODE,
        api,  # type: ignore[arg-type]
        Policies(DRAINED),  # type: ignore[arg-type]
        lambda namespace, name: {},
        tmp_path / "state",
        path_of,
        events,  # type: ignore[arg-type]
    )
    tierer.run_pass()
    assert (memory / "ckpt" / "step_1").is_dir(), "no slower tier holds it yet"

    copier.run_pass()
    tierer.run_pass()
    assert not (memory / "ckpt" / "step_1").exists() and (memory / "ckpt" / "step_2").is_dir()
    first = api.get("mem-1", NAMESPACE)
    assert first is not None and first.model.status.tiers == "local"
    copy = disk_copy_directory(first.model, NODE, store)
    assert copy is not None
    manifest = Manifest.from_json((copy / MANIFEST_NAME).read_bytes())
    assert verify_tree(copy, manifest) == [] and manifest.digest == first.model.spec.manifest_digest
    assert os.stat(copy).st_dev != os.stat(memory).st_dev, "the copy is on the node's disks, not in memory"
    second = api.get("mem-2", NAMESPACE)
    assert second is not None and second.model.status.tiers == "memory,local"
