"""The node agent's half of Datasets: seed from the origin once, or join the swarm, then verify.

For each Dataset whose status lists this node as a target (the controller decides):
- The seeder lists the origin and checks every name before anything is written, then reports the
  size, so the controller can refuse nodes without room before a byte moves.
- Each target mounts its copy's LocalVolume (made by the controller, carved by this agent's volume
  reconciler) at `<state>/datasets/<namespace>/<name>`; the data lives under `data/` in it.
- The seeder reads each file from the origin exactly once, writing it to disk and hashing it for the
  dataset digest on the way. The files come in parts (datasets/parts.py): as soon as it holds a
  part, it builds that part's v2 torrent (libtorrent hashes the pieces from the page cache), seeds
  it with every piece marked verified (it does not re-hash what it wrote) and publishes its
  info-hash, then reads the next part while the swarm copies this one.
- The others fetch each part's .torrent from a node that has it (checking it against the info-hash
  in status) and download it from the swarm. libtorrent checks every piece against its Merkle root
  as it arrives; once every part is in, the agent checks the whole-dataset digest against the
  seeder's.
- Fast-resume data is saved every RESUME_INTERVAL seconds and at a clean shutdown. After a clean
  restart it is trusted as it is. After a crash it is not: the pieces written since the last save
  would be fetched again (a 10 s interval at 30 MB/s is 300 MB), and a write torn by the crash could
  hide in a piece the data calls complete. So the files on disk are checked instead, which reads
  local disk at GB/s and fetches again only pieces that really are missing or bad.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from cairn.api.base import condition
from cairn.api.dataset import (
    Dataset,
    DatasetNodeStatus,
    DatasetPart,
    DatasetStatus,
    NodePhase,
    dataset_volume_name,
)
from cairn.api.disk import StorageNode
from cairn.kube import ResourceClient, Typed, secret_reader
from cairn.node_agent import metrics
from cairn.node_agent.datasets.origin import DirectoryOrigin, HttpOrigin, Origin, OriginError, S3Origin
from cairn.node_agent.datasets.origin_reads import fetch_parts
from cairn.node_agent.datasets.parts import part_peers, plan_parts, stranded
from cairn.node_agent.datasets.peer_client import fetch_part_torrent, torrent_holders
from cairn.node_agent.datasets.steps import DatasetView, Step, next_step
from cairn.node_agent.datasets.store import PartStore
from cairn.node_agent.host import mounts
from cairn.node_agent.manifests import Manifest, ManifestEntry, build_manifest
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.metadata import TorrentMetadataError, info_hash_of
from cairn.node_agent.p2p.session import (
    FileFailed,
    HashFailed,
    PeerBanned,
    TorrentFailed,
    TorrentNode,
    TorrentSessionError,
    make_torrent,
    piece_size_for,
)
from cairn.node_agent.volumes.index import PopulateError, StagedVolume
from cairn.s3 import S3Location, client_from_secret
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.datasets")
DATA_DIR = "data"
"""Files live at `<mount>/data/<path>` on every node (and the torrent is named after it)."""
RESUME_INTERVAL = 10.0
STALL_SECONDS = 3.0
"""A part that gained nothing for this long is asked of the seeder too (see `part_peers`)."""


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass
class Joined:
    """This session's share in one dataset: a torrent per part it has so far."""

    base_from_peers: int
    """Bytes from peers reported before this session joined (a restarted agent keeps counting)."""
    parts: dict[int, str] = field(default_factory=dict)
    """Part index to info-hash."""
    told: dict[int, set[tuple[str, int]]] = field(default_factory=dict)
    """Per part, the peers its torrent was given; never twice, or seeds that rightly hung up reconnect."""
    last_progress: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Per part, bytes held and since when: a part that stops moving asks the seeder too."""
    resume_saved_at: float = 0.0
    counted_download: int = 0
    counted_upload: int = 0
    counted_redundant: int = 0


@dataclass
class DatasetAgent:
    node_name: str
    api_client: client.ApiClient
    datasets: ResourceClient
    storage_nodes: ResourceClient
    lookup: Callable[[str], StagedVolume | None]
    state_dir: Path
    torrent: TorrentNode
    _joined: dict[str, Joined] = field(default_factory=dict)
    _busy: dict[str, threading.Thread] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    store: PartStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = PartStore(self.state_dir / "datasets")

    def shutdown(self) -> None:
        """Save every swarm's resume data and leave a marker saying it can be trusted."""
        with self._lock:
            for key, joined in list(self._joined.items()):
                namespace, name = key.split("/", 1)
                for index, info_hash in joined.parts.items():
                    self._save_resume(namespace, name, index, info_hash)
            self.store.mark_clean_shutdown()

    @property
    def root(self) -> Path:
        return self.store.root

    def mount_point(self, namespace: str, name: str) -> Path:
        return self.store.mount_point(namespace, name)

    def torrent_bytes(self, namespace: str, name: str, index: int) -> bytes | None:
        """For the peer server: this node's .torrent of one part of a dataset, once it has one."""
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
        report = item.model.status.nodes.get(self.node_name)
        if report is None or report.phase != NodePhase.READY:
            return None
        directory = self.mount_point(namespace, name) / DATA_DIR
        return directory if directory.is_dir() else None

    # -- the loop -------------------------------------------------------------------------------

    def run_pass(self) -> None:
        # Exported at 0 from the start, so dashboards and alerts see them before the first failure.
        metrics.P2P_HASH_FAILURES.labels(node=self.node_name)
        metrics.P2P_BANNED_PEERS.labels(node=self.node_name)
        with self._lock:
            self.store.trust_resume_data()  # decided once, at the first pass, before anything can change it
            items = self.datasets.list()
            nodes = [n.model for n in self.storage_nodes.list()]
            self.torrent.set_allowed_peers(_hosts(nodes))
            wanted: set[str] = set()
            for item in items:
                dataset: Dataset = item.model
                namespace = item.metadata.get("namespace", "")
                if self.node_name not in dataset.status.target_nodes or item.metadata.get(
                    "deletionTimestamp"
                ):
                    continue
                wanted.add(_key(namespace, item.name))
                try:
                    self._drive(item, namespace, nodes)
                except OriginError as error:
                    self._fail_dataset(item, namespace, error.reason, str(error))
                except Exception:
                    log.warning("dataset %s/%s: pass failed", namespace, item.name, exc_info=True)
            for key in [k for k in self._joined if k not in wanted]:
                self._leave(key)
            self._note_events()

    def _note_events(self) -> None:
        for event in self.torrent.poll_alerts():
            if isinstance(event, HashFailed):
                metrics.P2P_HASH_FAILURES.labels(node=self.node_name).inc()
                log.warning("piece %d of torrent %s failed its hash check", event.piece, event.info_hash)
            elif isinstance(event, PeerBanned):
                metrics.P2P_BANNED_PEERS.labels(node=self.node_name).inc()
                log.warning("banned peer %s for sending data that failed hash checks", event.ip)
            elif isinstance(event, (TorrentFailed, FileFailed)):
                log.warning("torrent trouble: %s", event)

    def _drive(self, item: Typed, namespace: str, nodes: list[StorageNode]) -> None:
        dataset: Dataset = item.model
        status = dataset.status
        key = _key(namespace, item.name)
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
                joined=key in self._joined,
                has_parts=bool(status.parts),
            )
        )
        if step == Step.LIST_ORIGIN:
            self._list_origin(item, namespace)
            return
        if volume is None or step in (Step.IDLE, Step.WAIT_FOR_VOLUME):
            return
        mount = self.mount_point(namespace, item.name)
        self._ensure_mounted(volume, mount)
        if step == Step.SEED_FROM_ORIGIN:
            self._joined[key] = Joined(0)
            thread = threading.Thread(
                target=self._seed_from_origin,
                args=(item, namespace, mount, nodes),
                name=f"seed-{item.name}",
                daemon=True,
            )
            self._busy[key] = thread
            thread.start()
            return
        joined = self._join_parts(item, namespace, mount, report, nodes)
        self._progress(item, namespace, joined, report)

    # -- the seeder -----------------------------------------------------------------------------

    def _origin(self, dataset: Dataset, namespace: str, dataset_name: str) -> Origin:
        source = dataset.spec.source
        if source.s3 is not None:
            s3 = source.s3
            location = S3Location.from_url(s3.url)

            def make_client() -> Any:
                return client_from_secret(
                    secret_reader(self.api_client),
                    namespace,
                    s3.endpoint,
                    s3.region,
                    s3.credentials_secret_ref,
                    f"Dataset {namespace}/{dataset_name}",
                )

            return S3Origin(make_client, location.bucket, location.prefix)
        if source.http is not None:
            return HttpOrigin(source.http.urls)
        return DirectoryOrigin(self._mount_source_volume(dataset))

    def _mount_source_volume(self, dataset: Dataset) -> Path:
        """A PVC source's volume, mounted read-only beside its other mounts: ext4 and xfs allow that."""
        volume_name = dataset.status.source_volume
        volume = self.lookup(volume_name) if volume_name else None
        if volume is None:
            raise OriginError(
                "SourceVolumeNotHere", f"the source volume {volume_name} is not on {self.node_name}"
            )
        mount = self.state_dir / "dataset-sources" / volume.name
        if not mounts.is_mount_point(str(mount)):
            mounts.ensure_directory(str(mount))
            mounts.mount(volume.device, str(mount), volume.fs_type, ["ro"])
        return mount

    def _list_origin(self, item: Typed, namespace: str) -> None:
        dataset: Dataset = item.model
        files = self._origin(dataset, namespace, item.name).list_files()
        if not files:
            raise OriginError("EmptySource", f"{dataset.spec.source.describe()} lists no files")
        total = sum(f.size for f in files)
        self.datasets.patch_status(
            item.name,
            DatasetStatus(
                total_bytes=total,
                size=human_bytes(total),
                file_count=len(files),
                part_count=len(plan_parts(files)),
                piece_size=dataset.spec.piece_size or piece_size_for(total),
            ),
            namespace=namespace,
        )
        log.info(
            "dataset %s/%s: origin lists %d files, %s", namespace, item.name, len(files), human_bytes(total)
        )

    def _seed_from_origin(self, item: Typed, namespace: str, mount: Path, nodes: list[StorageNode]) -> None:
        dataset: Dataset = item.model
        key = _key(namespace, item.name)
        try:
            origin = self._origin(dataset, namespace, item.name)
            files = origin.list_files()
            data = mount / DATA_DIR
            if data.exists():
                shutil.rmtree(data)  # a fetch cut short: the origin is read again, once, from the start
            self.store.drop_parts(namespace, item.name)
            self._report(item.name, namespace, DatasetNodeStatus(phase=NodePhase.DOWNLOADING))
            plan = plan_parts(files)
            piece_size = dataset.spec.piece_size or piece_size_for(sum(f.size for f in files))
            entries: list[ManifestEntry] = []
            published: list[DatasetPart] = []
            progress = _FetchProgress(self, item.name, namespace, sum(f.size for f in files))

            def publish(index: int, part_entries: list[ManifestEntry]) -> None:
                entries.extend(part_entries)
                part = plan[index]
                meta = make_torrent(data, piece_size, files=[(f.path, f.size) for f in part])
                self._check_republished(dataset, index, meta.info_hash)
                self.store.save_torrent(namespace, item.name, index, meta.torrent)
                info_hash = self.torrent.seed(meta.torrent, data, already_verified=True)
                with self._lock:
                    self._joined[key].parts[index] = info_hash
                self._tell_peers(self._joined[key], index, dataset, nodes, stalled=False)
                published.append(DatasetPart(info_hash=info_hash, files=len(part), bytes=meta.total_bytes))
                ready = None
                if index == len(plan) - 1:
                    digest = Manifest(algorithm="blake3", files=tuple(entries)).digest  # type: ignore[arg-type]
                    ready = DatasetNodeStatus(
                        phase=NodePhase.READY,
                        progress=1.0,
                        bytes_from_origin=progress.done,
                        digest=digest,
                        updated_at=datetime.now(UTC),
                    )
                patch = published_patch(published, len(plan), piece_size, self.node_name, ready)
                self.datasets.patch_status(item.name, patch, namespace=namespace)
                log.info(
                    "dataset %s/%s: part %d/%d published (%d files, %s), info-hash %s",
                    namespace,
                    item.name,
                    index + 1,
                    len(plan),
                    len(part),
                    human_bytes(meta.total_bytes),
                    info_hash,
                )

            fetch_parts(origin, plan, data, progress.add, publish)
            fetched = progress.done
            log.info("dataset %s/%s seeded: %s from the origin", namespace, item.name, human_bytes(fetched))
        except OriginError as error:
            self._abandon_seeding(key)
            self._fail_dataset(item, namespace, error.reason, str(error))
        except Exception as error:
            log.warning("dataset %s/%s: seeding failed", namespace, item.name, exc_info=True)
            self._abandon_seeding(key)
            self._report(
                item.name,
                namespace,
                DatasetNodeStatus(phase=NodePhase.WAITING, reason="SeedRetrying", message=f"{error}"),
            )
        finally:
            if dataset.status.source_volume:
                self._unmount_source(dataset.status.source_volume)

    def _abandon_seeding(self, key: str) -> None:
        """A seeding cut short starts again from the origin: its parts leave the session until then."""
        with self._lock:
            self._leave(key)

    @staticmethod
    def _check_republished(dataset: Dataset, index: int, info_hash: str) -> None:
        """A seeder reading the origin again must publish the very parts others may already hold."""
        parts = dataset.status.parts
        if index < len(parts) and parts[index].info_hash != info_hash:
            raise OriginError(
                "OriginChanged",
                f"part {index} of the data read again is {info_hash}, not the {parts[index].info_hash} "
                "published before: the origin changed while the dataset was being seeded",
            )

    # -- the others -----------------------------------------------------------------------------

    def _join_parts(
        self, item: Typed, namespace: str, mount: Path, report: DatasetNodeStatus, nodes: list[StorageNode]
    ) -> Joined:
        """Add every published part this session does not have yet; a part not fetchable now waits."""
        dataset: Dataset = item.model
        key = _key(namespace, item.name)
        joined = self._joined.setdefault(key, Joined(report.bytes_from_peers))
        for index, part in enumerate(dataset.status.parts):
            if index in joined.parts:
                continue
            torrent = self._torrent_file(item, namespace, nodes, index, part.info_hash)
            if torrent is None:
                continue
            resume = self.store.resume_data(namespace, item.name, index)
            try:
                info_hash = self.torrent.download(torrent, mount / DATA_DIR, resume)
            except TorrentSessionError:
                log.warning("dataset %s part %d: resume data refused; fetching afresh", key, index)
                self.store.drop_resume_data(namespace, item.name, index)
                info_hash = self.torrent.download(torrent, mount / DATA_DIR, None)
            joined.parts[index] = info_hash
            self._tell_peers(joined, index, dataset, nodes, stalled=False)
            log.info("dataset %s: joined the swarm of part %d", key, index)
        return joined

    def _torrent_file(
        self, item: Typed, namespace: str, nodes: list[StorageNode], index: int, expected: str
    ) -> bytes | None:
        local = self.store.torrent(namespace, item.name, index)
        if local is not None and _hash_or_none(local) == expected:
            return local
        holders = torrent_holders(nodes, self.node_name, item.model)
        fetched = fetch_part_torrent(holders, namespace, item.name, index, expected, _hash_or_none)
        if fetched is not None:
            self.store.save_torrent(namespace, item.name, index, fetched)
        return fetched

    def _tell_peers(
        self, joined: Joined, index: int, dataset: Dataset, nodes: list[StorageNode], *, stalled: bool
    ) -> None:
        """Give part `index`'s torrent the peers `part_peers` names that it does not have yet."""
        addresses = {
            n.spec.node_name: split_address(n.status.endpoints.p2p_address)
            for n in nodes
            if n.status.endpoints.p2p_address
        }
        status = dataset.status
        names = part_peers(
            self.node_name,
            status.seeder,
            status.target_nodes,
            index,
            stalled=stalled,
            origin_read=dataset.fully_published,
        )
        told = joined.told.setdefault(index, set())
        new = [addresses[name] for name in names if name in addresses and addresses[name] not in told]
        if new:
            self.torrent.add_peers(joined.parts[index], new)
            told.update(new)

    def _idle_seconds(self, joined: Joined, index: int, done: int) -> float:
        """How long part `index` has held `done` bytes without gaining any."""
        held, since = joined.last_progress.get(index, (-1, 0.0))
        now = time.monotonic()
        if done != held:
            joined.last_progress[index] = (done, now)
            return 0.0
        return now - since

    # -- progress and completion ----------------------------------------------------------------

    def _progress(self, item: Typed, namespace: str, joined: Joined, report: DatasetNodeStatus) -> None:
        dataset: Dataset = item.model
        if not joined.parts:
            return
        statuses = {index: self.torrent.status(info_hash) for index, info_hash in joined.parts.items()}
        download_total = sum(s.total_payload_download for s in statuses.values())
        upload_total = sum(s.total_payload_upload for s in statuses.values())
        downloaded = download_total - joined.counted_download
        uploaded = upload_total - joined.counted_upload
        metrics.DATASET_BYTES.labels(node=self.node_name, source="peer").inc(max(0, downloaded))
        metrics.P2P_UPLOAD_BYTES.labels(node=self.node_name).inc(max(0, uploaded))
        redundant_total = sum(s.total_redundant_bytes for s in statuses.values())
        metrics.P2P_REDUNDANT_BYTES.labels(node=self.node_name).inc(
            max(0, redundant_total - joined.counted_redundant)
        )
        joined.counted_download, joined.counted_upload = download_total, upload_total
        joined.counted_redundant = redundant_total
        peers = max(s.num_peers for s in statuses.values())
        total = dataset.status.total_bytes or 1
        progress = min(1.0, sum(s.total_done for s in statuses.values()) / total)
        metrics.P2P_PEERS.labels(node=self.node_name, namespace=namespace, dataset=item.name).set(peers)
        metrics.DATASET_PROGRESS.labels(node=self.node_name, namespace=namespace, dataset=item.name).set(
            progress
        )
        nodes = [n.model for n in self.storage_nodes.list()]
        for index, part in statuses.items():
            idle = 0.0 if part.is_seeding else self._idle_seconds(joined, index, part.total_done)
            if not part.is_seeding and stranded(part.num_peers, idle):
                log.warning(
                    "dataset %s/%s part %d: no peer and no progress for %.0f s; rejoining with every "
                    "ban forgiven",
                    namespace,
                    item.name,
                    index,
                    idle,
                )
                self.torrent.forgive_peers(joined.parts[index])
                joined.told.pop(index, None)
                joined.last_progress.pop(index, None)
            self._tell_peers(joined, index, dataset, nodes, stalled=idle >= STALL_SECONDS)
        updated = DatasetNodeStatus(
            phase=report.phase if report.phase == NodePhase.READY else NodePhase.DOWNLOADING,
            progress=progress,
            bytes_from_origin=report.bytes_from_origin,
            bytes_from_peers=joined.base_from_peers + download_total,
            bytes_uploaded=report.bytes_uploaded + max(0, uploaded),
            peers=peers,
            digest=report.digest,
        )
        complete = (
            dataset.fully_published
            and len(joined.parts) == dataset.status.part_count
            and all(s.is_seeding for s in statuses.values())
        )
        if complete and report.phase != NodePhase.READY:
            updated = self._verify(item, namespace, joined, updated, dataset.status.digest)
        elif time.monotonic() - joined.resume_saved_at > RESUME_INTERVAL:
            for index, status in statuses.items():
                if not status.is_seeding:
                    self._save_resume(namespace, item.name, index, joined.parts[index])
            joined.resume_saved_at = time.monotonic()
        if updated != report.model_copy(update={"updated_at": None}):
            updated.updated_at = datetime.now(UTC)
            self._report(item.name, namespace, updated)
        log.debug("dataset %s/%s: %.1f%% from %d peers", namespace, item.name, 100 * progress, peers)

    def _verify(
        self, item: Typed, namespace: str, joined: Joined, report: DatasetNodeStatus, expected: str | None
    ) -> DatasetNodeStatus:
        """Every piece was checked as it arrived; this checks the whole against the seeder's digest."""
        data = self.mount_point(namespace, item.name) / DATA_DIR
        # Seeding is reported before libtorrent's write buffer reaches the files.
        for info_hash in joined.parts.values():
            self.torrent.flush(info_hash)
        digest = build_manifest(data).digest
        if digest != expected:
            log.warning(
                "dataset %s/%s: digest %s is not the seeder's %s", namespace, item.name, digest, expected
            )
            return report.model_copy(
                update={
                    "phase": NodePhase.FAILED,
                    "reason": "DigestMismatch",
                    "message": f"whole-dataset digest {digest} is not the seeder's {expected}",
                    "digest": digest,
                }
            )
        for index, info_hash in joined.parts.items():
            self._save_resume(namespace, item.name, index, info_hash)
        log.info("dataset %s/%s ready and verified", namespace, item.name)
        return report.model_copy(
            update={
                "phase": NodePhase.READY,
                "progress": 1.0,
                "digest": digest,
                "reason": None,
                "message": None,
            }
        )

    def _save_resume(self, namespace: str, name: str, index: int, info_hash: str) -> None:
        try:
            data = self.torrent.save_resume(info_hash, timeout=10)
        except TorrentSessionError:
            log.debug("no resume data for %s/%s part %d yet", namespace, name, index, exc_info=True)
            return
        self.store.save_resume_data(namespace, name, index, data)

    # -- status, mounts ---------------------------------------------------------------------------

    def _report(self, name: str, namespace: str, report: DatasetNodeStatus) -> None:
        self.datasets.patch_status(name, DatasetStatus(nodes={self.node_name: report}), namespace=namespace)

    def _fail_dataset(self, item: Typed, namespace: str, reason: str, message: str) -> None:
        log.warning("dataset %s/%s failed: %s: %s", namespace, item.name, reason, message)
        self.datasets.patch_status(
            item.name,
            DatasetStatus(
                conditions=[condition("Failed", True, reason, message, item.model.status.conditions)]
            ),
            namespace=namespace,
        )

    def _ensure_mounted(self, volume: StagedVolume, mount: Path) -> None:
        if mounts.is_mount_point(str(mount)):
            return
        if mounts.probe_filesystem(volume.device) is None:
            mounts.make_filesystem(volume.device, "ext4", few_large_files=True)
        mounts.ensure_directory(str(mount))
        mounts.mount(volume.device, str(mount), "ext4")

    def release_volume(self, volume: str) -> None:
        """Before the reconciler removes an LV the agent may hold: a dataset copy, or a source volume."""
        self._unmount_source(volume)
        with self._lock:
            for key in list(self._joined):
                namespace, name = key.split("/", 1)
                if dataset_volume_name(namespace, name, self.node_name) == volume:
                    self._leave(key)
            for namespace_dir in self.root.iterdir() if self.root.exists() else []:
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

    def _unmount_source(self, volume: str) -> None:
        mount = self.state_dir / "dataset-sources" / volume
        if mounts.is_mount_point(str(mount)):
            mounts.unmount(str(mount))
        if mount.exists():
            mount.rmdir()

    def _leave(self, key: str) -> None:
        joined = self._joined.pop(key, None)
        if joined is not None:
            for info_hash in joined.parts.values():
                self.torrent.remove(info_hash)
            log.info("dataset %s: left the swarm", key)
        namespace, name = key.split("/", 1)
        # A dataset that is gone must not keep a stalled-looking series (and its alert) alive.
        for gauge in (metrics.DATASET_PROGRESS, metrics.P2P_PEERS):
            with contextlib.suppress(KeyError):
                gauge.remove(self.node_name, namespace, name)


