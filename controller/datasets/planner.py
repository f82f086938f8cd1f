"""Dataset decisions, pure: which nodes want the data, who seeds it, how big each copy's volume is,
and what the per-node reports add up to."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cairn.api.dataset import DatasetNodes, DatasetNodeStatus, DatasetPhase, NodePhase
from cairn.units import human_bytes

VOLUME_OVERHEAD = 0.03
"""Per-byte filesystem overhead of a dataset copy (ext4 with 4 KiB blocks and an inode per MiB:
about 1%), rounded up."""
VOLUME_SLACK = 64 * 1024 * 1024
"""Fixed overhead on top: the journal (up to 64 MiB at these sizes) and lost+found."""
MIN_VOLUME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    ready: bool
    """The node's agent reports Ready."""
    pool_free: int
    """Free bytes in the dataset's pool on this node."""


def target_nodes(wanted: DatasetNodes, nodes: Iterable[NodeInfo], consumers: Iterable[str] = ()) -> list[str]:
    """The nodes that should hold a copy, sorted. On-demand datasets go only where they are consumed;
    otherwise a list, a selector, or both (a node must then satisfy both)."""
    known = {node.name: node for node in nodes}
    if wanted.on_demand:
        return sorted(name for name in set(consumers) if name in known)
    chosen = set(known)
    if wanted.names is not None:
        chosen &= set(wanted.names)
    if wanted.selector:
        chosen = {
            name for name in chosen if all(known[name].labels.get(k) == v for k, v in wanted.selector.items())
        }
    return sorted(chosen | ({c for c in consumers if c in known}))


def choose_seeder(
    dataset_key: str, targets: list[str], nodes: Iterable[NodeInfo], required: str | None = None
) -> str | None:
    """The node that reads the origin once. `required`: the only node that can (a PVC source's node).

    Otherwise a ready target, spread across datasets by hashing so one node does not seed everything.
    """
    ready = {node.name for node in nodes if node.ready}
    if required is not None:
        return required if required in ready else None
    candidates = [name for name in targets if name in ready]
    if not candidates:
        return None
    return max(candidates, key=lambda name: hashlib.sha256(f"{name}/{dataset_key}".encode()).digest())


def volume_bytes(total_bytes: int) -> int:
    return max(MIN_VOLUME_BYTES, int(total_bytes * (1 + VOLUME_OVERHEAD)) + VOLUME_SLACK)


def space_problem(node: NodeInfo, total_bytes: int, pool: str) -> str | None:
    """Why the node cannot hold the dataset, decided before any byte moves; None when it can."""
    needed = volume_bytes(total_bytes)
    if node.pool_free < needed:
        return (
            f"pool {pool} on node {node.name} has {human_bytes(node.pool_free)} free; the dataset needs "
            f"{human_bytes(needed)} ({human_bytes(total_bytes)} of data plus filesystem overhead)"
        )
    return None


@dataclass(frozen=True)
class Summary:
    phase: DatasetPhase
    ready_count: int
    wanted: int
    bytes_from_origin: int
    bytes_from_peers: int

    @property
    def ready(self) -> str:
        return f"{self.ready_count}/{self.wanted}"


def summarize(
    targets: list[str], reports: Mapping[str, DatasetNodeStatus], published: bool, failed: bool
) -> Summary:
    """`published`: the seeder has published at least one part."""
    wanted = [reports.get(name, DatasetNodeStatus()) for name in targets]
    ready = sum(1 for report in wanted if report.phase == NodePhase.READY)
    if failed:
        phase = DatasetPhase.FAILED
    elif targets and ready == len(targets):
        phase = DatasetPhase.READY
    elif not targets and any(r.phase == NodePhase.EVICTED for r in reports.values()):
        phase = DatasetPhase.EVICTED
    elif published:
        phase = DatasetPhase.DISTRIBUTING
    elif targets:
        phase = DatasetPhase.SEEDING
    else:
        phase = DatasetPhase.PENDING
    return Summary(
        phase,
        ready,
        len(targets),
        sum(r.bytes_from_origin for r in reports.values()),
        sum(r.bytes_from_peers for r in reports.values()),
    )
