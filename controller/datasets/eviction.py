"""When a pool fills, which Dataset copies on the node make room: pure.

A node's pool above its high watermark gives up whole copies, least recently used first, until it
would be at or below the low watermark. A copy in use is never taken: one that is not Ready, one of a
Dataset still moving between nodes (its copies serve peers), one that pods wait for, one another
Dataset shares, or one a claim is being filled from. An evicted node leaves the Dataset's targets
until a claim of the Dataset lands there again, or a pod waits for the Dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cairn.api.dataset import DatasetNodeStatus, NodePhase
from cairn.units import human_bytes


@dataclass(frozen=True)
class Watermarks:
    high: float
    """Fraction of the pool in use above which copies are evicted."""
    low: float
    """Fraction eviction brings the pool down to."""

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high <= 1.0:
            raise ValueError(f"watermarks need 0 < low < high <= 1; got low {self.low} and high {self.high}")


@dataclass(frozen=True)
class NodeCopy:
    dataset: str
    """namespace/name."""
    size_bytes: int
    """Its volume's size: what evicting it gives back to the pool."""
    last_used: datetime
    in_use: str | None
    """Why it must stay, or None."""


@dataclass(frozen=True)
class Eviction:
    copy: NodeCopy
    message: str


def evictions(
    node: str, pool: str, total_bytes: int, free_bytes: int, copies: Iterable[NodeCopy], marks: Watermarks
) -> list[Eviction]:
    """The copies to evict on this node's pool, in the order to evict them; none below the high mark."""
    used = total_bytes - free_bytes
    if total_bytes <= 0 or used <= marks.high * total_bytes:
        return []
    excess = used - marks.low * total_bytes
    full = f"pool {pool} on node {node} is {used / total_bytes:.0%} full (high watermark {marks.high:.0%})"
    chosen: list[Eviction] = []
    for copy in sorted((c for c in copies if c.in_use is None), key=lambda c: (c.last_used, c.dataset)):
        if excess <= 0:
            break
        chosen.append(
            Eviction(
                copy,
                f"{full}: evicted this copy ({human_bytes(copy.size_bytes)}), the least recently used "
                f"not in use, last used {copy.last_used.isoformat(timespec='seconds')}",
            )
        )
        excess -= copy.size_bytes
    return chosen


def copy_in_use(
    report: DatasetNodeStatus | None,
    dataset_ready: bool,
    waiting_pods: int,
    borrowers: Iterable[str],
    filling_claims: int,
) -> str | None:
    """Why one Dataset's copy on one node must stay, or None when it may be evicted."""
    if report is None or report.phase != NodePhase.READY:
        return "the copy is not Ready"
    if not dataset_ready:
        return "the Dataset is still moving between nodes, and this copy serves them"
    if waiting_pods:
        return f"{waiting_pods} pods wait for the Dataset"
    if users := sorted(borrowers):
        return f"Datasets {', '.join(users)} share this copy"
    if filling_claims:
        return f"{filling_claims} claims are being filled from it"
    return None


def evicted_nodes(
    reports: Mapping[str, DatasetNodeStatus], claimed_at: Mapping[str, datetime], waiting_pods: int
) -> set[str]:
    """Nodes whose copy was evicted and that nothing has asked for since.

    `claimed_at`: per node, when the newest claim filled from this Dataset there was made. A pod
    waiting at the gate asks for every evicted copy back: it may be placed on any of them.
    """
    evicted: set[str] = set()
    if waiting_pods:
        return evicted
    for node, report in reports.items():
        if report.phase != NodePhase.EVICTED:
            continue
        claimed = claimed_at.get(node)
        if claimed is None or report.updated_at is None or claimed <= report.updated_at:
            evicted.add(node)
    return evicted
