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
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.api.base import condition
from cairn.api.dataset import (
    Dataset,
    DatasetNodeStatus,
    DatasetPhase,
    DatasetStatus,
    NodePhase,
    dataset_label,
    dataset_volume_name,
)
from cairn.api.disk import StorageNode
from cairn.api.names import DATASET_LABEL, DATASET_VOLUMES_FINALIZER, NODE_LABEL, POOL_LABEL
from cairn.api.volume import LocalVolume, LocalVolumeSpec, VolumeAccess, VolumePhase
from cairn.controller import metrics
from cairn.controller.datasets.eviction import (
    NodeCopy,
    Watermarks,
    copy_in_use,
    evicted_nodes,
    evictions,
)
from cairn.controller.datasets.planner import (
    NodeInfo,
    choose_seeder,
    space_problem,
    summarize,
    target_nodes,
    volume_bytes,
)
from cairn.controller.datasets.sharing import CopyOwner, borrowed_from, lenders
from cairn.controller.datasets.swarm_authority import SwarmAuthority
from cairn.events import EventRecorder
from cairn.fault_injection import crash_point
from cairn.informer import CachedResources, Informer, trigger_on
from cairn.kube import Typed

log = logging.getLogger("cairn.controller.datasets.controller")


@dataclass
class DatasetController:
    datasets: CachedResources
    volumes: CachedResources
    storage_nodes: CachedResources
    node_labels: Informer[tuple[str, dict[str, str]]]
    """Each Node's name and labels, for targets chosen by node selector."""
    core: client.CoreV1Api
    authority: SwarmAuthority | None = None
    """Signs who may join each dataset's swarm; without it no swarm credentials are written."""
    watermarks: Watermarks | None = None
    """When a node's pool gives up copies to make room; None never evicts."""
    events: EventRecorder | None = None
    period: float = 10.0
    """A round reads only caches; this one re-runs what a missed wake-up would leave waiting."""
    min_interval: float = 0.2
    _wake: threading.Event = field(default_factory=threading.Event)

    def trigger(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """A round on every trigger (see the shapes), at most every `min_interval`, and every `period`."""
        trigger_on(self.datasets.cache, wake_shape, self.trigger)
        trigger_on(self.storage_nodes.cache, node_wake_shape, self.trigger)
        trigger_on(self.volumes.cache, copy_wake_shape, self.trigger)
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
                self.reconcile(item, nodes, volumes, items)
            except ApiException as error:
                if error.status != 409:
                    log.warning("reconciling dataset %s failed", item.name, exc_info=True)
                    continue
                # Written meanwhile (an agent's report, the gate's count of waiting pods): the change
                # wakes the next pass, which works from the new version.
                log.info("dataset %s changed while it was reconciled; again on the next pass", item.name)
            except Exception:
                log.warning("reconciling dataset %s failed", item.name, exc_info=True)
        if self.watermarks is not None:
            try:
                self._evict(self.watermarks, self.datasets.list(), nodes, self.volumes.list())
            except Exception:  # the next round looks again
                log.warning("dataset eviction round failed", exc_info=True)
        metrics.DATASET_SUMMARIES.end_round((i.metadata.get("namespace", ""), i.name) for i in items)

    def _nodes(self) -> dict[str, tuple[StorageNode, dict[str, str]]]:
        labels = dict(self.node_labels.items())
        return {
            s.model.spec.node_name: (s.model, labels.get(s.model.spec.node_name, {}))
            for s in self.storage_nodes.list()
        }

    def reconcile(
        self,
        item: Typed,
        nodes: dict[str, tuple[StorageNode, dict[str, str]]],
        volumes: list[Typed],
        datasets: list[Typed],
    ) -> None:
        namespace = item.metadata.get("namespace", "")
        dataset: Dataset = item.model
        key = dataset_label(namespace, item.name)
        mine = [v for v in volumes if v.metadata.get("labels", {}).get(DATASET_LABEL) == key]
        neighbours = [d for d in datasets if d.metadata.get("namespace", "") == namespace]
        if item.metadata.get("deletionTimestamp"):
            self._release(item, namespace, mine, neighbours)
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
        claims = _claims_of(namespace, item.name, volumes)
        consumers = [v.model.spec.node_name for v in claims]
        status = dataset.status
        claimed_at = _newest_claim_per_node(claims)
        evicted = evicted_nodes(status.nodes, claimed_at, status.waiting_pods)
        # A claim landed where the copy was evicted, or a pod waits: the copy comes back, from scratch.
        recalled = [n for n, r in status.nodes.items() if r.phase == NodePhase.EVICTED and n not in evicted]
        if recalled:
            self.datasets.patch_status_fields(
                item.name, {"nodes": {node: None for node in recalled}}, namespace=namespace
            )
            log.info(
                "dataset %s: its copy comes back to %s, asked for again", key, ", ".join(sorted(recalled))
            )
        # A target whose agent is gone (its Lease expired) is planned out: the rest complete without
        # it, and another node seeds if it was the seeder. It is planned back in when it returns.
        gone = {name for name, (node, _labels) in nodes.items() if node.status.agent_gone()}
        chosen = set(target_nodes(dataset.spec.nodes, infos, consumers)) | set(status.target_nodes)
        targets = sorted(chosen - gone - evicted)
        own = {v.model.spec.node_name for v in mine}
        shared = lenders(
            item.name,
            status.listing,
            [node for node in targets if node not in own],
            status.shared_copies,
            [copy_owner(d) for d in neighbours],
        )
        # Nodes that use another Dataset's copy take no part in this one's swarm, nor seed it.
        members = [node for node in targets if node not in shared]
        source_volume, source_problem = self._source_volume(dataset, namespace, volumes)
        required = None
        if source_volume is not None:
            required = source_volume.model.spec.node_name
        if source_problem:
            seeder = None
        elif status.total_bytes is not None and not members:
            seeder = None  # listed, and every target shares a copy: nothing to read
        elif status.seeder in members and (required is None or status.seeder == required):
            seeder = status.seeder
        else:
            seeder = choose_seeder(key, members, infos, required)
        # DatasetStatus fields by their Python names; only those set here go into the patch.
        patch: dict[str, Any] = {
            "source": dataset.spec.source.describe(),
            "target_nodes": targets,
            "seeder": seeder,
        }
        reports = {node: r for node, r in status.nodes.items() if node not in recalled}
        used = {
            node: when
            for node, when in claimed_at.items()
            if status.last_used.get(node) is None or when > status.last_used[node]
        }
        if used:
            patch["last_used"] = {**status.last_used, **used}
        if shared != status.shared_copies:
            dropped = [node for node in status.shared_copies if node not in shared]
            if dropped:
                # A loan ends only with its node leaving the targets (or a lender forced away): the
                # node's report was the lender's, so it goes too, and a copy of its own starts afresh.
                gone_entries = {node: None for node in dropped}
                self.datasets.patch_status_fields(
                    item.name, {"sharedCopies": gone_entries, "nodes": gone_entries}, namespace=namespace
                )
                for node in dropped:
                    reports.pop(node, None)
            patch["shared_copies"] = shared
            for node, lender in sorted(shared.items()):
                if status.shared_copies.get(node) != lender:
                    log.info("dataset %s: uses the copy of Dataset %s on %s", key, lender, node)
        if shared and status.digest is None:
            # The copies are the lender's, of the same listing: its digest is what they verify
            # against (and what this Dataset's own seeder, if it has one, arrives at too).
            lent = {d.name: d.model.status.digest for d in neighbours}
            digest = next((lent[n] for n in sorted(set(shared.values())) if lent.get(n)), None)
            if digest is not None:
                patch["digest"] = digest
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

        if status.total_bytes is not None:
            by_name = {info.name: info for info in infos}
            existing = {v.model.spec.node_name for v in mine}
            for node in members:
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
        if seeder is None and members:
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
        changed = any(
            k in patch for k in ("nodes", "conditions", "swarm", "shared_copies", "last_used", "digest")
        )
        changed = changed or bool(recalled)
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

    def _release(self, item: Typed, namespace: str, mine: list[Typed], neighbours: list[Typed]) -> None:
        """A deleted Dataset's copies go first; the finalizer last, so no LV is left without an owner.

        A copy another Dataset uses stays, and so does the finalizer, until that Dataset lets go.
        """
        users = borrowed_from(item.name, [(d.name, d.model.status.shared_copies) for d in neighbours])
        for volume in mine:
            if volume.model.spec.node_name in users:
                continue
            if not volume.metadata.get("deletionTimestamp"):
                self.volumes.delete(volume.name)
        if users:
            in_use = "; ".join(f"{node} by {', '.join(names)}" for node, names in sorted(users.items()))
            message = f"copies kept while other Datasets use them: {in_use}"
            held = item.model.status.conditions
            if not any(c.type == "CopiesInUse" and c.message == message for c in held):
                log.info("dataset %s/%s deleted; %s", namespace, item.name, message)
                self.datasets.patch_status(
                    item.name,
                    DatasetStatus(conditions=[condition("CopiesInUse", True, "SharedCopy", message, held)]),
                    namespace=namespace,
                )
            return
        if mine:
            return  # the agents' finalizers hold them until their LVs are gone; next round
        finalizers = [f for f in item.metadata.get("finalizers", []) if f != DATASET_VOLUMES_FINALIZER]
        self.datasets.patch_metadata(item.name, {"finalizers": finalizers}, namespace=namespace)

    def _evict(
        self,
        marks: Watermarks,
        items: list[Typed],
        nodes: dict[str, tuple[StorageNode, dict[str, str]]],
        volumes: list[Typed],
    ) -> None:
        """Make room on every pool above its high watermark, taking copies no one uses, oldest first."""
        by_key = {dataset_label(i.metadata.get("namespace", ""), i.name): i for i in items}
        copies: dict[tuple[str, str], list[tuple[NodeCopy, Typed]]] = {}
        for volume in volumes:
            item = by_key.get(volume.metadata.get("labels", {}).get(DATASET_LABEL, ""))
            if (
                item is None
                or volume.metadata.get("deletionTimestamp")
                or item.metadata.get("deletionTimestamp")
            ):
                continue
            node, pool = volume.model.spec.node_name, volume.model.spec.pool.value
            copy = self._node_copy(item, node, volume, items, volumes)
            copies.setdefault((node, pool), []).append((copy, item))
        for (node, pool), held in sorted(copies.items()):
            storage = nodes.get(node)
            status = (
                next((p for p in storage[0].status.pools if p.pool_class.value == pool), None)
                if storage
                else None
            )
            if status is None:
                continue
            chosen = evictions(node, pool, status.total_bytes, status.free_bytes, [c for c, _ in held], marks)
            for eviction in chosen:
                item = next(i for c, i in held if c is eviction.copy)
                self._evict_copy(item, node, eviction.message)

    def _node_copy(
        self, item: Typed, node: str, volume: Typed, items: list[Typed], volumes: list[Typed]
    ) -> NodeCopy:
        namespace = item.metadata.get("namespace", "")
        status: DatasetStatus = item.model.status
        neighbours = [
            (d.name, d.model.status.shared_copies)
            for d in items
            if d.metadata.get("namespace", "") == namespace
        ]
        filling = [
            v
            for v in _claims_of(namespace, item.name, volumes)
            if v.model.spec.node_name == node and v.model.status.phase != VolumePhase.READY
        ]
        in_use = copy_in_use(
            status.nodes.get(node),
            status.phase == DatasetPhase.READY,
            status.waiting_pods,
            borrowed_from(item.name, neighbours).get(node, []),
            len(filling),
        )
        made = _created(volume) or datetime.now(UTC)
        return NodeCopy(
            dataset_key_of(item), volume.model.spec.size_bytes, status.last_used.get(node, made), in_use
        )

    def _evict_copy(self, item: Typed, node: str, message: str) -> None:
        """The node leaves the targets with an Evicted report first, so its agent lets go; then the volume."""
        namespace = item.metadata.get("namespace", "")
        status: DatasetStatus = item.model.status
        log.warning("dataset %s/%s on %s: %s", namespace, item.name, node, message)
        evicted = DatasetNodeStatus(
            phase=NodePhase.EVICTED, reason="PoolHighWatermark", message=message, updated_at=datetime.now(UTC)
        )
        self.datasets.patch_status(
            item.name,
            DatasetStatus(target_nodes=[n for n in status.target_nodes if n != node], nodes={node: evicted}),
            namespace=namespace,
        )
        self.volumes.delete(dataset_volume_name(namespace, item.name, node))
        metrics.DATASET_EVICTIONS.labels(node=node, pool=item.model.spec.pool.value).inc()
        if self.events is not None:
            self.events.record(_involved(item), "Evicted", f"copy on node {node}: {message}", warning=True)


def dataset_key_of(item: Typed) -> str:
    return f"{item.metadata.get('namespace', '')}/{item.name}"


def _involved(item: Typed) -> dict[str, Any]:
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": Dataset.KIND,
        "name": item.name,
        "namespace": item.metadata.get("namespace"),
        "uid": item.metadata.get("uid"),
    }


