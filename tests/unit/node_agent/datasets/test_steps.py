"""The dataset agent's next step for one Dataset, from what it can see on a pass."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cairn.api.dataset import DatasetNodeStatus, NodePhase
from cairn.node_agent.datasets.steps import DatasetView, Step, next_step, shared_copy_report

# A seeder at the start: nothing listed, no volume yet, nothing joined.
FRESH_SEEDER = DatasetView(
    is_seeder=True,
    listed=False,
    failed=False,
    phase=NodePhase.WAITING,
    has_volume=False,
    joined=False,
    has_parts=False,
)
FRESH_TARGET = replace(FRESH_SEEDER, is_seeder=False, listed=True)


def test_the_seeder_lists_the_origin_first_even_before_its_volume_exists() -> None:
    assert next_step(FRESH_SEEDER) == Step.LIST_ORIGIN
    assert next_step(replace(FRESH_SEEDER, failed=True)) == Step.WAIT_FOR_VOLUME  # never list a failed one


def test_once_listed_the_seeder_waits_for_its_volume_then_reads_the_origin() -> None:
    listed = replace(FRESH_SEEDER, listed=True)
    assert next_step(listed) == Step.WAIT_FOR_VOLUME
    assert next_step(replace(listed, has_volume=True)) == Step.SEED_FROM_ORIGIN


def test_a_seeder_that_already_joined_or_finished_swarms_instead_of_reading_again() -> None:
    seeding = replace(FRESH_SEEDER, listed=True, has_volume=True, has_parts=True)
    assert next_step(replace(seeding, joined=True)) == Step.SWARM
    # Restarted after it finished: its copy is Ready, so the origin is not read a second time.
    assert next_step(replace(seeding, phase=NodePhase.READY)) == Step.SWARM


def test_a_target_swarms_once_parts_are_published_and_its_volume_exists() -> None:
    assert next_step(FRESH_TARGET) == Step.WAIT_FOR_VOLUME
    assert next_step(replace(FRESH_TARGET, has_volume=True)) == Step.IDLE
    assert next_step(replace(FRESH_TARGET, has_volume=True, has_parts=True)) == Step.SWARM


@pytest.mark.parametrize("is_seeder", [True, False])
def test_a_node_whose_copy_failed_does_nothing_until_the_dataset_changes(is_seeder: bool) -> None:
    failed = replace(
        FRESH_TARGET, is_seeder=is_seeder, phase=NodePhase.FAILED, has_volume=True, has_parts=True
    )
    assert next_step(failed) == Step.IDLE


def test_a_shared_copy_is_ready_only_once_the_lenders_copy_is_ready_and_checked_here() -> None:
    lent = DatasetNodeStatus(phase=NodePhase.READY, progress=1.0, digest="d", bytes_from_origin=5)
    ready = shared_copy_report("corpus", lent, checked=True)
    assert (ready.phase, ready.digest, ready.bytes_from_origin, ready.bytes_from_peers) == (
        NodePhase.READY,
        "d",
        0,
        0,
    )
    unchecked = shared_copy_report("corpus", lent, checked=False)
    assert unchecked.phase == NodePhase.WAITING and "checked again" in (unchecked.message or "")
    moving = shared_copy_report(
        "corpus", DatasetNodeStatus(phase=NodePhase.DOWNLOADING, progress=0.5), checked=True
    )
    assert (moving.phase, moving.progress, moving.reason) == (NodePhase.WAITING, 0.5, "SharedCopyNotReady")
    assert "not reported yet" in (shared_copy_report("corpus", None, checked=True).message or "")
