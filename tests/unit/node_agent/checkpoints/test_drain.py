"""The drain's decisions: what a volume still waits for before the agent lets it go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cairn.api.checkpoint import CheckpointPolicySpec, S3Target, SecretKeyRef
from cairn.kube import Typed
from cairn.node_agent.checkpoints.drain import DrainFacts, drain_deadline, untiered_checkpoints, waiting_for
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
