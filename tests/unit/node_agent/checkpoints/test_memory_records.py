"""A checkpoint in a memory volume is recorded as the memory tier, and the peer server serves the
tier store's copy once memory has let it go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointPolicy,
    CheckpointPolicySpec,
    CheckpointStatus,
    CommitSpec,
    LocalCopy,
    Tier,
)
from cairn.api.volume import LocalVolumeSpec, PoolClass
from cairn.kube import Typed
from cairn.node_agent.checkpoints.local import checkpoint_locator
from cairn.node_agent.checkpoints.watcher import CheckpointWatcher
from tests.unit.node_agent.checkpoints.test_restore_engine import write_checkpoint
from tests.unit.node_agent.checkpoints.test_tiering import checkpoint

POLICY = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL], commit=CommitSpec(settle_seconds=0))


class Policies:
    def get(self, name: str, namespace: str | None = None) -> Typed:
        return Typed(
            CheckpointPolicy(spec=POLICY), {"name": name, "namespace": namespace, "resourceVersion": "1"}
        )


class RecordedCheckpoints:
    def __init__(self) -> None:
        self.objects: dict[str, Typed] = {}

    def get(self, name: str, namespace: str | None = None) -> Typed | None:
        return self.objects.get(name)

    def create(self, name: str, model: Checkpoint, **kwargs: Any) -> Typed:
        self.objects[name] = Typed(model, {"name": name, "namespace": kwargs.get("namespace")})
        return self.objects[name]

    def patch_status(self, name: str, status: CheckpointStatus, namespace: str | None = None) -> Typed:
        item = self.objects[name]
        merged = item.model.status.model_dump() | status.model_dump(exclude_unset=True)
        item.model = item.model.model_copy(update={"status": CheckpointStatus.model_validate(merged)})
        return item


def volume_spec(pool: PoolClass) -> LocalVolumeSpec:
    return LocalVolumeSpec(
        csi_name="pvc-1",
        node_name="n1",
        pool=pool,
        size_bytes=1 << 30,
        checkpoint_policy="p",
        pvc_name="trainer",
        pvc_namespace="team",
    )


def record_one(tmp_path: Path, pool: PoolClass) -> Checkpoint:
    write_checkpoint(tmp_path / "vol" / "step_100")
    api = RecordedCheckpoints()
    watcher = CheckpointWatcher(
        "n1",
        Policies(),  # type: ignore[arg-type]
        api,  # type: ignore[arg-type]
        lambda volume: volume_spec(pool),
    )
    watcher.register("vol", str(tmp_path / "vol"))
    [watched] = watcher._volumes.values()
    for now in (0.0, 10.0, 20.0):
        watcher.poll(watched, now)
    [item] = api.objects.values()
    return item.model


def test_a_checkpoint_in_a_memory_volume_is_recorded_in_the_memory_tier(tmp_path: Path) -> None:
    recorded = record_one(tmp_path, PoolClass.MEMORY)
    assert recorded.status.tiers == "memory"
    assert recorded.status.local is not None and recorded.status.local.pool == "memory"


def test_a_checkpoint_in_a_disk_volume_is_recorded_in_the_local_tier(tmp_path: Path) -> None:
    recorded = record_one(tmp_path, PoolClass.NVME)
    assert recorded.status.tiers == "local"
    assert recorded.status.local is not None and recorded.status.local.pool == "nvme"


def test_the_peer_server_serves_the_tier_stores_copy_once_memory_let_it_go(tmp_path: Path) -> None:
    store = tmp_path / "state" / "tier-store"
    (store / "team" / "c").mkdir(parents=True)
    item = checkpoint(local=False)
    item.status.disk = LocalCopy(node_name="n1", volume="", path="tier-store/team/c", pool="nvme")

    class One:
        def get(self, name: str, namespace: str | None = None) -> Typed:
            return Typed(item, {"name": name, "namespace": namespace})

    def no_replica(checkpoint: Checkpoint, namespace: str, name: str) -> Path | None:
        return None

    locate = checkpoint_locator(One(), "n1", lambda volume: None, no_replica, store)  # type: ignore[arg-type]
    found = locate("team", "c")
    assert found is not None and found.directory == store / "team" / "c"
    # Status naming a path outside the store is never followed.
    item.status.disk = LocalCopy(node_name="n1", volume="", path="replicas/team/c")
    assert locate("team", "c") is None
    assert checkpoint_locator(One(), "n1", lambda v: None, no_replica)("team", "c") is None  # type: ignore[arg-type]
