"""The node agent's half of Datasets: the loop that drives each copy on this node to Ready.

For each Dataset whose status lists this node as a target (the controller decides), a pass asks
`next_step` what to do and hands the work to the component that owns it:
- the seeder (datasets/seeder.py) lists the origin, then reads it once into the swarm, in a thread;
- the swarm (datasets/swarm.py) joins each published part, tells peers, reports progress and
  verifies the whole copy against the seeder's digest.
Each target mounts its copy's LocalVolume (made by the controller, carved by this agent's volume
reconciler) at `<state>/datasets/<namespace>/<name>`; the data lives under `data/` in it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client

from cairn.api.dataset import Dataset, DatasetNodeStatus, NodePhase, dataset_volume_name
from cairn.api.disk import StorageNode
from cairn.egress import EgressPolicy
from cairn.kube import ResourceClient, Typed, secret_reader
from cairn.node_agent import metrics
from cairn.node_agent.datasets.origin import OriginError
from cairn.node_agent.datasets.pacing import DEFAULT_BACKGROUND_BYTES_PER_SECOND, urgent
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.seeder import Seeder
from cairn.node_agent.datasets.steps import DatasetView, Step, next_step, shared_copy_report
from cairn.node_agent.datasets.store import PartStore
from cairn.node_agent.datasets.swarm import Swarm, dataset_key
from cairn.node_agent.host import mounts
from cairn.node_agent.p2p.authorisation import dataset_read_refusal
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.peer_server import PeerRefused
from cairn.node_agent.p2p.session import TorrentNode
from cairn.node_agent.volumes.index import PopulateError, StagedVolume

log = logging.getLogger("cairn.node.datasets")


@dataclass
class DatasetAgent:
    node_name: str
    api_client: client.ApiClient
    datasets: ResourceClient
    storage_nodes: ResourceClient
    lookup: Callable[[str], StagedVolume | None]
    state_dir: Path
    torrent: TorrentNode
    egress: Callable[[], EgressPolicy] = EgressPolicy
    identity: PeerIdentity | None = None
    background_bytes_per_second: int = DEFAULT_BACKGROUND_BYTES_PER_SECOND
    """Each node's cap, each way, for Background Datasets that set none."""
    _busy: dict[str, threading.Thread] = field(default_factory=dict)
    store: PartStore = field(init=False)
    reports: NodeReports = field(init=False)
    swarm: Swarm = field(init=False)
    seeder: Seeder = field(init=False)

    def __post_init__(self) -> None:
        self.store = PartStore(self.state_dir / "datasets")
        self.reports = NodeReports(self.node_name, self.datasets)
        self.swarm = Swarm(
            self.node_name,
            self.torrent,
            self.store,
            self.storage_nodes,
            self.reports,
            self.identity,
            background_bytes_per_second=self.background_bytes_per_second,
        )
        self.seeder = Seeder(
            self.node_name,
            secret_reader(self.api_client),
            self.datasets,
            self.lookup,
            self.state_dir,
            self.store,
            self.swarm,
            self.reports,
            self.egress,
            self.background_bytes_per_second,
        )

    def shutdown(self) -> None:
        """Save every swarm's resume data and leave a marker saying it can be trusted."""
        with self.swarm.lock:
            self.swarm.save_all()
            self.store.mark_clean_shutdown()

    @property
    def root(self) -> Path:
        return self.store.root

    def mount_point(self, namespace: str, name: str) -> Path:
        return self.store.mount_point(namespace, name)

    def torrent_bytes(self, namespace: str, name: str, index: int, requester: str) -> bytes | None:
        """For the peer server: this node's .torrent of one part of a dataset, once it has one, and
        only for one of the dataset's targets (PeerRefused otherwise)."""
        item = self.datasets.get(name, namespace)
        if item is None:
            return None
        refusal = dataset_read_refusal(requester, item.model.status.target_nodes, namespace, name)
        if refusal is not None:
            log.warning("refused %s", refusal)
            raise PeerRefused(refusal)
        return self.store.torrent(namespace, name, index)

    def data_directory(self, namespace: str, name: str) -> Path | None:
        """This node's verified copy, for the volume populator; None until the copy is Ready.

        Raises PopulateError when no copy will ever come, so the claim fails now, not at the timeout.
        """
        item = self.datasets.get(name, namespace)
        problem = no_copy_coming(item.model if item else None, namespace, name, self.node_name)
        if problem is not None:
            raise PopulateError(*problem)
        assert item is not None
        lender = item.model.status.shared_copies.get(self.node_name)
        if lender is not None:
            # The copy is the lender's: it must be Ready and checked here as any copy must.
            shared = self.datasets.get(lender, namespace)
            if shared is None:
                return None
            item, name = shared, lender
        report = item.model.status.nodes.get(self.node_name)
        if report is None or report.phase != NodePhase.READY:
            return None
        if not self.swarm.copy_checked(namespace, name):
            return None  # Ready before a crash: checked again before anyone copies it
        directory = self.store.data_directory(namespace, name)
        return directory if directory.is_dir() else None

    # -- the loop -------------------------------------------------------------------------------

    def run_pass(self) -> None:
        # Exported at 0 from the start, so dashboards and alerts see them before the first failure.
        metrics.P2P_HASH_FAILURES.labels(node=self.node_name)
        metrics.P2P_BANNED_PEERS.labels(node=self.node_name)
        with self.swarm.lock:
            self.store.trust_resume_data()  # decided once, at the first pass, before anything can change it
            items = self.datasets.list()
            nodes = [n.model for n in self.storage_nodes.list()]
            self.swarm.admit(nodes)
            by_key = {dataset_key(item.metadata.get("namespace", ""), item.name): item for item in items}
            lent = self._lent_here(items)
            wanted: set[str] = set()
            for item in items:
                dataset: Dataset = item.model
                namespace = item.metadata.get("namespace", "")
                key = dataset_key(namespace, item.name)
                # A deleted Dataset whose copy here another one uses keeps it checked and served.
                if self.node_name not in dataset.status.target_nodes or (
                    item.metadata.get("deletionTimestamp") and key not in lent
                ):
                    continue
                wanted.add(key)
                try:
                    lender = dataset.status.shared_copies.get(self.node_name)
                    if lender is not None:
                        self._use_shared_copy(
                            item, namespace, lender, by_key.get(dataset_key(namespace, lender))
                        )
                        continue
                    self._drive(item, namespace, nodes)
                except OriginError as error:
                    self.reports.fail(item, namespace, error.reason, str(error))
                except Exception:
                    log.warning("dataset %s/%s: pass failed", namespace, item.name, exc_info=True)
            for key in [k for k in self.swarm.shares() if k not in wanted]:
                self.swarm.leave(key)
            here = [item.model for item in items if self.node_name in item.model.status.target_nodes]
            self.torrent.yield_cpu(not any(urgent(dataset) for dataset in here))
            self.swarm.note_events()

    def _lent_here(self, items: list[Typed]) -> set[str]:
        """The datasets whose copy on this node another Dataset uses, as namespace/name keys."""
        lent: set[str] = set()
        for item in items:
            lender = item.model.status.shared_copies.get(self.node_name)
            if lender is not None and not item.metadata.get("deletionTimestamp"):
                lent.add(dataset_key(item.metadata.get("namespace", ""), lender))
        return lent

    def _use_shared_copy(self, item: Typed, namespace: str, lender: str, lent: Typed | None) -> None:
        """Report the copy this Dataset shares here: nothing is read, only the lender's state mirrored."""
        lent_report = lent.model.status.nodes.get(self.node_name) if lent is not None else None
        checked = lent is not None and self.swarm.copy_checked(namespace, lender)
        report = shared_copy_report(lender, lent_report, checked)
        current = item.model.status.nodes.get(self.node_name)
        if current is None or report != current.model_copy(update={"updated_at": None}):
            if report.phase == NodePhase.READY:
                log.info("dataset %s/%s: Ready from the copy of Dataset %s", namespace, item.name, lender)
            report.updated_at = datetime.now(UTC)
            self.reports.report(item.name, namespace, report)

    def _drive(self, item: Typed, namespace: str, nodes: list[StorageNode]) -> None:
        dataset: Dataset = item.model
        status = dataset.status
        key = dataset_key(namespace, item.name)
        busy = self._busy.get(key)
        if busy is not None:
            if busy.is_alive():
                return  # the seeder's fetch is running in its own thread
            # It just ended, after this pass listed the Dataset: acting on that older status would
            # report the seeder Downloading over the Ready it has just written.
            del self._busy[key]
            return
        report = status.nodes.get(self.node_name, DatasetNodeStatus())
        volume = self.lookup(dataset_volume_name(namespace, item.name, self.node_name))
        step = next_step(
            DatasetView(
                is_seeder=status.seeder == self.node_name,
                listed=status.total_bytes is not None,
                failed=_failed(dataset),
                phase=report.phase,
                has_volume=volume is not None,
                joined=self.swarm.has_joined(key),
                has_parts=bool(status.parts),
            )
        )
        if step == Step.LIST_ORIGIN:
            self.seeder.list_origin(item, namespace)
            return
        if volume is None or step in (Step.IDLE, Step.WAIT_FOR_VOLUME):
            return
        mount = self.mount_point(namespace, item.name)
        self._ensure_mounted(volume, mount)
        if step == Step.SEED_FROM_ORIGIN:
            if self.identity is not None and self.swarm.swarm_certificate(dataset) is None:
                # Every part's torrent embeds the dataset's swarm CA: nothing is published without it.
                log.info("dataset %s: waiting for its swarm credentials before seeding", key)
                return
            self.swarm.begin_seeding(key)
            thread = threading.Thread(
                target=self.seeder.seed,
                args=(item, namespace, mount, nodes),
                name=f"seed-{item.name}",
                daemon=True,
            )
            self._busy[key] = thread
            thread.start()
            return
        joined = self.swarm.join(item, namespace, mount, report, nodes)
        self.swarm.advance(item, namespace, joined, report)

    # -- mounts -----------------------------------------------------------------------------------

    def _ensure_mounted(self, volume: StagedVolume, mount: Path) -> None:
        if mounts.is_mount_point(str(mount)):
            return
        if mounts.probe_filesystem(volume.device) is None:
            mounts.make_filesystem(volume.device, "ext4", few_large_files=True)
        mounts.ensure_directory(str(mount))
        mounts.mount(volume.device, str(mount), "ext4")

    def release_volume(self, volume: str) -> None:
        """Before the reconciler removes an LV the agent may hold: a dataset copy, or a source volume."""
        self.seeder.unmount_source(volume)
        with self.swarm.lock:
            for key in self.swarm.shares():
                namespace, name = key.split("/", 1)
                if dataset_volume_name(namespace, name, self.node_name) == volume:
                    self.swarm.leave(key)
            # Namespaces are directories; the clean-shutdown marker beside them is not.
            namespaces = [d for d in self.root.iterdir() if d.is_dir()] if self.root.exists() else []
            for namespace_dir in namespaces:
                for mount in namespace_dir.iterdir():
                    if (
                        mount.is_dir()
                        and not mount.name.endswith(".parts")
                        and dataset_volume_name(namespace_dir.name, mount.name, self.node_name) == volume
                    ):
                        if mounts.is_mount_point(str(mount)):
                            mounts.unmount(str(mount))
                        self.store.drop_parts(namespace_dir.name, mount.name)
                        mount.rmdir()


