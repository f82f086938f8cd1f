"""The memory drain against real directories: a memory volume's checkpoint gets a verified copy in
the tier store, status and the TIERS column name it, and what cannot be verified is never kept.

The Checkpoint and CheckpointPolicy APIs are the in-process fakes of test_tiering_isolation."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from cairn.api.checkpoint import (
    CheckpointPolicy,
    CheckpointPolicySpec,
    RetentionSpec,
    S3Target,
    SecretKeyRef,
    Tier,
)
from cairn.kube import Typed
from cairn.node_agent.checkpoints.local import disk_copy_directory
from cairn.node_agent.checkpoints.local_tier import LocalTierCopier, copy_lag_seconds, wants_local_copy
from cairn.node_agent.checkpoints.tiering import CheckpointTierer, ready_to_upload
from cairn.node_agent.manifests import MANIFEST_NAME, Manifest, verify_tree
from tests.unit.node_agent.checkpoints.test_restore_engine import flip_byte, write_checkpoint
from tests.unit.node_agent.checkpoints.test_tiering import NOW, checkpoint
from tests.unit.node_agent.checkpoints.test_tiering_isolation import NODE, FakeCheckpointApi, RecordedEvents

TARGET = S3Target(endpoint="http://s3", bucket="b", credentials_secret_ref=SecretKeyRef(name="s"))
DRAINED = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL], retention=RetentionSpec(keep_memory=1))
NAMESPACE = "team"


class Policies:
    def __init__(self, spec: CheckpointPolicySpec) -> None:
        self.spec = spec

    def get(self, name: str, namespace: str | None = None) -> Typed:
        return Typed(CheckpointPolicy(spec=self.spec), {"name": name, "namespace": namespace})


def memory_checkpoints(tmp_path: Path, api: FakeCheckpointApi, *steps: int) -> Path:
    """Checkpoints written to memory volume `mem` (a plain directory here), recorded as the watcher does."""
    volume = tmp_path / "mem"
    for step in steps:
        manifest = write_checkpoint(volume / "ckpt" / f"step_{step}")
        name = api.add(NAMESPACE, "mem", step)
        item = api.objects[(NAMESPACE, name)]
        item.model.spec.manifest_digest = manifest.digest
        item.model.spec.size_bytes = manifest.total_bytes
        assert item.model.status.local is not None
        item.model.status.local.pool = "memory"
        item.model.status.tiers = "memory"
    return volume


def copier(
    tmp_path: Path, api: FakeCheckpointApi, events: RecordedEvents, policy: CheckpointPolicySpec = DRAINED
) -> LocalTierCopier:
    volumes = {"mem": tmp_path / "mem"}
    return LocalTierCopier(
        NODE,
        api,  # type: ignore[arg-type]
        Policies(policy),  # type: ignore[arg-type]
        volumes.get,
        tmp_path / "state" / "tier-store",
        events,  # type: ignore[arg-type]
    )


def test_a_memory_checkpoint_is_copied_to_the_tier_store_verified(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    memory_checkpoints(tmp_path, api, 1)
    copier(tmp_path, api, events).run_pass()

    item = api.get("mem-1", NAMESPACE)
    assert item is not None
    status = item.model.status
    assert status.disk is not None and status.disk.path == f"tier-store/{NAMESPACE}/mem-1"
    assert status.tiers == "memory,local"
    copy = disk_copy_directory(item.model, NODE, tmp_path / "state" / "tier-store")
    assert copy is not None and copy == tmp_path / "state" / "tier-store" / NAMESPACE / "mem-1"
    manifest = Manifest.from_json((copy / MANIFEST_NAME).read_bytes())
    assert manifest.digest == item.model.spec.manifest_digest and verify_tree(copy, manifest) == []
    assert ("mem-1", "CopiedToLocal") in events.reasons
    assert not list((tmp_path / "state" / "tier-store" / NAMESPACE).glob("*.partial"))


def test_a_memory_copy_that_changed_after_its_commit_is_never_copied(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    volume = memory_checkpoints(tmp_path, api, 1)
    flip_byte(volume / "ckpt" / "step_1" / "__0_0.distcp")
    copier(tmp_path, api, events).run_pass()

    item = api.get("mem-1", NAMESPACE)
    assert item is not None and item.model.status.disk is None and item.model.status.tiers == "memory"
    assert ("mem-1", "TierCopyFailed") in events.reasons
    store = tmp_path / "state" / "tier-store" / NAMESPACE
    assert not store.exists() or not any(store.iterdir())


def test_only_policies_that_copy_memory_to_local_drain_memory(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    memory_checkpoints(tmp_path, api, 1)
    for policy in (
        CheckpointPolicySpec(tiers=[Tier.MEMORY]),
        CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.S3], target=TARGET),
        CheckpointPolicySpec(),
    ):
        copier(tmp_path, api, events, policy).run_pass()
    item = api.get("mem-1", NAMESPACE)
    assert item is not None and item.model.status.disk is None and events.reasons == []


def test_a_disk_volumes_checkpoint_or_one_already_copied_is_not_wanted() -> None:
    on_nvme = checkpoint()
    assert not wants_local_copy(on_nvme, DRAINED, "n1")
    in_memory = checkpoint()
    assert in_memory.status.local is not None
    in_memory.status.local.pool = "memory"
    assert wants_local_copy(in_memory, DRAINED, "n1")
    assert not wants_local_copy(in_memory, DRAINED, "n2")  # another node's
    in_memory.status.reason = "ChangedAfterCommit"
    assert not wants_local_copy(in_memory, DRAINED, "n1")


def test_the_upload_of_a_memory_checkpoint_starts_beside_its_local_copy() -> None:
    policy = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL, Tier.S3], target=TARGET)
    waiting = checkpoint()
    assert waiting.status.local is not None
    waiting.status.local.pool = "memory"
    assert wants_local_copy(waiting, policy, "n1") and ready_to_upload(waiting, policy)
    waiting.status.disk = waiting.status.local.model_copy(update={"path": "tier-store/ns/c", "pool": "nvme"})
    assert not wants_local_copy(waiting, policy, "n1") and ready_to_upload(waiting, policy)
    memory_only = CheckpointPolicySpec(tiers=[Tier.MEMORY])
    assert not ready_to_upload(waiting, memory_only)
    assert ready_to_upload(checkpoint(), policy)  # a disk volume's copy is uploaded as always


def test_copy_lag_is_the_age_of_the_oldest_checkpoint_only_in_memory() -> None:
    assert copy_lag_seconds([NOW - timedelta(seconds=5), NOW - timedelta(seconds=2)], NOW) == 5
    assert copy_lag_seconds([], NOW) == 0


def test_a_copy_no_record_names_is_collected(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    memory_checkpoints(tmp_path, api, 1)
    store = tmp_path / "state" / "tier-store"
    (store / NAMESPACE / "deleted-checkpoint").mkdir(parents=True)
    (store / NAMESPACE / "mem-9.partial").mkdir()
    copier(tmp_path, api, events).run_pass()
    assert sorted(p.name for p in (store / NAMESPACE).iterdir()) == ["mem-1"]


def test_retention_takes_memory_copies_out_only_once_the_disk_holds_them(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    volume = memory_checkpoints(tmp_path, api, 1, 2, 3)
    tierer = CheckpointTierer(
        NODE,
        api,  # type: ignore[arg-type]
        Policies(DRAINED),  # type: ignore[arg-type]
        lambda namespace, name: {},
        tmp_path / "state",
        {"mem": volume}.get,
        events,  # type: ignore[arg-type]
    )
    tierer.run_pass()  # nothing is on disk yet: memory keeps every copy
    assert all((volume / "ckpt" / f"step_{s}").is_dir() for s in (1, 2, 3))

    copier(tmp_path, api, events).run_pass()
    tierer.run_pass()
    assert not (volume / "ckpt" / "step_1").exists() and not (volume / "ckpt" / "step_2").exists()
    assert (volume / "ckpt" / "step_3").is_dir()  # keepMemory: 1
    first = api.get("mem-1", NAMESPACE)
    assert first is not None and first.model.status.tiers == "local"
    assert first.model.status.local is not None and not first.model.status.local.present
    assert ("mem-1", "MemoryCopyDeleted") in events.reasons
    # keepLocal: 2 applies to the disk copies, once each is out of memory.
    tierer.run_pass()
    assert api.get("mem-1", NAMESPACE) is None
    assert not (tmp_path / "state" / "tier-store" / NAMESPACE / "mem-1").exists()
    kept = api.get("mem-2", NAMESPACE)
    assert kept is not None and kept.model.status.tiers == "local"
    assert os.path.isdir(tmp_path / "state" / "tier-store" / NAMESPACE / "mem-2")
