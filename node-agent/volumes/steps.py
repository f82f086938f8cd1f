"""What the volume reconciler does for one LocalVolume event: a pure decision.

The reconciler (volumes/reconciler.py) runs the actions in order; each is idempotent, so a stale
or repeated event costs at most an lvm call that finds the work done.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cairn.api.volume import VolumePhase


class VolumeAction(Enum):
    FORGET = "drop it from the index: the object is gone"
    REMOVE = "remove the LV, then the agent's finalizer"
    CREATE = "carve (and fill) the LV, then mark the volume Ready"
    ACTIVATE = "activate the LV and index it again, as after an agent restart"
    EXTEND = "grow the LV (and its filesystem, once staged) to the requested size"


@dataclass(frozen=True)
class VolumeEvent:
    kind: str
    """ADDED, MODIFIED or DELETED."""
    on_this_node: bool
    deleting: bool
    """The object carries a deletionTimestamp."""
    phase: VolumePhase
    indexed: bool
    """This agent has carved or activated it since it started."""
    size_bytes: int
    capacity_bytes: int


def volume_actions(event: VolumeEvent) -> tuple[VolumeAction, ...]:
    if not event.on_this_node:
        return ()
    if event.kind == "DELETED":
        return (VolumeAction.FORGET,)
    if event.deleting:
        return (VolumeAction.REMOVE,)
    if event.phase == VolumePhase.FAILED:
        return ()
    if event.phase == VolumePhase.PENDING:
        # Events can be stale: the update that added our finalizer arrives after the volume is
        # already carved. The index says what this agent has made.
        return () if event.indexed else (VolumeAction.CREATE,)
    # Ready. An indexed volume is left alone, so a periodic re-list costs no lvm calls however many
    # volumes there are.
    actions: tuple[VolumeAction, ...] = () if event.indexed else (VolumeAction.ACTIVATE,)
    if event.size_bytes > event.capacity_bytes:
        actions += (VolumeAction.EXTEND,)
    return actions
