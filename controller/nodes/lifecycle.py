"""Dead and lost nodes: noticed by their agent's Lease, released without their agent.

Every few seconds the controller looks at each StorageNode's agent Lease (cairn/node_lease.py), in
its informers' caches: a pass costs the apiserver nothing.

- **Dead:** the Lease stopped changing for longer than its duration. The StorageNode is marked not
  Ready with condition AgentLease=False, so placement, dataset targets, seeder and replica choice
  and restore sources all pass it over; a Dataset re-plans without it. Nothing is deleted: the
  node may come back, and its agent then reports Ready again.
- **Lost:** dead, and its Node object deleted, or an operator annotated the StorageNode
  `cairn.dev/lost: "true"`. The controller releases what the node held without its agent: each
  LocalVolume there (a deletion waiting on the agent's finalizer completes; a volume still in use
  is gone with the node), with a Warning Event on its PV and PVC; the node's entry in Datasets'
  status; and every Checkpoint's local or peer copy there, whose tiers drop it.

A node whose agent still renews its Lease is never released, whatever happened to its Node object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from cairn.api.base import Condition, condition
from cairn.api.checkpoint import Checkpoint, CheckpointStatus
from cairn.api.dataset import Dataset
from cairn.api.disk import AGENT_LEASE_CONDITION, StorageNode, StorageNodeStatus
from cairn.api.names import DRIVER_NAME, GROUP_VERSION, LOST_ANNOTATION, NODE_LEASE_PREFIX, VOLUME_FINALIZER
from cairn.api.volume import LocalVolume
from cairn.controller.nodes.fates import Fate, NodeFacts, copies_dropped, fate_of
from cairn.events import EventRecorder
from cairn.informer import CachedResources, Informer, require_synced
from cairn.kube import ResourceClient, Typed
from cairn.lease_watch import LeaseSighting, LeaseWatch

log = logging.getLogger("cairn.controller.nodes")


def node_lease_sighting(lease: dict[str, Any]) -> tuple[str, LeaseSighting | None]:
    """A Lease as the lifecycle reads it: the node it is for, and its renewal (None if not an agent's)."""
    name = str(lease["metadata"].get("name") or "")
    spec = lease.get("spec")
    if not name.startswith(NODE_LEASE_PREFIX) or not spec:
        return name, None
    return name[len(NODE_LEASE_PREFIX) :], LeaseSighting(
        str(spec.get("renewTime")), int(spec.get("leaseDurationSeconds") or 0)
    )


# -- the loop --------------------------------------------------------------------------------------


@dataclass
class NodeLifecycle:
    storage_nodes: CachedResources[StorageNode]
    volumes: CachedResources[LocalVolume]
    checkpoints: ResourceClient[Checkpoint]
    """Listed only when a node is lost: no cache of every Checkpoint is kept for that."""
    datasets: CachedResources[Dataset]
    node_leases: Informer[tuple[str, LeaseSighting | None]]
    """The agents' Leases in their namespace, by node (see `node_lease_sighting`)."""
    node_objects: Informer[tuple[str, dict[str, str]]]
    core: client.CoreV1Api
    events: EventRecorder
    period: float = 5.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.leases = LeaseWatch()

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.period):
            try:
                self.run_pass()
            except Exception:  # the next pass looks again
                log.warning("node lifecycle pass failed", exc_info=True)

    def _sightings(self) -> Mapping[str, LeaseSighting]:
        return {node: sighting for node, sighting in self.node_leases.items() if sighting is not None}

    def run_pass(self) -> dict[str, Fate]:
        require_synced(self.node_leases, self.node_objects)
        now = self.clock()
        nodes = self.storage_nodes.list()
        sightings = self._sightings()
        node_objects = {name for name, _labels in self.node_objects.items()}
        fates: dict[str, Fate] = {}
        for item in nodes:
            self.leases.observe(item.name, sightings.get(item.name), now)
            facts = NodeFacts(
                item.name,
                self.leases.expired(item.name, now),
                item.name in node_objects,
                item.metadata.get("annotations", {}).get(LOST_ANNOTATION) == "true",
            )
            fate = fates[item.name] = fate_of(facts)
            if fate is not Fate.ALIVE:
                self._mark_gone(item, fate)
            if fate is Fate.LOST:
                self._release(
                    item.name,
                    "its Node was deleted"
                    if not facts.node_object_exists
                    else (f"it is annotated {LOST_ANNOTATION}"),
                )
        self.leases.forget({item.name for item in nodes})
        return fates

    # -- dead: not Ready ---------------------------------------------------------------------

    def _mark_gone(self, item: Typed[StorageNode], fate: Fate) -> None:
        status = item.model.status
        reason = "LeaseExpired" if fate is Fate.DEAD else "NodeLost"
        if status.agent_gone() and any(c.reason == reason for c in status.conditions):
            return
        message = (
            f"the agent on {item.name} has not renewed its Lease {NODE_LEASE_PREFIX}{item.name}; "
            "the node is passed over until it does"
            if fate is Fate.DEAD
            else f"node {item.name} is lost; what it held is released"
        )
        kept = [c for c in status.conditions if c.type != AGENT_LEASE_CONDITION]
        lease = condition(AGENT_LEASE_CONDITION, False, reason, message, status.conditions)
        self.storage_nodes.patch_status(
            item.name, StorageNodeStatus(ready=False, conditions=[*kept, Condition.model_validate(lease)])
        )
        involved = {"apiVersion": GROUP_VERSION, "kind": "StorageNode", "name": item.name}
        self.events.record({**involved, "uid": item.metadata.get("uid")}, reason, message, warning=True)
        log.warning("StorageNode %s: %s", item.name, message)

    # -- lost: released without the agent ------------------------------------------------------

    def _release(self, node: str, why: str) -> None:
        for volume in [v for v in self.volumes.list() if v.model.spec.node_name == node]:
            self._release_volume(volume, node, why)
        self._drop_checkpoint_copies(node)
        self._drop_dataset_entries(node)

    def _release_volume(self, item: Typed[LocalVolume], node: str, why: str) -> None:
        spec = item.model.spec
        message = (
            f"volume {item.name} was on node {node}, which is lost ({why}); its data is gone with "
            "the node and Cairn released it without the node's agent"
        )
        for involved in self._claim_objects(item.name, spec.pvc_namespace, spec.pvc_name):
            self.events.record(involved, "VolumeLost", message, warning=True)
        finalizers = [f for f in item.metadata.get("finalizers", []) if f != VOLUME_FINALIZER]
        if VOLUME_FINALIZER in item.metadata.get("finalizers", []):
            self.volumes.patch_metadata(item.name, {"finalizers": finalizers or None})
        self.volumes.delete(item.name)
        log.warning("%s", message)

    def _claim_objects(
        self, volume: str, namespace: str | None, claim: str | None
    ) -> Iterable[dict[str, Any]]:
        for pv in self.core.list_persistent_volume().items:
            csi = pv.spec.csi if pv.spec else None
            if csi is not None and csi.driver == DRIVER_NAME and csi.volume_handle == volume:
                yield {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "name": pv.metadata.name,
                    "uid": pv.metadata.uid,
                }
        if namespace and claim:
            found = self.core.list_namespaced_persistent_volume_claim(
                namespace, field_selector=f"metadata.name={claim}"
            ).items
            for pvc in found:
                yield {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "name": claim,
                    "namespace": namespace,
                    "uid": pvc.metadata.uid,
                }

    def _drop_checkpoint_copies(self, node: str) -> None:
        for item in self.checkpoints.list():
            dropped = copies_dropped(item.model.status, node)
            if dropped is None:
                continue
            namespace = item.metadata.get("namespace", "")
            self.checkpoints.patch_status(
                item.name,
                CheckpointStatus(
                    tiers=dropped.tiers, local=dropped.local, disk=dropped.disk, peer=dropped.peer
                ),
                namespace=namespace,
            )
            involved = {
                "apiVersion": GROUP_VERSION,
                "kind": "Checkpoint",
                "name": item.name,
                "namespace": namespace,
                "uid": item.metadata.get("uid"),
            }
            left = dropped.tiers or "none"
            self.events.record(
                involved,
                "CopyLost",
                f"the copy on lost node {node} is gone; restorable copies left: {left}",
                warning=not dropped.tiers,
            )

    def _drop_dataset_entries(self, node: str) -> None:
        for item in self.datasets.list():
            if node in item.model.status.nodes:
                self.datasets.patch_status_fields(
                    item.name, {"nodes": {node: None}}, namespace=item.metadata.get("namespace", "")
                )