def wake_shape(item: Typed) -> object:
    """What an agent acts on in a Dataset: a change here starts a pass at once, not at the next tick.

    Progress reports (every agent's, every few seconds) are left out, or N agents would wake each
    other N times over.
    """
    dataset: Dataset = item.model
    status = dataset.status
    return (
        item.metadata.get("deletionTimestamp"),
        dataset.spec,
        tuple(status.target_nodes),
        status.seeder,
        status.total_bytes,
        status.part_count,
        len(status.parts),
        status.digest,
        tuple(sorted(status.shared_copies.items())),
        _failed(dataset),
    )


def no_copy_coming(dataset: Dataset | None, namespace: str, name: str, node: str) -> tuple[str, str] | None:
    """(reason, message) when this node will never hold a Ready copy to fill a volume from.

    A node's Failed copy stays Failed (the controller makes no second volume for it), and so does a
    Failed Dataset; waiting for either would only hold the claim Pending until the populate timeout.
    """
    if dataset is None:
        return "DatasetNotFound", f"Dataset {namespace}/{name} does not exist"
    failed = next((c for c in dataset.status.conditions if c.type == "Failed" and c.status == "True"), None)
    if failed is not None:
        return "DatasetFailed", f"Dataset {namespace}/{name} failed: {failed.reason}: {failed.message}"
    report = dataset.status.nodes.get(node)
    if report is not None and report.phase == NodePhase.FAILED:
        return (
            report.reason or "DatasetCopyFailed",
            f"the copy of Dataset {namespace}/{name} on node {node} failed: {report.message}",
        )
    return None


def _failed(dataset: Dataset) -> bool:
    return any(c.type == "Failed" and c.status == "True" for c in dataset.status.conditions)
