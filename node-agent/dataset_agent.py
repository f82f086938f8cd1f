"""The node agent's half of Datasets: seed from the origin once, or join the swarm, then verify.

For each Dataset whose status lists this node as a target (the controller decides):
- The seeder lists the origin and checks every name before anything is written, then reports the
  size, so the controller can refuse nodes without room before a byte moves.
- Each target mounts its copy's LocalVolume (made by the controller, carved by this agent's volume
  reconciler) at `<state>/datasets/<namespace>/<name>`; the data lives under `data/` in it.
- The seeder reads each file from the origin exactly once, writing it to disk and hashing it for the
  dataset digest on the way. It then builds the v2 torrent (libtorrent hashes the pieces from the
  page cache) and seeds it with every piece marked verified: it does not re-hash what it wrote.
- The others fetch the .torrent from a node that has it (checking it against the info-hash in
  status) and download from the swarm. libtorrent checks every piece against its Merkle root as it
  arrives; at the end the agent checks the whole-dataset digest against the seeder's.
- Fast-resume data is saved every RESUME_INTERVAL seconds and at a clean shutdown. After a clean
  restart it is trusted as it is. After a crash it is not: the pieces written since the last save
  would be fetched again (a 10 s interval at 30 MB/s is 300 MB), and a write torn by the crash could
  hide in a piece the data calls complete. So the files on disk are checked instead, which reads
  local disk at GB/s and fetches again only pieces that really are missing or bad.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cairn.api.base import condition
from cairn.api.dataset import Dataset, DatasetNodeStatus, NodePhase, dataset_volume_name
from cairn.api.disk import StorageNode
from kubernetes import client

from cairn.kube import ResourceClient, Typed
from cairn.units import human_bytes

from . import metrics, mounter
from .checkpoint_credentials import read_credentials
from .checkpoint_fetch import split_address
from .checkpoint_manifest import Manifest, ManifestEntry, build_manifest, new_hasher
from .checkpoint_upload import S3Location, s3_client
from .dataset_origin import DirectoryOrigin, HttpOrigin, Origin, OriginError, OriginFile, S3Origin
from .node_service import StagedVolume
from .torrent_metadata import TorrentMetadataError, info_hash_of
from .torrent_session import (
    FileFailed,
    HashFailed,
    PeerBanned,
    TorrentFailed,
    TorrentNode,
    TorrentSessionError,
    make_torrent,
    piece_size_for,
)
from .volume_populate import PopulateError

log = logging.getLogger("cairn.node.datasets")
DATA_DIR = "data"
"""Files live at `<mount>/data/<path>` on every node (and the torrent is named after it)."""
RESUME_INTERVAL = 10.0
FETCH_CHUNK = 8 * 1024 * 1024


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass
class Joined:
    info_hash: str
    base_from_peers: int
    """Bytes from peers reported before this session joined (a restarted agent keeps counting)."""
    resume_saved_at: float = 0.0
    counted_download: int = 0
    counted_upload: int = 0


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
    _clean_start: bool | None = None

    @property
    def clean_marker(self) -> Path:
        return self.root / ".clean-shutdown"

    def shutdown(self) -> None:
        """Save every swarm's resume data and leave a marker saying it can be trusted."""
        with self._lock:
            for key, joined in list(self._joined.items()):
                namespace, name = key.split("/", 1)
                self._save_resume(namespace, name, joined)
            self.root.mkdir(parents=True, exist_ok=True)
            self.clean_marker.touch()

    def _trust_resume_data(self) -> bool:
        if self._clean_start is None:
            self._clean_start = self.clean_marker.exists()
            self.clean_marker.unlink(missing_ok=True)
            if not self._clean_start:
                log.info("no clean-shutdown marker: dataset copies will be checked on disk, not resumed")
        return self._clean_start

    @property
    def root(self) -> Path:
        return self.state_dir / "datasets"

    def mount_point(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def _local(self, namespace: str, name: str, suffix: str) -> Path:
        return self.root / namespace / f"{name}{suffix}"

    def torrent_bytes(self, namespace: str, name: str) -> bytes | None:
        """For the peer server: this node's .torrent of a dataset, once it has one."""
        path = self._local(namespace, name, ".torrent")
        return path.read_bytes() if path.exists() else None

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
            self._trust_resume_data()  # decided once, at the first pass, before anything can change it
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
        if busy is not None and busy.is_alive():
            return  # the seeder's fetch is running in its own thread
        report = status.nodes.get(self.node_name, DatasetNodeStatus())
        seeder = status.seeder == self.node_name
        if seeder and status.total_bytes is None and not _failed(dataset):
            self._list_origin(item, namespace)
            return
        if report.phase == NodePhase.FAILED:
            return
        volume = self.lookup(dataset_volume_name(namespace, item.name, self.node_name))
        if volume is None:
            return  # the controller has not made it, or this agent has not carved it yet
        mount = self.mount_point(namespace, item.name)
        self._ensure_mounted(volume, mount)
        joined = self._joined.get(key)
        if joined is not None:
            self._progress(item, namespace, joined, report, status.digest)
            return
        if seeder and not status.info_hash:
            thread = threading.Thread(
                target=self._seed_from_origin,
                args=(item, namespace, mount),
                name=f"seed-{item.name}",
                daemon=True,
            )
            self._busy[key] = thread
            thread.start()
            return
        if status.info_hash:
            self._join(item, namespace, mount, report, nodes)

    # -- the seeder -----------------------------------------------------------------------------

    def _origin(self, dataset: Dataset, namespace: str) -> Origin:
        source = dataset.spec.source
        if source.s3 is not None:
            s3 = source.s3
            location = S3Location.from_url(s3.url)

            def make_client() -> Any:
                keys = ("", "")
                if s3.credentials_secret_ref is not None:
                    keys = read_credentials(client.CoreV1Api(self.api_client), namespace, s3)  # type: ignore[arg-type]
                return s3_client(s3.endpoint, keys[0], keys[1], s3.region)

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
        if not mounter.is_mount_point(str(mount)):
            mounter.ensure_directory(str(mount))
            mounter.mount(volume.device, str(mount), volume.fs_type, ["ro"])
        return mount

    def _list_origin(self, item: Typed, namespace: str) -> None:
        dataset: Dataset = item.model
        files = self._origin(dataset, namespace).list_files()
        if not files:
            raise OriginError("EmptySource", f"{dataset.spec.source.describe()} lists no files")
        total = sum(f.size for f in files)
        self.datasets.patch_status(
            item.name,
            {
                "totalBytes": total,
                "size": human_bytes(total),
                "fileCount": len(files),
                "pieceSize": dataset.spec.piece_size or piece_size_for(total),
            },
            namespace=namespace,
        )
        log.info(
            "dataset %s/%s: origin lists %d files, %s", namespace, item.name, len(files), human_bytes(total)
        )

    def _seed_from_origin(self, item: Typed, namespace: str, mount: Path) -> None:
        dataset: Dataset = item.model
        try:
            origin = self._origin(dataset, namespace)
            files = origin.list_files()
            data = mount / DATA_DIR
            if data.exists():
                shutil.rmtree(data)  # a fetch cut short: the origin is read again, once, from the start
            self._report(item.name, namespace, DatasetNodeStatus(phase=NodePhase.DOWNLOADING))
            entries, fetched = self._fetch_all(origin, files, data, item.name, namespace)
            digest = Manifest(algorithm="blake3", files=tuple(entries)).digest  # type: ignore[arg-type]
            meta = make_torrent(data, dataset.status.piece_size, files=[(f.path, f.size) for f in files])
            _write_atomically(self._local(namespace, item.name, ".torrent"), meta.torrent)
            info_hash = self.torrent.seed(meta.torrent, data, already_verified=True)
            key = _key(namespace, item.name)
            with self._lock:
                self._joined[key] = Joined(info_hash, 0)
            self.datasets.patch_status(
                item.name,
                {
                    "infoHash": meta.info_hash,
                    "digest": digest,
                    "pieceSize": meta.piece_size,
                    "nodes": {
                        self.node_name: DatasetNodeStatus(
                            phase=NodePhase.READY,
                            progress=1.0,
                            bytes_from_origin=fetched,
                            digest=digest,
                            updated_at=datetime.now(UTC),
                        ).to_wire()
                    },
                },
                namespace=namespace,
            )
            log.info(
                "dataset %s/%s seeded: %s from the origin, info-hash %s",
                namespace,
                item.name,
                human_bytes(fetched),
                meta.info_hash,
            )
        except OriginError as error:
            self._fail_dataset(item, namespace, error.reason, str(error))
        except Exception as error:
            log.warning("dataset %s/%s: seeding failed", namespace, item.name, exc_info=True)
            self._report(
                item.name,
                namespace,
                DatasetNodeStatus(phase=NodePhase.WAITING, reason="SeedRetrying", message=f"{error}"),
            )
        finally:
            if dataset.status.source_volume:
                self._unmount_source(dataset.status.source_volume)

    def _fetch_all(
        self, origin: Origin, files: list[OriginFile], data: Path, name: str, namespace: str
    ) -> tuple[list[ManifestEntry], int]:
        entries = []
        fetched = 0
        total = sum(f.size for f in files) or 1
        last_report = time.monotonic()
        for file in files:
            target = data / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            hasher = new_hasher("blake3")
            size = 0
            with origin.open(file) as stream, open(target, "wb") as out:
                while chunk := stream.read(FETCH_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    metrics.DATASET_BYTES.labels(node=self.node_name, source="origin").inc(len(chunk))
                    if time.monotonic() - last_report > 2:
                        last_report = time.monotonic()
                        self._report(
                            name,
                            namespace,
                            DatasetNodeStatus(
                                phase=NodePhase.DOWNLOADING,
                                progress=min(1.0, (fetched + size) / total),
                                bytes_from_origin=fetched + size,
                            ),
                        )
                out.flush()
                os.fsync(out.fileno())
            if size != file.size:
                raise OriginError(
                    "OriginChanged", f"{file.path}: the origin listed {file.size} bytes but sent {size}"
                )
            fetched += size
            entries.append(ManifestEntry(file.path, size, f"blake3:{hasher.hexdigest()}"))
        return entries, fetched

    # -- the others -----------------------------------------------------------------------------

    def _join(
        self, item: Typed, namespace: str, mount: Path, report: DatasetNodeStatus, nodes: list[StorageNode]
    ) -> None:
        dataset: Dataset = item.model
        expected = dataset.status.info_hash
        assert expected is not None
        torrent = self._torrent_file(item, namespace, nodes, expected)
        if torrent is None:
            return
        resume_path = self._local(namespace, item.name, ".resume")
        trusted = self._trust_resume_data() and resume_path.exists()
        resume = resume_path.read_bytes() if trusted else None
        try:
            info_hash = self.torrent.download(torrent, mount / DATA_DIR, resume)
        except TorrentSessionError:
            log.warning("dataset %s/%s: resume data refused; fetching afresh", namespace, item.name)
            resume_path.unlink(missing_ok=True)
            info_hash = self.torrent.download(torrent, mount / DATA_DIR, None)
        self._joined[_key(namespace, item.name)] = Joined(info_hash, report.bytes_from_peers)
        peers = self._peers(dataset, nodes)
        self.torrent.add_peers(info_hash, peers)
        log.info("dataset %s/%s: joined the swarm with %d peers", namespace, item.name, len(peers))

    def _torrent_file(
        self, item: Typed, namespace: str, nodes: list[StorageNode], expected: str
    ) -> bytes | None:
        local = self._local(namespace, item.name, ".torrent")
        if local.exists():
            data = local.read_bytes()
            if _hash_or_none(data) == expected:
                return data
        dataset: Dataset = item.model
        holders = [
            n
            for n in nodes
            if n.spec.node_name != self.node_name
            and n.status.endpoints.peer_restore_address
            and dataset.status.nodes.get(n.spec.node_name, DatasetNodeStatus()).phase == NodePhase.READY
        ]
        for node in holders:
            url = f"http://{node.status.endpoints.peer_restore_address}/v1/datasets/{namespace}/{item.name}/torrent"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    data = response.read(64 * 1024 * 1024)
            except OSError as error:
                log.info(
                    "dataset %s/%s: no torrent from %s: %s", namespace, item.name, node.spec.node_name, error
                )
                continue
            if _hash_or_none(data) != expected:
                log.warning(
                    "dataset %s/%s: %s served a torrent that is not %s; ignored",
                    namespace,
                    item.name,
                    node.spec.node_name,
                    expected,
                )
                continue
            _write_atomically(local, data)
            return data
        return None

    def _peers(self, dataset: Dataset, nodes: list[StorageNode]) -> list[tuple[str, int]]:
        targets = set(dataset.status.target_nodes)
        peers = []
        for node in nodes:
            address = node.status.endpoints.p2p_address
            if node.spec.node_name in targets and node.spec.node_name != self.node_name and address:
                peers.append(split_address(address))
        return peers

    # -- progress and completion ----------------------------------------------------------------

    def _progress(
        self, item: Typed, namespace: str, joined: Joined, report: DatasetNodeStatus, digest: str | None
    ) -> None:
        dataset: Dataset = item.model
        status = self.torrent.status(joined.info_hash)
        downloaded = status.total_payload_download - joined.counted_download
        uploaded = status.total_payload_upload - joined.counted_upload
        metrics.DATASET_BYTES.labels(node=self.node_name, source="peer").inc(max(0, downloaded))
        metrics.P2P_UPLOAD_BYTES.labels(node=self.node_name).inc(max(0, uploaded))
        joined.counted_download, joined.counted_upload = (
            status.total_payload_download,
            status.total_payload_upload,
        )
        metrics.P2P_PEERS.labels(node=self.node_name, namespace=namespace, dataset=item.name).set(
            status.num_peers
        )
        metrics.DATASET_PROGRESS.labels(node=self.node_name, namespace=namespace, dataset=item.name).set(
            status.progress
        )
        self.torrent.add_peers(
            joined.info_hash, self._peers(dataset, [n.model for n in self.storage_nodes.list()])
        )
        updated = DatasetNodeStatus(
            phase=report.phase if report.phase == NodePhase.READY else NodePhase.DOWNLOADING,
            progress=status.progress,
            bytes_from_origin=report.bytes_from_origin,
            bytes_from_peers=joined.base_from_peers + status.total_payload_download,
            bytes_uploaded=report.bytes_uploaded + max(0, uploaded),
            peers=status.num_peers,
            digest=report.digest,
        )
        key = _key(namespace, item.name)
        if status.is_seeding and report.phase != NodePhase.READY:
            updated = self._verify(item, namespace, updated, digest)
        elif not status.is_seeding and time.monotonic() - joined.resume_saved_at > RESUME_INTERVAL:
            self._save_resume(namespace, item.name, joined)
        if updated != report.model_copy(update={"updated_at": None}):
            updated.updated_at = datetime.now(UTC)
            self._report(item.name, namespace, updated)
        log.debug("dataset %s: %.1f%% from %d peers", key, 100 * status.progress, status.num_peers)

    def _verify(
        self, item: Typed, namespace: str, report: DatasetNodeStatus, expected: str | None
    ) -> DatasetNodeStatus:
        """Every piece was checked as it arrived; this checks the whole against the seeder's digest."""
        data = self.mount_point(namespace, item.name) / DATA_DIR
        # Seeding is reported before libtorrent's write buffer reaches the files.
        self.torrent.flush(self._joined[_key(namespace, item.name)].info_hash)
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
        self._save_resume(namespace, item.name, self._joined[_key(namespace, item.name)])
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

    def _save_resume(self, namespace: str, name: str, joined: Joined) -> None:
        try:
            data = self.torrent.save_resume(joined.info_hash, timeout=10)
        except TorrentSessionError:
            log.debug("no resume data for %s/%s yet", namespace, name, exc_info=True)
            return
        _write_atomically(self._local(namespace, name, ".resume"), data)
        joined.resume_saved_at = time.monotonic()

    # -- status, mounts ---------------------------------------------------------------------------

    def _report(self, name: str, namespace: str, report: DatasetNodeStatus) -> None:
        self.datasets.patch_status(name, {"nodes": {self.node_name: report.to_wire()}}, namespace=namespace)

    def _fail_dataset(self, item: Typed, namespace: str, reason: str, message: str) -> None:
        log.warning("dataset %s/%s failed: %s: %s", namespace, item.name, reason, message)
        self.datasets.patch_status(
            item.name,
            {"conditions": [condition("Failed", True, reason, message, item.model.status.conditions)]},
            namespace=namespace,
        )

    def _ensure_mounted(self, volume: StagedVolume, mount: Path) -> None:
        if mounter.is_mount_point(str(mount)):
            return
        if mounter.probe_filesystem(volume.device) is None:
            mounter.make_filesystem(volume.device, "ext4", few_large_files=True)
        mounter.ensure_directory(str(mount))
        mounter.mount(volume.device, str(mount), "ext4")

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
                        and dataset_volume_name(namespace_dir.name, mount.name, self.node_name) == volume
                    ):
                        if mounter.is_mount_point(str(mount)):
                            mounter.unmount(str(mount))
                        for suffix in (".torrent", ".resume"):
                            self._local(namespace_dir.name, mount.name, suffix).unlink(missing_ok=True)
                        mount.rmdir()

    def _unmount_source(self, volume: str) -> None:
        mount = self.state_dir / "dataset-sources" / volume
        if mounter.is_mount_point(str(mount)):
            mounter.unmount(str(mount))
        if mount.exists():
            mount.rmdir()

    def _leave(self, key: str) -> None:
        joined = self._joined.pop(key, None)
        if joined is not None:
            self.torrent.remove(joined.info_hash)
            log.info("dataset %s: left the swarm", key)
        namespace, name = key.split("/", 1)
        # A dataset that is gone must not keep a stalled-looking series (and its alert) alive.
        for gauge in (metrics.DATASET_PROGRESS, metrics.P2P_PEERS):
            with contextlib.suppress(KeyError):
                gauge.remove(self.node_name, namespace, name)


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


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{hashlib.sha256(data).hexdigest()[:8]}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