@dataclass
class _FetchProgress:
    """The seeder's progress through the origin, reported every few seconds while it reads."""

    agent: DatasetAgent
    name: str
    namespace: str
    total: int
    done: int = 0
    reported_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, count: int) -> None:
        """Called by every origin stream as bytes land."""
        metrics.DATASET_BYTES.labels(node=self.agent.node_name, source="origin").inc(count)
        with self._lock:
            self.done += count
            done = self.done
            if time.monotonic() - self.reported_at <= 2:
                return
            self.reported_at = time.monotonic()
        # Outside the lock: the other streams keep reading while this one talks to the API.
        self.agent._report(
            self.name,
            self.namespace,
            DatasetNodeStatus(
                phase=NodePhase.DOWNLOADING,
                progress=min(1.0, done / (self.total or 1)),
                bytes_from_origin=done,
            ),
        )


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


def _hash_or_none(torrent: bytes) -> str | None:
    try:
        return info_hash_of(torrent)
    except TorrentMetadataError:
        return None


def _failed(dataset: Dataset) -> bool:
    return any(c.type == "Failed" and c.status == "True" for c in dataset.status.conditions)


def _hosts(nodes: list[StorageNode]) -> set[str]:
    hosts = set()
    for node in nodes:
        if node.status.endpoints.p2p_address:
            hosts.add(split_address(node.status.endpoints.p2p_address)[0])
    return hosts


def published_patch(
    published: list[DatasetPart], part_count: int, piece_size: int, node: str, ready: DatasetNodeStatus | None
) -> DatasetStatus:
    """The status patch for a part just published; with the last part, the digest and the seeder's
    Ready report (`ready`) go in the same patch. Nothing else is sent, so no other field is reset."""
    fields: dict[str, Any] = {"parts": list(published), "part_count": part_count, "piece_size": piece_size}
    if ready is not None:
        fields.update(digest=ready.digest, nodes={node: ready})
    return DatasetStatus(**fields)
