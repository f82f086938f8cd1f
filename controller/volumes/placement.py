"""Which node and pool a new volume goes to: a pure function over what agents report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cairn import TOPOLOGY_KEY
from cairn.api.disk import StorageNode
from cairn.api.volume import LocalVolumeSpec, PoolClass, VolumeAccess
from cairn.controller.volumes.sizing import resolve_size
from cairn.csi.errors import InvalidArgument, ResourceExhausted
from cairn.units import human_bytes


@dataclass(frozen=True)
class PoolCapacity:
    free_bytes: int
    extent_bytes: int


@dataclass(frozen=True)
class NodeCapacity:
    name: str
    ready: bool
    pools: dict[PoolClass, PoolCapacity] = field(default_factory=dict)

    @classmethod
    def from_storage_node(cls, node: StorageNode) -> NodeCapacity:
        return cls(
            name=node.spec.node_name,
            ready=node.status.ready,
            pools={
                p.pool_class: PoolCapacity(free_bytes=p.free_bytes, extent_bytes=p.extent_size_bytes)
                for p in node.status.pools
            },
        )


@dataclass(frozen=True)
class Placement:
    node: str
    pool: PoolClass
    size_bytes: int


def nodes_in_segments(segments: Iterable[dict[str, str]]) -> list[str]:
    """Node names named by topology segments, in order; segments without Cairn's key name none."""
    names: list[str] = []
    for segment in segments:
        node = segment.get(TOPOLOGY_KEY)
        if node and node not in names:
            names.append(node)
    return names


def choose_placement(
    nodes: Sequence[NodeCapacity],
    pools: Sequence[PoolClass],
    required_bytes: int,
    limit_bytes: int,
    *,
    preferred: Sequence[dict[str, str]] = (),
    requisite: Sequence[dict[str, str]] = (),
) -> Placement:
    """Pick a node and pool.

    Pools are tried in order. Within a pool, the preferred topology wins in its order, then any
    requisite node, then the node with the most free space. Requisite, when given, is a hard limit.
    """
    allowed = set(nodes_in_segments(requisite)) if requisite else None
    order = nodes_in_segments(preferred) + nodes_in_segments(requisite)
    shortfalls: list[str] = []
    for pool in pools:
        fitting: dict[str, int] = {}
        for node in nodes:
            capacity = node.pools.get(pool)
            if not node.ready or capacity is None or (allowed is not None and node.name not in allowed):
                continue
            size = resolve_size(required_bytes, limit_bytes, capacity.extent_bytes)
            if capacity.free_bytes >= size:
                fitting[node.name] = size
            else:
                shortfalls.append(
                    f"pool {pool.value} on node {node.name} has {human_bytes(capacity.free_bytes)} free, "
                    f"volume needs {human_bytes(size)}"
                )
        if not fitting:
            continue
        for name in order:
            if name in fitting:
                return Placement(name, pool, fitting[name])
        best = max(fitting, key=lambda n: (next(x for x in nodes if x.name == n).pools[pool].free_bytes, n))
        return Placement(best, pool, fitting[best])

    wanted = ", ".join(p.value for p in pools)
    where = f" among requisite nodes {', '.join(sorted(allowed))}" if allowed is not None else ""
    detail = "; ".join(sorted(shortfalls)[:5]) or "no ready node has such a pool"
    raise ResourceExhausted(f"no room for the volume in pool(s) {wanted}{where}: {detail}")


@dataclass(frozen=True)
class CloneTarget:
    """Where a clone must go and how large it must be: a local copy lives beside its source."""

    node: str
    pool: PoolClass
    required_bytes: int


def clone_target(
    source_name: str,
    source: LocalVolumeSpec,
    source_bytes: int,
    access: VolumeAccess,
    requisite: Sequence[dict[str, str]],
    required_bytes: int,
    limit_bytes: int,
) -> CloneTarget:
    """The clone rules of CreateVolume; InvalidArgument or ResourceExhausted saying which one failed."""
    if access != source.access:
        raise InvalidArgument(
            f"cannot clone {source.access.value} volume {source_name} into a {access.value} volume"
        )
    if requisite and source.node_name not in nodes_in_segments(requisite):
        raise ResourceExhausted(
            f"clone source {source_name} is on node {source.node_name}, outside the requisite topology"
        )
    if limit_bytes and limit_bytes < source_bytes:
        raise InvalidArgument(
            f"clone source {source_name} is {human_bytes(source_bytes)}, "
            f"over the limit {human_bytes(limit_bytes)}"
        )
    return CloneTarget(source.node_name, source.pool, max(required_bytes, source_bytes))
