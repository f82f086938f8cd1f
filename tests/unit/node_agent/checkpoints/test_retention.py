"""Checkpoint retention across tiers: what the policy deletes, and what it must never delete."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from cairn.node_agent.checkpoints.retention import CheckpointRecord, RetentionPlan, plan_retention


def tiered(*steps: int) -> list[CheckpointRecord]:
    """Checkpoints with a local copy and a verified remote copy."""
    return [
        CheckpointRecord(step, has_local=True, remote_verified=True, remote_present=True) for step in steps
    ]


def local_only_copies(*steps: int) -> list[CheckpointRecord]:
    return [
        CheckpointRecord(step, has_local=True, remote_verified=False, remote_present=False) for step in steps
    ]


def plan(
    records: Iterable[CheckpointRecord],
    keep_local: int = 2,
    keep_remote_last: int = 2,
    keep_remote_every: int = 0,
    local_only: bool = False,
) -> RetentionPlan:
    return plan_retention(records, keep_local, keep_remote_last, keep_remote_every, local_only)


def apply(records: list[CheckpointRecord], result: RetentionPlan) -> list[CheckpointRecord]:
    """The tiers after carrying a plan out."""
    after = []
    for r in records:
        local = r.has_local and r.step not in result.delete_local
        remote = r.remote_present and r.step not in result.delete_remote
        if local or remote:
            after.append(CheckpointRecord(r.step, local, r.remote_verified and remote, remote))
    return after


def test_keep_local_two_of_five_leaves_exactly_two_local_copies() -> None:
    result = plan(tiered(100, 200, 300, 400, 500), keep_local=2)
    assert result.delete_local == {100, 200, 300}
    assert result.awaiting_upload == set()


def test_unverified_remote_never_lets_a_local_copy_go() -> None:
    records = [
        CheckpointRecord(100, has_local=True, remote_verified=False, remote_present=True),
        CheckpointRecord(200, has_local=True, remote_verified=False, remote_present=False),
        *tiered(300, 400, 500),
    ]
    result = plan(records, keep_local=1)
    assert result.delete_local == {300, 400}
    assert result.awaiting_upload == {100, 200}


def test_local_only_policy_lets_local_copies_go_without_a_remote_copy() -> None:
    result = plan(local_only_copies(1, 2, 3, 4, 5), keep_local=2, local_only=True)
    assert result.delete_local == {1, 2, 3}
    assert result.delete_remote == set()


def test_local_only_policy_never_deletes_remote_copies() -> None:
    records = [CheckpointRecord(step, False, True, True) for step in (1, 2, 3)]
    assert plan(records, keep_remote_last=0, local_only=True).delete_remote == set()


def test_newest_complete_checkpoint_survives_even_with_keep_zero() -> None:
    records = tiered(10, 20, 30)
    result = plan(records, keep_local=0, keep_remote_last=0, keep_remote_every=0)
    assert 30 not in result.delete_local | result.delete_remote
    assert result.delete_local == {10, 20}
    later = plan(apply(records, result), keep_local=0, keep_remote_last=0)
    assert later.delete_remote == {10, 20}
    assert 30 not in later.delete_local | later.delete_remote


def test_newest_complete_checkpoint_survives_a_local_only_policy_with_keep_zero() -> None:
    result = plan(local_only_copies(1, 2, 3), keep_local=0, local_only=True)
    assert result.delete_local == {1, 2}


def test_an_upload_in_flight_does_not_count_as_the_newest_complete_checkpoint() -> None:
    records = [
        CheckpointRecord(10, has_local=False, remote_verified=True, remote_present=True),
        CheckpointRecord(20, has_local=False, remote_verified=False, remote_present=True),
    ]
    result = plan(records, keep_local=0, keep_remote_last=0)
    assert result.delete_remote == set(), "step 10 is the only restorable checkpoint"


def test_remote_keeps_the_last_m_and_every_kth_step() -> None:
    records = [CheckpointRecord(step, False, True, True) for step in range(100, 1100, 100)]
    result = plan(records, keep_remote_last=2, keep_remote_every=500)
    kept = {r.step for r in records} - result.delete_remote
    assert kept == {500, 900, 1000}


def test_keep_remote_every_zero_keeps_no_extra_steps() -> None:
    records = [CheckpointRecord(step, False, True, True) for step in (0, 5, 10)]
    assert plan(records, keep_remote_last=1, keep_remote_every=0).delete_remote == {0, 5}


def test_unverified_remote_copies_are_left_to_the_uploader() -> None:
    records = [
        CheckpointRecord(1, has_local=False, remote_verified=False, remote_present=True),
        CheckpointRecord(2, has_local=False, remote_verified=False, remote_present=True),
        *[CheckpointRecord(step, False, True, True) for step in (3, 4, 5)],
    ]
    assert plan(records, keep_remote_last=1).delete_remote == {3, 4}


def test_remote_copy_outlives_its_local_copy() -> None:
    records = tiered(1, 2, 3, 4)
    result = plan(records, keep_local=3, keep_remote_last=1)
    assert result.delete_local == {1}
    assert result.delete_remote == set(), "2 and 3 are still local; 1 loses its local copy in this plan"
    assert plan(apply(records, result), keep_local=3, keep_remote_last=1).delete_remote == {1}


def test_a_local_copy_is_never_stranded_when_the_remote_window_is_smaller() -> None:
    records = tiered(1, 2, 3)
    for step in (4, 5, 6):
        records = apply(records, plan(records, keep_local=3, keep_remote_last=1))
        records += tiered(step)
    records = apply(records, plan(records, keep_local=3, keep_remote_last=1))
    assert plan(records, keep_local=3, keep_remote_last=1).awaiting_upload == set()
    assert {r.step for r in records if r.has_local} == {4, 5, 6}


def test_five_checkpoints_with_keep_local_two_settle_to_what_the_policy_says() -> None:
    records: list[CheckpointRecord] = []
    for step in (100, 200, 300, 400, 500):
        records += tiered(step)
        records = apply(records, plan(records, keep_local=2, keep_remote_last=3))
    records = apply(records, plan(records, keep_local=2, keep_remote_last=3))
    assert {r.step for r in records if r.has_local} == {400, 500}
    assert {r.step for r in records if r.remote_verified} == {300, 400, 500}


def test_nothing_is_deleted_from_an_empty_or_small_series() -> None:
    assert plan([]) == RetentionPlan(frozenset(), frozenset(), frozenset())
    assert plan(tiered(1, 2)) == RetentionPlan(frozenset(), frozenset(), frozenset())


def test_the_same_step_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        plan(tiered(1, 1))


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="keepLocal is -1"):
        plan(tiered(1), keep_local=-1)


# -- the memory tier -------------------------------------------------------------------------------


def in_memory(step: int, *, disk: bool = False, verified: bool = False) -> CheckpointRecord:
    return CheckpointRecord(
        step, has_local=disk, remote_verified=verified, remote_present=verified, has_memory=True
    )


def memory_plan(
    records: Iterable[CheckpointRecord],
    keep_memory: int = 1,
    keep_local: int = 2,
    keep_remote_last: int = 3,
    keep_remote_every: int = 0,
    local_only: bool = False,
    memory_only: bool = False,
) -> RetentionPlan:
    return plan_retention(
        records,
        keep_local,
        keep_remote_last,
        keep_remote_every,
        local_only,
        keep_memory=keep_memory,
        memory_only=memory_only,
    )


def apply_tiers(records: list[CheckpointRecord], result: RetentionPlan) -> list[CheckpointRecord]:
    """The tiers after carrying a plan out, memory included; a record with no copy left is gone."""
    after = []
    for r in records:
        memory = r.has_memory and r.step not in result.delete_memory
        local = r.has_local and r.step not in result.delete_local
        remote = r.remote_present and r.step not in result.delete_remote
        if memory or local or remote:
            after.append(CheckpointRecord(r.step, local, r.remote_verified and remote, remote, memory))
    return after


def test_a_memory_copy_is_kept_until_a_slower_tier_holds_it_verified() -> None:
    records = [in_memory(1), in_memory(2), in_memory(3)]
    result = memory_plan(records, keep_memory=1)
    assert result.delete_memory == set()
    assert result.awaiting_slower_tier == {1, 2}
    # The memory drain copied step 1 to the node's disks; S3 verified step 2.
    records = [in_memory(1, disk=True), in_memory(2, verified=True), in_memory(3)]
    result = memory_plan(records, keep_memory=1)
    assert result.delete_memory == {1, 2}
    assert result.awaiting_slower_tier == set()


def test_a_memory_only_policy_lets_memory_copies_go_beyond_keep_memory() -> None:
    records = [in_memory(1), in_memory(2), in_memory(3)]
    result = memory_plan(records, keep_memory=1, local_only=True, memory_only=True)
    assert result.delete_memory == {1, 2}
    assert 3 not in result.delete_memory  # the newest complete checkpoint keeps its only copy
    assert memory_plan(records, keep_memory=0, local_only=True, memory_only=True).delete_memory == {1, 2}


def test_a_disk_copy_goes_only_after_its_memory_copy() -> None:
    records = [in_memory(step, disk=True, verified=True) for step in (1, 2, 3, 4)]
    result = memory_plan(records, keep_memory=3, keep_local=1)
    assert result.delete_memory == {1}
    assert result.delete_local == set(), "steps 2 and 3 are still in memory; 1 leaves memory in this plan"
    assert result.delete_remote == set()
    after = apply_tiers(records, result)
    assert memory_plan(after, keep_memory=3, keep_local=1).delete_local == {1}


def test_keep_local_applies_to_disk_copies_and_remote_goes_after_both() -> None:
    records = [in_memory(step, disk=True, verified=True) for step in (1, 2, 3, 4, 5)]
    for _ in range(4):
        records = apply_tiers(records, memory_plan(records, keep_memory=1, keep_local=2, keep_remote_last=3))
    assert {r.step for r in records if r.has_memory} == {5}
    assert {r.step for r in records if r.has_local} == {4, 5}
    assert {r.step for r in records if r.remote_verified} == {3, 4, 5}


def test_memory_local_s3_with_every_thousandth_step_in_s3_settles_per_tier() -> None:
    records: list[CheckpointRecord] = []
    for step in range(500, 4001, 500):
        records.append(in_memory(step))
        # The memory drain and the upload catch up before the next checkpoint.
        records = [
            CheckpointRecord(r.step, r.has_memory or r.has_local, True, True, r.has_memory) for r in records
        ]
        for _ in range(3):
            records = apply_tiers(
                records,
                memory_plan(records, keep_memory=1, keep_local=2, keep_remote_last=1, keep_remote_every=1000),
            )
    assert {r.step for r in records if r.has_memory} == {4000}
    assert {r.step for r in records if r.has_local} == {3500, 4000}
    # 3500 stays in S3 while the node's disks keep it; it leaves S3 after it leaves them.
    assert {r.step for r in records if r.remote_verified} == {1000, 2000, 3000, 3500, 4000}


def test_a_local_only_memory_policy_never_strands_a_memory_copy() -> None:
    # [memory, local]: keep 3 in memory but only 1 on disk; every copy still leaves memory in time.
    records: list[CheckpointRecord] = []
    for step in range(1, 8):
        records.append(in_memory(step, disk=True))
        for _ in range(3):
            records = apply_tiers(records, memory_plan(records, keep_memory=3, keep_local=1, local_only=True))
    assert {r.step for r in records if r.has_memory} == {5, 6, 7}
    assert memory_plan(records, keep_memory=3, keep_local=1, local_only=True).awaiting_slower_tier == set()
    assert {r.step for r in records} == {5, 6, 7}


def test_negative_keep_memory_is_refused() -> None:
    with pytest.raises(ValueError, match="keepMemory is -1"):
        memory_plan([in_memory(1)], keep_memory=-1)
