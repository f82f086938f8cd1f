"""The drain's decisions: what a volume still waits for before the agent lets it go."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cairn.api.checkpoint import (
    MEMORY_POOL,
    CheckpointPolicy,
    CheckpointPolicySpec,
    LocalCopy,
    S3Target,
    SecretKeyRef,
    Tier,
)
from cairn.api.volume import LocalVolume, LocalVolumeSpec
from cairn.kube import Typed
from cairn.node_agent.checkpoints.drain import (
    DrainFacts,
    VolumeDrainer,
    drain_deadline,
    only_in_memory,
    untiered_checkpoints,
    waiting_for,
)
from tests.unit.node_agent.checkpoints.test_tiering import checkpoint

TIERED = CheckpointPolicySpec(
    target=S3Target(endpoint="https://s3", bucket="b", credentials_secret_ref=SecretKeyRef(name="s"))
)


def test_a_drain_is_done_only_after_a_look_taken_since_the_hold_found_nothing_left() -> None:
    assert waiting_for(DrainFacts(looked_since_hold=True)) == []
    # Unstaged a moment after the commit: no poll has seen the volume since, so nothing is known yet.
    assert waiting_for(DrainFacts(looked_since_hold=False)) == [
        "a first look at the volume for committed checkpoints"
    ]
    left = waiting_for(DrainFacts(True, settling=("ckpt/step_9",), untiered=("c-8 (ckpt/step_8)",)))
    assert left == ["ckpt/step_9 to be recorded", "c-8 (ckpt/step_8) to be Tiered"]


def test_only_this_volumes_checkpoints_that_can_still_be_tiered_are_waited_for() -> None:
    waiting = Typed(checkpoint(1, "ckpt/step_1"), {"name": "c-1"})
    tiered = Typed(checkpoint(2, "ckpt/step_2", verified=True), {"name": "c-2"})
    changed = Typed(checkpoint(3, "ckpt/step_3", reason="ChangedAfterCommit"), {"name": "c-3"})
    retrying = Typed(checkpoint(4, "ckpt/step_4", reason="UploadError"), {"name": "c-4"})
    other = checkpoint(5, "ckpt/step_5")
    other.spec.volume = "another-volume"
    items = [waiting, tiered, changed, retrying, Typed(other, {"name": "c-5"})]
    assert untiered_checkpoints(items, "vol", TIERED) == ("c-1 (ckpt/step_1)", "c-4 (ckpt/step_4)")
    # A local-only policy has nothing to drain.
    assert untiered_checkpoints(items, "vol", CheckpointPolicySpec()) == ()


def test_the_deadline_counts_from_the_deletion() -> None:
    deleted = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert drain_deadline(None, 60) is None
    assert drain_deadline(deleted, 60) == deleted + timedelta(seconds=60)
    assert CheckpointPolicySpec().drain_timeout_seconds == 1800


def memory_checkpoint(
    step: int, *, disk: bool = False, verified: bool = False, reason: str | None = None
) -> Typed:
    item = checkpoint(step, f"ckpt/step_{step}", verified=verified, reason=reason)
    assert item.status.local is not None
    item.status.local.pool = "memory"
    if disk:
        item.status.disk = LocalCopy(node_name="n1", volume="", path=f"tier-store/ns/c-{step}", pool="nvme")
    return Typed(item, {"name": f"c-{step}"})


def test_a_released_memory_volume_waits_until_each_checkpoint_has_a_disk_or_verified_s3_copy() -> None:
    drained = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL, Tier.S3], target=TIERED.target)
    items = [
        memory_checkpoint(1, disk=True),
        memory_checkpoint(2, verified=True),
        memory_checkpoint(3),
        memory_checkpoint(4, reason="ChangedAfterCommit"),  # no verified copy can ever be made
    ]
    assert only_in_memory(items, "vol", drained) == ("c-3 (ckpt/step_3)",)
    assert waiting_for(DrainFacts(True, only_in_memory=("c-3 (ckpt/step_3)",))) == [
        "c-3 (ckpt/step_3) to be copied out of memory"
    ]
    # Without a local tier the memory copy waits for S3 as a disk volume's does.
    assert only_in_memory(items, "vol", TIERED) == ("c-3 (ckpt/step_3)",)
    # Memory is the only tier: nothing slower to wait for.
    assert only_in_memory(items, "vol", CheckpointPolicySpec(tiers=[Tier.MEMORY])) == ()
    assert only_in_memory(items, "other-volume", drained) == ()


class ListedCheckpoints:
    def __init__(self, items: list[Typed]) -> None:
        self.items = items

    def list(self, label_selector: str | None = None) -> list[Typed]:
        return self.items


class OnePolicy:
    def __init__(self, spec: CheckpointPolicySpec) -> None:
        self.spec = spec

    def get(self, name: str, namespace: str | None = None) -> Typed:
        return Typed(CheckpointPolicy(spec=self.spec), {"name": name, "namespace": namespace})


class Told:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def record(self, involved: dict, reason: str, message: str, *, warning: bool = False) -> None:
        self.reasons.append(reason)


def test_deleting_a_memory_volume_waits_for_its_checkpoints_to_leave_memory(tmp_path: Path) -> None:
    drained = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL])
    spec = LocalVolumeSpec(
        csi_name="pvc-1",
        node_name="n1",
        pool=MEMORY_POOL,
        size_bytes=1 << 20,
        checkpoint_policy="p",
        pvc_name="pvc",
        pvc_namespace="ns",
    )
    items = [memory_checkpoint(1)]
    drained_volumes: list[str] = []
    told = Told()
    drainer = VolumeDrainer(
        "n1",
        tmp_path,
        ListedCheckpoints(items),  # type: ignore[arg-type]
        OnePolicy(drained),  # type: ignore[arg-type]
        told,  # type: ignore[arg-type]
        lambda volume: spec if volume == "vol" else None,
        lambda volume: (time.monotonic() + 60, []),  # the watcher looked after the deletion
        lambda volume, path: None,
        lambda volume: None,
        on_drained=drained_volumes.append,
    )
    deleted = Typed(
        LocalVolume(spec=spec), {"name": "vol", "deletionTimestamp": datetime.now(UTC).isoformat()}
    )
    waiting = drainer.removal_blocker(deleted)
    assert waiting is not None and "c-1 (ckpt/step_1) to be copied out of memory" in waiting
    assert told.reasons == ["Draining"]
    drainer.run_pass()
    assert drained_volumes == []
    items[0] = memory_checkpoint(1, disk=True)  # the memory drain made its local copy
    drainer.run_pass()
    assert drained_volumes == ["vol"]
    assert drainer.removal_blocker(deleted) is None
    # A disk volume is not held back by this rule.
    assert drainer.removal_blocker(Typed(LocalVolume(spec=spec), {"name": "unknown"})) is None
