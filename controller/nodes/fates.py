"""Pure decisions about nodes: is an agent's Lease still being renewed, and is its node lost.

A Lease is judged by watching it change on the controller's own monotonic clock, never by comparing
the renew time another host wrote with the controller's wall clock: skew between clocks cannot make
a live node look dead, or a dead one live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cairn.api.checkpoint import CheckpointStatus
from cairn.api.names import DEFAULT_NODE_LEASE_SECONDS as DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class LeaseSighting:
    marker: str
    """Changes with every renewal (the renew time as written, or the resourceVersion)."""
    duration_seconds: int


@dataclass
class _Seen:
    marker: str | None
    changed_at: float
    duration_seconds: int


@dataclass
class LeaseWatch:
    """Which nodes' Leases stopped changing for longer than their duration, on the watcher's clock.

    A node first seen (with or without a Lease) gets a full duration from that moment: a
    controller that just started declares no node dead before it could have seen one renewal.
    """

    default_duration_seconds: int = DEFAULT_LEASE_SECONDS
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, node: str, sighting: LeaseSighting | None, now: float) -> None:
        marker = sighting.marker if sighting else None
        duration = sighting.duration_seconds if sighting else self.default_duration_seconds
        seen = self._seen.get(node)
        if seen is None or seen.marker != marker:
            self._seen[node] = _Seen(marker, now, duration)
        else:
            seen.duration_seconds = duration

    def expired(self, node: str, now: float) -> bool:
        seen = self._seen.get(node)
        return seen is not None and now - seen.changed_at > seen.duration_seconds

    def forget(self, keep: set[str]) -> None:
        self._seen = {node: seen for node, seen in self._seen.items() if node in keep}


class Fate(StrEnum):
    ALIVE = "Alive"
    DEAD = "Dead"
    LOST = "Lost"


@dataclass(frozen=True)
class NodeFacts:
    name: str
    lease_expired: bool
    node_object_exists: bool
    marked_lost: bool


def fate_of(facts: NodeFacts) -> Fate:
    """Lost needs both: no renewals, and the Node gone or the operator's word. A live agent is
    never released, so a Node deleted and re-joined under its name loses nothing."""
    if not facts.lease_expired:
        return Fate.ALIVE
    if facts.marked_lost or not facts.node_object_exists:
        return Fate.LOST
    return Fate.DEAD


def copies_dropped(status: CheckpointStatus, node: str) -> CheckpointStatus | None:
    """The Checkpoint status with its copies on `node` marked gone, or None if it had none there."""
    changed = status.model_copy(deep=True)
    touched = False
    for copy in (changed.local, changed.peer):
        if copy is not None and copy.node_name == node and copy.present:
            copy.present = False
            touched = True
    if not touched:
        return None
    changed.tiers = changed.restorable_tiers()
    return changed
