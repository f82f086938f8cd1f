"""Publishes this node's pools and endpoints as its StorageNode, which the controller reads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from cairn.api.base import Condition, condition
from cairn.api.disk import (
    AgentEndpoints,
    FreeByClass,
    PoolStatus,
    StorageNode,
    StorageNodeSpec,
    StorageNodeStatus,
)
from cairn.api.names import pool_vg
from cairn.api.volume import PoolClass
from cairn.kube import ResourceClient
from cairn.node_agent import metrics
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.lvm.errors import LvmError, VgNotFound
from cairn.node_agent.memory.pool import TmpfsPool
from cairn.node_agent.memory.reservations import PAGE_BYTES
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.storagenode")


class StorageNodePublisher:
    def __init__(
        self,
        node_name: str,
        lvm: Lvm,
        client: ResourceClient,
        pools: list[PoolClass],
        endpoints: AgentEndpoints,
        volume_count: Callable[[str], int] = lambda vg: 0,
        memory: TmpfsPool | None = None,
    ) -> None:
        self.extra_conditions: Callable[[list[Condition]], list[dict]] = lambda previous: []
        """Conditions other parts of the agent own (the orphan sweeper's), given the published ones."""
        self.node_name = node_name
        self.lvm = lvm
        self.client = client
        self.pools = pools
        self.endpoints = endpoints
        self.volume_count = volume_count
        self.memory = memory
        self._lock = threading.Lock()

    def pool_statuses(self) -> tuple[list[PoolStatus], list[str]]:
        """Pools as LVM sees them, and a problem line for each degraded one."""
        statuses, problems = [], []
        for pool in self.pools:
            vg = pool_vg(pool.value)
            try:
                info = self.lvm.get_vg(vg)
                disks = [pv.name for pv in self.lvm.pvs(vg=vg) if pv.name]
            except VgNotFound:
                continue
            except LvmError as error:
                problems.append(f"pool {pool.value} (VG {vg}) cannot be read: {error}")
                continue
            if info.missing_pv_count:
                # Reported, never repaired automatically: only an operator knows whether the disk returns.
                problems.append(
                    f"pool {pool.value} (VG {vg}) is missing {info.missing_pv_count} disk(s); "
                    "volumes on them are unavailable. Reattach the disk, or remove it with "
                    f"`vgreduce --removemissing {vg}` once its data is written off"
                )
            statuses.append(
                PoolStatus(
                    pool_class=pool,
                    volume_group=vg,
                    total_bytes=info.size_bytes,
                    free_bytes=info.free_bytes,
                    extent_size_bytes=info.extent_size_bytes,
                    volume_count=self.volume_count(vg),
                    disks=disks,
                )
            )
            metrics.record_pool(self.node_name, pool.value, info.size_bytes, info.free_bytes)
        if self.memory is not None:
            statuses.append(self._memory_status(self.memory))
        return statuses, problems

    def _memory_status(self, memory: TmpfsPool) -> PoolStatus:
        """Free is what no volume has reserved yet, whatever the volumes hold: the controller places by it."""
        usage = memory.usage()
        metrics.record_pool(self.node_name, PoolClass.MEMORY.value, usage.total_bytes, usage.free_bytes)
        return PoolStatus(
            pool_class=PoolClass.MEMORY,
            volume_group=memory.vg,
            total_bytes=usage.total_bytes,
            free_bytes=usage.free_bytes,
            extent_size_bytes=PAGE_BYTES,
            volume_count=len(memory.volumes()),
        )

    def publish(self) -> None:
        with self._lock:
            pools, problems = self.pool_statuses()
            free = FreeByClass(**{p.pool_class.value: human_bytes(p.free_bytes) for p in pools})
            existing = self.client.get(self.node_name)
            previous = existing.model.status.conditions if existing else []
            healthy = condition(
                "PoolsHealthy",
                not problems,
                "MissingPhysicalVolume" if problems else "AllDisksPresent",
                "; ".join(problems) or "every pool has all its disks",
                previous,
            )
            status = StorageNodeStatus(
                pools=pools,
                free=free,
                disk_count=sum(len(p.disks) for p in pools),
                ready=True,
                endpoints=self.endpoints,
                conditions=[Condition.model_validate(c) for c in [healthy, *self.extra_conditions(previous)]],
            )
            if existing is None:
                try:
                    self.client.create(
                        self.node_name, StorageNode(spec=StorageNodeSpec(node_name=self.node_name))
                    )
                except ApiException as error:
                    if error.status != 409:
                        raise
            self.client.patch_status(self.node_name, status)

    def mark_not_ready(self) -> None:
        try:
            self.client.patch_status(self.node_name, StorageNodeStatus(ready=False))
        except Exception:  # best effort on the way out
            log.warning("could not mark StorageNode %s not ready", self.node_name, exc_info=True)
