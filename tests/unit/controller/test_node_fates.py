"""Dead and lost nodes, decided from Lease sightings on the controller's own clock."""

from __future__ import annotations

from cairn.api.checkpoint import CheckpointStatus, LocalCopy, RemoteCopy
from cairn.controller.nodes.fates import Fate, NodeFacts, copies_dropped, fate_of
from cairn.lease_watch import LeaseSighting, LeaseWatch
from tests.unit.node_agent.checkpoints.test_tiering import NOW


def test_a_lease_is_dead_only_after_it_stops_changing_for_its_duration_on_the_watchers_clock() -> None:
    watch = LeaseWatch()
    # The renew time another host wrote is only a marker: the clocks are never compared.
    watch.observe("a", LeaseSighting("1999-01-01T00:00:00Z", 10), now=100.0)
    assert not watch.expired("a", 109.0)
    watch.observe("a", LeaseSighting("1999-01-01T00:00:05Z", 10), now=109.0)  # renewed
    assert not watch.expired("a", 118.0)
    watch.observe("a", LeaseSighting("1999-01-01T00:00:05Z", 10), now=119.5)  # not renewed since
    assert watch.expired("a", 119.5)
    watch.observe("a", LeaseSighting("1999-01-01T00:00:20Z", 10), now=120.0)  # back
    assert not watch.expired("a", 120.0)


def test_a_node_first_seen_gets_a_full_duration_lease_or_not() -> None:
    watch = LeaseWatch(default_duration_seconds=40)
    watch.observe("never-renewed", None, now=0.0)
    assert not watch.expired("never-renewed", 40.0) and watch.expired("never-renewed", 40.1)
    assert not watch.expired("unseen", 1e9)
    watch.forget(keep=set())
    assert not watch.expired("never-renewed", 1e9)


def test_only_a_dead_node_can_be_lost_and_a_live_agent_is_never_released() -> None:
    assert fate_of(NodeFacts("a", False, node_object_exists=False, marked_lost=True)) is Fate.ALIVE
    assert fate_of(NodeFacts("a", True, node_object_exists=True, marked_lost=False)) is Fate.DEAD
    assert fate_of(NodeFacts("a", True, node_object_exists=False, marked_lost=False)) is Fate.LOST
    assert fate_of(NodeFacts("a", True, node_object_exists=True, marked_lost=True)) is Fate.LOST


def test_a_lost_nodes_copies_drop_out_of_the_tiers() -> None:
    status = CheckpointStatus(
        local=LocalCopy(node_name="a", volume="v", path="p"),
        peer=LocalCopy(node_name="b", volume="", path="p"),
        remote=RemoteCopy(url="s3://b/p/", verified_at=NOW),
        tiers="local,peer,s3",
    )
    dropped = copies_dropped(status, "a")
    assert dropped is not None and dropped.tiers == "peer,s3" and dropped.local is not None
    assert dropped.local.present is False and status.local is not None and status.local.present
    assert copies_dropped(dropped, "a") is None  # already dropped: nothing to write
    assert copies_dropped(status, "c") is None
    only_there = CheckpointStatus(local=LocalCopy(node_name="a", volume="v", path="p"))
    gone = copies_dropped(only_there, "a")
    assert gone is not None and gone.tiers == ""


def test_a_lost_node_takes_its_memory_and_tier_store_copies_with_it() -> None:
    status = CheckpointStatus(
        local=LocalCopy(node_name="a", volume="v", path="p", pool="memory"),
        disk=LocalCopy(node_name="a", volume="", path="tier-store/ns/c", pool="nvme"),
        remote=RemoteCopy(url="s3://b/p/", verified_at=NOW),
        tiers="memory,local,s3",
    )
    dropped = copies_dropped(status, "a")
    assert dropped is not None and dropped.tiers == "s3"
    assert dropped.disk is not None and dropped.disk.present is False
