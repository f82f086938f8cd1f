"""What an agent does next for one Dataset on its pass: a pure decision over what it can see.

The agent (datasets/agent.py) gathers the facts, asks `next_step`, and hands the step to the seeder
or the swarm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from cairn.api.dataset import DatasetNodeStatus, NodePhase


class Step(Enum):
    LIST_ORIGIN = "list the origin and publish the dataset's size"
    IDLE = "nothing to do on this node now"
    WAIT_FOR_VOLUME = "wait until the controller has made, and this agent carved, the node's volume"
    SEED_FROM_ORIGIN = "read the origin into the volume and publish parts as they are written"
    SWARM = "join the published parts' swarms and report progress"


@dataclass(frozen=True)
class DatasetView:
    """What the agent knows of one Dataset on this pass."""

    is_seeder: bool
    """The controller chose this node to read the origin."""
    listed: bool
    """The origin's listing is published (status.totalBytes)."""
    failed: bool
    """The Dataset as a whole failed (a Failed condition)."""
    phase: NodePhase
    """This node's own report (Waiting until it makes one)."""
    has_volume: bool
    """This node's copy volume exists and is carved."""
    joined: bool
    """This agent's session already holds the dataset (seeding, or fetching parts)."""
    has_parts: bool
    """At least one part is published."""


def next_step(view: DatasetView) -> Step:
    if view.is_seeder and not view.listed and not view.failed:
        return Step.LIST_ORIGIN
    if view.phase == NodePhase.FAILED:
        return Step.IDLE  # a failed copy waits for the Dataset to change
    if not view.has_volume:
        return Step.WAIT_FOR_VOLUME
    if view.is_seeder and not view.joined and view.phase != NodePhase.READY and not view.failed:
        # A seeder that never finished (or crashed before it did) reads the origin from the start.
        return Step.SEED_FROM_ORIGIN
    if view.has_parts:
        return Step.SWARM
    return Step.IDLE


def shared_copy_report(lender: str, lent: DatasetNodeStatus | None, checked: bool) -> DatasetNodeStatus:
    """This node's report for a Dataset that uses `lender`'s copy here: that copy's state, no bytes moved.

    `lent`: the lender's own report for this node. `checked`: this agent has verified that copy (or
    kept it from a clean shutdown), as it must before handing any copy to a consumer.
    """
    if lent is not None and lent.phase == NodePhase.READY and checked:
        return DatasetNodeStatus(phase=NodePhase.READY, progress=1.0, digest=lent.digest)
    state = "not reported yet" if lent is None else lent.phase.value
    if lent is not None and lent.phase == NodePhase.READY:
        state = "being checked again after a restart"
    return DatasetNodeStatus(
        phase=NodePhase.WAITING,
        progress=lent.progress if lent is not None else 0.0,
        reason="SharedCopyNotReady",
        message=f"uses the copy of Dataset {lender} on this node, which is {state}",
    )


PROGRESS_WRITES_PER_SECOND = 2.0
"""Progress-only writes one Dataset takes from all its targets together, at most, on average (the
per-node spread of `progress_interval` leaves it nearer 1.4).

Every write to a Dataset goes to every agent and the controller that watch Datasets: if each of N
targets reported every pass, the apiserver would send N²/2 events a second. Phase changes (a copy
Ready, Failed, Verifying) are written at once; only the percentage waits.
"""
MIN_PROGRESS_SECONDS = 5.0


def progress_interval(targets: int, node: str | None = None) -> float:
    """Seconds between one node's progress-only reports, so all `targets` together stay in budget.

    With `node`, the interval is stretched by that node's own fixed share of up to once more.
    Targets that began together would otherwise all report in the same second: a burst of N writes
    every N/2 seconds, each sent to every watcher, instead of a steady trickle.
    """
    interval = max(MIN_PROGRESS_SECONDS, targets / PROGRESS_WRITES_PER_SECOND)
    return interval if node is None else interval * (1.0 + node_spread(node))


def node_spread(node: str) -> float:
    """A fraction in [0, 1) fixed for a node name: the same on every pass, and after a restart."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:4], "big") / 2**32


def report_due(
    previous: DatasetNodeStatus | None,
    updated: DatasetNodeStatus,
    targets: int,
    seconds_since_written: float | None,
    node: str | None = None,
) -> bool:
    """Whether this node's entry is written now: any change but progress at once, progress when due."""
    if previous is None or seconds_since_written is None:
        return True
    moving = {"progress", "bytes_from_origin", "bytes_from_peers", "bytes_uploaded", "peers", "updated_at"}
    if previous.model_dump(exclude=moving) != updated.model_dump(exclude=moving):
        return True
    if previous.model_copy(update={"updated_at": None}) == updated.model_copy(update={"updated_at": None}):
        return False
    return seconds_since_written >= progress_interval(targets, node)
