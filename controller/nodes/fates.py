"""Pure decisions about nodes: is a node lost, and what its loss takes with it.

Whether an agent's Lease is still renewed is judged by cairn.lease_watch, on the controller's own
monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cairn.api.checkpoint import CheckpointStatus


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
    for copy in (changed.local, changed.disk, changed.peer):
        if copy is not None and copy.node_name == node and copy.present:
            copy.present = False
            touched = True
    if not touched:
        return None
    changed.tiers = changed.restorable_tiers()
    return changed
