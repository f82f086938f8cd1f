"""The volume reconciler's actions for one LocalVolume event."""

from __future__ import annotations

from dataclasses import replace

from cairn.api.volume import VolumePhase
from cairn.node_agent.volumes.steps import VolumeAction, VolumeEvent, volume_actions
from cairn.units import GiB

NEW = VolumeEvent(
    kind="ADDED",
    on_this_node=True,
    deleting=False,
    phase=VolumePhase.PENDING,
    indexed=False,
    size_bytes=10 * GiB,
    capacity_bytes=0,
)
READY = replace(NEW, kind="MODIFIED", phase=VolumePhase.READY, indexed=True, capacity_bytes=10 * GiB)


def test_another_nodes_volume_is_never_touched() -> None:
    for event in (NEW, READY, replace(READY, deleting=True), replace(READY, kind="DELETED")):
        assert volume_actions(replace(event, on_this_node=False)) == ()


def test_a_pending_volume_is_carved_once() -> None:
    assert volume_actions(NEW) == (VolumeAction.CREATE,)
    # The event that added the finalizer can arrive after the LV is carved: the index says so.
    assert volume_actions(replace(NEW, kind="MODIFIED", indexed=True)) == ()


def test_a_ready_volume_costs_nothing_unless_it_was_not_indexed_or_must_grow() -> None:
    assert volume_actions(READY) == ()
    assert volume_actions(replace(READY, indexed=False)) == (VolumeAction.ACTIVATE,)
    assert volume_actions(replace(READY, size_bytes=20 * GiB)) == (VolumeAction.EXTEND,)
    after_restart = replace(READY, indexed=False, size_bytes=20 * GiB)
    assert volume_actions(after_restart) == (VolumeAction.ACTIVATE, VolumeAction.EXTEND)


def test_deletion_removes_before_the_object_goes_and_forgets_after() -> None:
    assert volume_actions(replace(READY, deleting=True)) == (VolumeAction.REMOVE,)
    assert volume_actions(replace(NEW, deleting=True)) == (VolumeAction.REMOVE,)
    assert volume_actions(replace(READY, kind="DELETED")) == (VolumeAction.FORGET,)


def test_a_failed_volume_is_left_as_it_is() -> None:
    assert volume_actions(replace(NEW, phase=VolumePhase.FAILED)) == ()
