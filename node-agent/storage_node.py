"""Publishes this node's pools and endpoints as its StorageNode, which the controller reads."""

from __future__ import annotations

import logging
import threading

from cairn.api.disk import AgentEndpoints, FreeByClass, PoolStatus, StorageNode, StorageNodeSpec
from cairn.api.volume import PoolClass
from kubernetes.client.exceptions import ApiException

from cairn.kube import ResourceClient
from cairn.units import human_bytes

from .lvm import Lvm
from .lvm_errors import VgNotFound
from .volume_reconciler import pool_vg

log = logging.getLogger("cairn.node.storagenode")


class StorageNodePublisher:
    def __init__(
        self,
        node_name: str,
        lvm: Lvm,
        client: ResourceClient,
        pools: list[PoolClass],
        endpoints: AgentEndpoints,
    ) -> None:
        self.node_name = node_name
        self.lvm = lvm
        self.client = client
        self.pools = pools
        self.endpoints = endpoints
        self._lock = threading.Lock()

    def pool_statuses(self) -> list[PoolStatus]:
        statuses = []
        for pool in self.pools:
            vg = pool_vg(pool.value)
            try:
                info = self.lvm.get_vg(vg)
            except VgNotFound:
                continue
            statuses.append(
                PoolStatus(
                    pool_class=pool,
                    volume_group=vg,
                    total_bytes=info.size_bytes,
                    free_bytes=info.free_bytes,
                    extent_size_bytes=info.extent_size_bytes,
                    volume_count=sum(1 for lv in self.lvm.list_lvs(vg) if lv.owned_by_cairn),
                    disks=[pv.name for pv in self.lvm.pvs(vg=vg)],
                )
            )
        return statuses

    def publish(self) -> None:
        with self._lock:
            pools = self.pool_statuses()
            free = FreeByClass(**{p.pool_class.value: human_bytes(p.free_bytes) for p in pools})
            status = {
                "pools": [p.to_wire() for p in pools],
                "free": free.to_wire(),
                "diskCount": sum(len(p.disks) for p in pools),
                "ready": True,
                "endpoints": self.endpoints.to_wire(),
            }
            if self.client.get(self.node_name) is None:
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
            self.client.patch_status(self.node_name, {"ready": False})
        except Exception:  # best effort on the way out
            log.warning("could not mark StorageNode %s not ready", self.node_name, exc_info=True)
