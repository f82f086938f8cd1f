"""A policy's tiers (memory, local, s3) and the TIERS column a Checkpoint shows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cairn.api.checkpoint import (
    CheckpointPolicySpec,
    CheckpointStatus,
    LocalCopy,
    RemoteCopy,
    RetentionSpec,
    S3Target,
    SecretKeyRef,
    Tier,
)

TARGET = S3Target(endpoint="http://s3", bucket="b", credentials_secret_ref=SecretKeyRef(name="s"))
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_tiers_are_an_ordered_duplicate_free_subset_of_memory_local_s3() -> None:
    for tiers in (
        ["memory"],
        ["memory", "local"],
        ["local", "s3"],
        ["memory", "s3"],
        ["memory", "local", "s3"],
    ):
        target = TARGET if "s3" in tiers else None
        spec = CheckpointPolicySpec.model_validate({"tiers": tiers, "target": target})
        assert [t.value for t in spec.tiers or []] == tiers
    with pytest.raises(ValidationError, match="out of order"):
        CheckpointPolicySpec.model_validate({"tiers": ["local", "memory"]})
    with pytest.raises(ValidationError, match="names a tier twice"):
        CheckpointPolicySpec.model_validate({"tiers": ["memory", "memory"]})
    with pytest.raises(ValidationError, match="is empty"):
        CheckpointPolicySpec.model_validate({"tiers": []})
    with pytest.raises(ValidationError):
        CheckpointPolicySpec.model_validate({"tiers": ["tape"]})


def test_s3_in_tiers_needs_the_policys_target_and_a_target_needs_s3() -> None:
    with pytest.raises(ValidationError, match="no target"):
        CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL, Tier.S3])
    with pytest.raises(ValidationError, match="leaves out s3"):
        CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL], target=TARGET)


def test_unset_tiers_keep_todays_behaviour() -> None:
    assert CheckpointPolicySpec().tiers is None
    assert CheckpointPolicySpec().tier_list() == [Tier.LOCAL]
    assert CheckpointPolicySpec(target=TARGET).tier_list() == [Tier.LOCAL, Tier.S3]
    assert not CheckpointPolicySpec(target=TARGET).copies_to_local
    assert not CheckpointPolicySpec(target=TARGET).memory_tier
    assert RetentionSpec().keep_memory == 1 and RetentionSpec().keep_local == 2


def test_memory_only_and_memory_to_local_policies_are_told_apart() -> None:
    memory_only = CheckpointPolicySpec(tiers=[Tier.MEMORY])
    assert memory_only.memory_only and memory_only.memory_tier and not memory_only.copies_to_local
    drained = CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.LOCAL, Tier.S3], target=TARGET)
    assert drained.copies_to_local and not drained.memory_only
    assert not CheckpointPolicySpec(tiers=[Tier.MEMORY, Tier.S3], target=TARGET).copies_to_local


def test_the_tiers_column_lists_memory_then_local_then_peer_then_s3() -> None:
    status = CheckpointStatus(
        local=LocalCopy(node_name="n1", volume="v", path="ckpt/step_1", pool="memory"),
        disk=LocalCopy(node_name="n1", volume="", path="tier-store/ns/c", pool="nvme"),
        peer=LocalCopy(node_name="n2", volume="", path="replicas/ns/c"),
        remote=RemoteCopy(url="s3://b/p/", verified_at=NOW),
    )
    assert status.restorable_tiers() == "memory,local,peer,s3"
    assert status.local is not None and status.disk is not None
    status.local.present = False  # retention took it out of memory
    assert status.restorable_tiers() == "local,peer,s3"
    status.disk.present = False
    assert status.restorable_tiers() == "peer,s3"


def test_a_disk_volumes_copy_is_the_local_tier() -> None:
    on_nvme = CheckpointStatus(local=LocalCopy(node_name="n1", volume="v", path="p", pool="nvme"))
    assert on_nvme.restorable_tiers() == "local"
    recorded_before_pools = CheckpointStatus(local=LocalCopy(node_name="n1", volume="v", path="p"))
    assert recorded_before_pools.restorable_tiers() == "local"
    only_memory = CheckpointStatus(local=LocalCopy(node_name="n1", volume="v", path="p", pool="memory"))
    assert only_memory.restorable_tiers() == "memory"