def _claims_of(namespace: str, name: str, volumes: list[Typed]) -> list[Typed]:
    """The LocalVolumes filled from this Dataset: the claims that consume it."""
    return [
        v
        for v in volumes
        if v.model.spec.populate_from is not None
        and v.model.spec.populate_from.kind == "Dataset"
        and (v.model.spec.populate_from.namespace, v.model.spec.populate_from.name) == (namespace, name)
    ]


def _created(item: Typed) -> datetime | None:
    stamp = item.metadata.get("creationTimestamp")
    if isinstance(stamp, datetime):
        return stamp
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def _newest_claim_per_node(claims: list[Typed]) -> dict[str, datetime]:
    newest: dict[str, datetime] = {}
    for claim in claims:
        made = _created(claim)
        node = claim.model.spec.node_name
        if made is not None and (node not in newest or made > newest[node]):
            newest[node] = made
    return newest


def copy_owner(item: Typed) -> CopyOwner:
    """A Dataset as a lender: the nodes where it holds a Ready copy of its own."""
    status: DatasetStatus = item.model.status
    failed = any(c.type == "Failed" and c.status == "True" for c in status.conditions)
    return CopyOwner(
        item.name,
        status.listing,
        item.metadata.get("creationTimestamp", ""),
        frozenset(
            node
            for node, report in status.nodes.items()
            if report.phase == NodePhase.READY
            and node not in status.shared_copies
            and node in status.target_nodes
        ),
        lendable=not failed and not item.metadata.get("deletionTimestamp"),
    )


def node_wake_shape(item: Typed) -> object:
    """A node joining, leaving or changing readiness re-plans targets; free-space ticks do not."""
    node: StorageNode = item.model
    pools = tuple(sorted(p.pool_class for p in node.status.pools))
    return (node.status.ready, node.status.agent_gone(), pools)


def copy_wake_shape(item: Typed) -> object:
    """A dataset copy's volume appearing, going or changing phase; other volumes wake nothing."""
    labels = item.metadata.get("labels") or {}
    if DATASET_LABEL not in labels:
        return None
    return (labels[DATASET_LABEL], item.model.status.phase, item.metadata.get("deletionTimestamp"))


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
