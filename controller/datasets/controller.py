"""Dataset orchestration in the controller: targets, seeder, one LocalVolume per copy, the summary.

The controller never touches data or credentials. It decides where copies go and who seeds, makes
each copy's LocalVolume (so dataset space shows in GetCapacity like any volume), and adds up what
the agents report. The agents do the rest; see node-agent/datasets/agent.py.

Order of events for one Dataset:
1. targets and seeder are written to status;
2. the seeder's agent lists the origin, checks every name, and writes totalBytes;
3. each target whose pool has room gets its LocalVolume; one without room is Failed at once,
   before any byte moves;
4. the seeder fetches the files part by part, publishing each part's info-hash as it lands; the
   others join each part's swarm as it appears;
5. Ready once every target reports Ready with the seeder's digest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.api.base import condition
from cairn.api.dataset import (
    Dataset,
    DatasetNodeStatus,
    DatasetStatus,
    NodePhase,
    dataset_label,
    dataset_volume_name,
)
from cairn.api.disk import StorageNode
from cairn.api.names import DATASET_LABEL, DATASET_VOLUMES_FINALIZER, NODE_LABEL, POOL_LABEL
from cairn.api.volume import LocalVolume, LocalVolumeSpec, VolumeAccess
from cairn.controller import metrics
from cairn.controller.datasets.planner import (
    NodeInfo,
    choose_seeder,
    space_problem,
    summarize,
    target_nodes,
    volume_bytes,
)
from cairn.controller.datasets.swarm_authority import SwarmAuthority
from cairn.fault_injection import crash_point
from cairn.kube import ResourceClient, Typed, trigger_on_change

log = logging.getLogger("cairn.controller.datasets.controller")


@dataclass
class DatasetController:
    datasets: ResourceClient
    volumes: ResourceClient
    storage_nodes: ResourceClient
    core: client.CoreV1Api
    authority: SwarmAuthority | None = None
    """Signs who may join each dataset's swarm; without it no swarm credentials are written."""
    period: float = 2.0
    min_interval: float = 0.2
    _wake: threading.Event = field(default_factory=threading.Event)

    def trigger(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """A round on every trigger (see `wake_shape`), at most every `min_interval`, and every `period`."""
        trigger_on_change(self.datasets, wake_shape, self.trigger, stop, "dataset-watch")
        while not stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            try:
                self.sync()
            except Exception:  # the next round retries
                log.warning("dataset round failed", exc_info=True)
            stop.wait(self.min_interval)

    def sync(self) -> None:
        items = self.datasets.list()
        if not items:
            metrics.DATASET_SUMMARIES.end_round(())
            return
        nodes = self._nodes()
        volumes = self.volumes.list()
        for item in items:
            try:
                self.reconcile(item, nodes, volumes)
            except ApiException as error:
                if error.status != 409:
                    log.warning("reconciling dataset %s failed", item.name, exc_info=True)
                    continue
                # Written meanwhile (an agent's report, the gate's count of waiting pods): the change
                # wakes the next pass, which works from the new version.
                log.info("dataset %s changed while it was reconciled; again on the next pass", item.name)
            except Exception:
                log.warning("reconciling dataset %s failed", item.name, exc_info=True)
        metrics.DATASET_SUMMARIES.end_round((i.metadata.get("namespace", ""), i.name) for i in items)

    def _nodes(self) -> dict[str, tuple[StorageNode, dict[str, str]]]:
        labels = {n.metadata.name: n.metadata.labels or {} for n in self.core.list_node().items}
        return {
            s.model.spec.node_name: (s.model, labels.get(s.model.spec.node_name, {}))
            for s in self.storage_nodes.list()
        }

    def reconcile(
        self, item: Typed, nodes: dict[str, tuple[StorageNode, dict[str, str]]], volumes: list[Typed]
    ) -> None:
        namespace = item.metadata.get("namespace", "")
        dataset: Dataset = item.model
        key = dataset_label(namespace, item.name)
        mine = [v for v in volumes if v.metadata.get("labels", {}).get(DATASET_LABEL) == key]
        if item.metadata.get("deletionTimestamp"):
            self._release(item, namespace, mine)
            return
        if DATASET_VOLUMES_FINALIZER not in item.metadata.get("finalizers", []):
            self.datasets.patch_metadata(
                item.name,
                {"finalizers": [*item.metadata.get("finalizers", []), DATASET_VOLUMES_FINALIZER]},
                resource_version=item.resource_version,
                namespace=namespace,
            )
        pool = dataset.spec.pool
        infos = [
            NodeInfo(
                name,
                labels,
                node.status.ready,
                next((p.free_bytes for p in node.status.pools if p.pool_class == pool), 0),
            )
            for name, (node, labels) in nodes.items()
        ]
        consumers = [
            v.model.spec.node_name
            for v in volumes
            if v.model.spec.populate_from is not None
            and v.model.spec.populate_from.kind == "Dataset"
            and (v.model.spec.populate_from.namespace, v.model.spec.populate_from.name)
            == (namespace, item.name)
        ]
        status = dataset.status
        # A target whose agent is gone (its Lease expired) is planned out: the rest complete without
        # it, and another node seeds if it was the seeder. It is planned back in when it returns.
        gone = {name for name, (node, _labels) in nodes.items() if node.status.agent_gone()}
        chosen = set(target_nodes(dataset.spec.nodes, infos, consumers)) | set(status.target_nodes)
        targets = sorted(chosen - gone)
        source_volume, source_problem = self._source_volume(dataset, namespace, volumes)
        required = None
        if source_volume is not None:
            required = source_volume.model.spec.node_name
        if source_problem:
            seeder = None
        elif status.seeder in targets and (required is None or status.seeder == required):
            seeder = status.seeder
        else:
            seeder = choose_seeder(key, targets, infos, required)
        # DatasetStatus fields by their Python names; only those set here go into the patch.
        patch: dict[str, Any] = {
            "source": dataset.spec.source.describe(),
            "target_nodes": targets,
            "seeder": seeder,
        }
        if source_volume is not None:
            patch["source_volume"] = source_volume.name
        if self.authority is not None:
            published = {
                name: pem
                for name in targets
                if name in nodes and (pem := nodes[name][0].status.endpoints.peer_certificate)
            }
            uid = item.metadata.get("uid", "")
            swarm = self.authority.credentials(uid, namespace, item.name, status.swarm, published)
            if swarm != status.swarm:
                patch["swarm"] = swarm
        reports = dict(status.nodes)

        if status.total_bytes is not None:
            by_name = {info.name: info for info in infos}
            existing = {v.model.spec.node_name for v in mine}
            for node in targets:
                if node in existing or reports.get(node, DatasetNodeStatus()).phase == NodePhase.FAILED:
                    continue
                problem = (
                    space_problem(by_name[node], status.total_bytes, pool.value) if node in by_name else None
                )
                if problem:
                    failed = DatasetNodeStatus(
                        phase=NodePhase.FAILED, reason="InsufficientSpace", message=problem
                    )
                    reports[node] = failed
                    patch.setdefault("nodes", {})[node] = failed
                    log.warning("dataset %s/%s: %s", namespace, item.name, problem)
                    continue
                self._create_volume(namespace, item.name, key, node, pool, status.total_bytes)

        failed_reason = next(
            (c for c in status.conditions if c.type == "Failed" and c.status == "True"), None
        )
        summary = summarize(targets, reports, bool(status.parts), failed_reason is not None)
        metrics.DATASET_SUMMARIES.record(
            namespace, item.name, summary.phase, summary.ready_count, summary.wanted
        )
        patch.update(
            {
                "phase": summary.phase,
                "ready_count": summary.ready_count,
                "ready": summary.ready,
                "bytes_from_origin": summary.bytes_from_origin,
                "bytes_from_peers": summary.bytes_from_peers,
            }
        )
        if seeder is None and targets:
            reason, message = source_problem or (
                "NoSeeder",
                "no target node's agent is Ready to read the origin",
            )
            patch["conditions"] = [condition("Seeded", False, reason, message, status.conditions)]
        current = {k: getattr(status, k) for k in ("source", "seeder", "phase", "ready", "ready_count")}
        wanted = {
            "source": patch["source"],
            "seeder": patch["seeder"],
            "phase": summary.phase,
            "ready": summary.ready,
            "ready_count": summary.ready_count,
        }
        changed = any(k in patch for k in ("nodes", "conditions", "swarm"))
        if current != wanted or status.target_nodes != targets or changed:
            self.datasets.patch_status(item.name, DatasetStatus(**patch), namespace=namespace)

    def _source_volume(
        self, dataset: Dataset, namespace: str, volumes: list[Typed]
    ) -> tuple[Typed | None, tuple[str, str] | None]:
        """For a PVC source: the LocalVolume behind the claim (read on its node), or why there is none."""
        source = dataset.spec.source.pvc
        if source is None:
            return None, None
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(source.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None, ("SourceClaimNotFound", f"PVC {namespace}/{source.name} does not exist")
            raise
        if not claim.spec.volume_name:
            return None, ("SourceClaimNotBound", f"PVC {namespace}/{source.name} is not bound yet")
        volume = self.core.read_persistent_volume(claim.spec.volume_name)
        handle = volume.spec.csi.volume_handle if volume.spec.csi else None
        local = next((v for v in volumes if v.name == handle), None)
        if local is None:
            return None, ("SourceClaimNotCairn", f"PVC {namespace}/{source.name} is not a Cairn volume")
        if local.model.spec.access == VolumeAccess.BLOCK:
            # The agent would mount a filesystem image the tenant wrote: the host kernel parsing it.
            return None, (
                "BlockSourceRefused",
                f"PVC {namespace}/{source.name} is a block volume; only a filesystem claim can be a source",
            )
        return local, None

    def _create_volume(self, namespace: str, name: str, key: str, node: str, pool, total_bytes: int) -> None:
        volume = dataset_volume_name(namespace, name, node)
        spec = LocalVolumeSpec(
            csi_name=volume,
            node_name=node,
            pool=pool,
            size_bytes=volume_bytes(total_bytes),
            access=VolumeAccess.MOUNT,
            fs_type="ext4",
        )
        try:
            self.volumes.create(
                volume,
                LocalVolume(spec=spec),
                labels={NODE_LABEL: node, POOL_LABEL: pool.value, DATASET_LABEL: key},
            )
            log.info("dataset %s: volume %s on %s", key, volume, node)
        except ApiException as error:
            if error.status != 409:
                raise
        crash_point("controller.seed.copy-volume-written")

    def _release(self, item: Typed, namespace: str, mine: list[Typed]) -> None:
        """A deleted Dataset's copies go first; the finalizer last, so no LV is left without an owner."""
        for volume in mine:
            if not volume.metadata.get("deletionTimestamp"):
                self.volumes.delete(volume.name)
        if mine:
            return  # the agents' finalizers hold them until their LVs are gone; next round
        finalizers = [f for f in item.metadata.get("finalizers", []) if f != DATASET_VOLUMES_FINALIZER]
        self.datasets.patch_metadata(item.name, {"finalizers": finalizers}, namespace=namespace)


def wake_shape(item: Typed) -> object:
    """What a round acts on: a change here starts one at once. Progress and byte counts are left out."""
    dataset: Dataset = item.model
    status = dataset.status
    return (
        item.metadata.get("deletionTimestamp"),
        tuple(item.metadata.get("finalizers", [])),
        dataset.spec,
        status.total_bytes,
        len(status.parts),
        tuple(sorted((node, report.phase) for node, report in status.nodes.items())),
        tuple((c.type, c.status, c.reason) for c in status.conditions),
    )
