"""This node's share in each dataset's swarm: one torrent per part, peers told, progress, verification.

Every target but the seeder fetches each part's .torrent from a node that has it (checked against
the info-hash in status) and downloads it from the swarm; libtorrent checks every piece against its
Merkle root as it arrives. Once every part is in, the whole-dataset digest is checked against the
seeder's. The seeder's parts join through `seed_part`, already verified.

Fast-resume data is saved every RESUME_INTERVAL seconds and at a clean shutdown. After a clean
restart it is trusted as it is. After a crash it is not: the pieces written since the last save
would be fetched again (a 10 s interval at 30 MB/s is 300 MB), and a write torn by the crash could
hide in a piece the data calls complete. So the files on disk are checked instead, which reads
local disk at GB/s and fetches again only pieces that really are missing or bad.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cairn.api.dataset import Dataset, DatasetNodeStatus, NodePhase
from cairn.api.disk import StorageNode
from cairn.certificates import same_public_key
from cairn.kube import ResourceClient, Typed
from cairn.node_agent import metrics
from cairn.node_agent.datasets.pacing import (
    DEFAULT_BACKGROUND_BYTES_PER_SECOND,
    UNLIMITED,
    PartLimits,
    node_rate,
    part_limits,
)
from cairn.node_agent.datasets.parts import part_peers, stranded
from cairn.node_agent.datasets.peer_client import fetch_part_torrent, torrent_holders
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.steps import report_due
from cairn.node_agent.datasets.store import DATA_DIR, PartStore
from cairn.node_agent.manifests import build_manifest
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.metadata import TorrentMetadataError, info_hash_of
from cairn.node_agent.p2p.session import (
    FileFailed,
    HashFailed,
    PeerBanned,
    TorrentFailed,
    TorrentNode,
    TorrentSessionError,
    TransferStatus,
)

log = logging.getLogger("cairn.node.datasets")
RESUME_INTERVAL = 10.0
STALL_SECONDS = 3.0
"""A part that gained nothing for this long is asked of the seeder too (see `part_peers`)."""


def dataset_key(namespace: str, name: str) -> str:
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
    certified: set[int] = field(default_factory=set)
    """Parts whose torrent has this node's swarm certificate; the others cannot talk to peers yet."""
    verified: bool = False
    """This session checked the whole copy against the dataset's digest."""
    limits: dict[int, PartLimits] = field(default_factory=dict)
    """Per part, the rate limits its torrent was given (absent: none, unlimited)."""
    reported_at: float | None = None
    """When this session last wrote the node's entry (monotonic), to pace progress reports."""


@dataclass
class Swarm:
    node_name: str
    torrent: TorrentNode
    store: PartStore
    storage_nodes: ResourceClient
    reports: NodeReports
    identity: PeerIdentity | None = None
    """Who this agent is on the peer plane: without it, no .torrent can be fetched from a peer."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by the agent's whole pass and by the seeder's thread whenever it changes a share."""
    background_bytes_per_second: int = DEFAULT_BACKGROUND_BYTES_PER_SECOND
    _joined: dict[str, Joined] = field(default_factory=dict)

    def has_joined(self, key: str) -> bool:
        return key in self._joined

    def shares(self) -> list[str]:
        """The datasets this session holds a share in, as namespace/name keys."""
        return list(self._joined)

    def admit(self, nodes: list[StorageNode]) -> None:
        """Only the hosts of Cairn's StorageNodes may connect to this session."""
        self.torrent.set_allowed_peers(_hosts(nodes))

    def begin_seeding(self, key: str) -> None:
        with self.lock:
            self._joined[key] = Joined(0)

    def mark_verified(self, key: str) -> None:
        """The seeder hashed every file as it landed: its copy is checked by construction."""
        with self.lock:
            self._joined[key].verified = True

    def seed_part(
        self, key: str, index: int, torrent: bytes, data: Path, dataset: Dataset, nodes: list[StorageNode]
    ) -> str:
        """Seed a part the seeder has just written and hashed: libtorrent does not hash it again."""
        info_hash = self.torrent.seed(torrent, data, already_verified=True)
        with self.lock:
            joined = self._joined[key]
            joined.parts[index] = info_hash
            self._pace(dataset, joined, {i: self.torrent.status(h) for i, h in joined.parts.items()})
            self._certify(joined, dataset)
            self._tell_peers(joined, index, dataset, nodes, stalled=False)
        return info_hash

    def _pace(self, dataset: Dataset, joined: Joined, statuses: dict[int, TransferStatus]) -> None:
        """Share a Background Dataset's cap among the parts still coming in; lift it once Normal."""
        rate = node_rate(dataset.spec, self.background_bytes_per_second)
        if rate == 0 and not joined.limits:
            return
        complete = {index for index, s in statuses.items() if s.is_seeding}
        lacking = len(joined.parts) - len(complete)
        for index, info_hash in joined.parts.items():
            limits = part_limits(rate, lacking, index in complete)
            if joined.limits.get(index, UNLIMITED) != limits:
                self.torrent.limit(info_hash, download=limits.download, upload=limits.upload)
                joined.limits[index] = limits
        if rate == 0:
            joined.limits.clear()

    def swarm_certificate(self, dataset: Dataset) -> str | None:
        """This node's certificate for the dataset's swarm, once signed for the key it holds now."""
        swarm = dataset.status.swarm
        if self.identity is None or swarm is None:
            return None
        pem = swarm.node_certificates.get(self.node_name)
        if pem is None or not same_public_key(pem, self.identity.certificate_pem):
            return None
        return pem

    def _certify(self, joined: Joined, dataset: Dataset) -> None:
        """Give each part's torrent this node's swarm certificate, as soon as the controller signed it."""
        waiting = [index for index in joined.parts if index not in joined.certified]
        if not waiting or self.identity is None:
            return
        certificate = self.swarm_certificate(dataset)
        if certificate is None:
            log.info(
                "dataset %s: waiting for the controller to sign this node's swarm certificate",
                dataset.status.source,
            )
            return
        key = self.identity.key_path.read_text()
        for index in waiting:
            self.torrent.set_certificate(joined.parts[index], certificate, key)
            joined.certified.add(index)

    def join(
        self, item: Typed, namespace: str, mount: Path, report: DatasetNodeStatus, nodes: list[StorageNode]
    ) -> Joined:
        """Add every published part this session does not have yet; a part not fetchable now waits."""
        dataset: Dataset = item.model
        key = dataset_key(namespace, item.name)
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
        self._certify(joined, dataset)
        return joined

    def _torrent_file(
        self, item: Typed, namespace: str, nodes: list[StorageNode], index: int, expected: str
    ) -> bytes | None:
        local = self.store.torrent(namespace, item.name, index)
        if local is not None and _hash_or_none(local) == expected:
            return local
        if self.identity is None:
            return None
        holders = torrent_holders(nodes, self.node_name, item.model)
        fetched = fetch_part_torrent(
            self.identity, holders, namespace, item.name, index, expected, _hash_or_none
        )
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
        # A target that uses another Dataset's copy never joins this swarm: no first hop there.
        members = [node for node in status.target_nodes if node not in status.shared_copies]
        names = part_peers(
            self.node_name,
            status.seeder,
            members,
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

    def advance(self, item: Typed, namespace: str, joined: Joined, report: DatasetNodeStatus) -> None:
        """Count what moved, unstick stalled parts, and report; verify once every part is in."""
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
        self._pace(dataset, joined, statuses)
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
        # After a crash the copy on disk may lack writes that its Ready report predates: it is a
        # copy again only once this session has checked it whole, and Verifying until then.
        was_ready = report.phase in (NodePhase.READY, NodePhase.VERIFYING)
        recheck = was_ready and not self.copy_checked(namespace, item.name)
        phase = NodePhase.DOWNLOADING
        if was_ready:
            phase = NodePhase.VERIFYING if recheck else NodePhase.READY
        updated = DatasetNodeStatus(
            phase=phase,
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
        if complete and (report.phase != NodePhase.READY or recheck):
            updated = self._verify(item, namespace, joined, updated, dataset.status.digest)
            joined.verified = updated.phase == NodePhase.READY
        elif time.monotonic() - joined.resume_saved_at > RESUME_INTERVAL:
            for index, status in statuses.items():
                if not status.is_seeding:
                    self._save_resume(namespace, item.name, index, joined.parts[index])
            joined.resume_saved_at = time.monotonic()
        now = time.monotonic()
        since = None if joined.reported_at is None else now - joined.reported_at
        if report_due(report, updated, len(dataset.status.target_nodes), since, self.node_name):
            updated.updated_at = datetime.now(UTC)
            self.reports.report(item.name, namespace, updated)
            joined.reported_at = now
        log.debug("dataset %s/%s: %.1f%% from %d peers", namespace, item.name, 100 * progress, peers)

    def copy_checked(self, namespace: str, name: str) -> bool:
        """Whether this node's copy may be handed to consumers: verified by this session, or kept
        from a run that shut down cleanly (its resume data then vouches for every piece)."""
        joined = self._joined.get(dataset_key(namespace, name))
        return self.store.trust_resume_data() or (joined is not None and joined.verified)

    def _verify(
        self, item: Typed, namespace: str, joined: Joined, report: DatasetNodeStatus, expected: str | None
    ) -> DatasetNodeStatus:
        """Every piece was checked as it arrived; this checks the whole against the seeder's digest."""
        data = self.store.data_directory(namespace, item.name)
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

    def save_all(self) -> None:
        """Every share's resume data, for a clean shutdown."""
        with self.lock:
            for key, joined in list(self._joined.items()):
                namespace, name = key.split("/", 1)
                for index, info_hash in joined.parts.items():
                    self._save_resume(namespace, name, index, info_hash)

    def note_events(self) -> None:
        for event in self.torrent.poll_alerts():
            if isinstance(event, HashFailed):
                metrics.P2P_HASH_FAILURES.labels(node=self.node_name).inc()
                log.warning("piece %d of torrent %s failed its hash check", event.piece, event.info_hash)
            elif isinstance(event, PeerBanned):
                metrics.P2P_BANNED_PEERS.labels(node=self.node_name).inc()
                log.warning("banned peer %s for sending data that failed hash checks", event.ip)
            elif isinstance(event, (TorrentFailed, FileFailed)):
                log.warning("torrent trouble: %s", event)

    def leave(self, key: str) -> None:
        with self.lock:
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


def _hash_or_none(torrent: bytes) -> str | None:
    try:
        return info_hash_of(torrent)
    except TorrentMetadataError:
        return None


def _hosts(nodes: list[StorageNode]) -> set[str]:
    hosts = set()
    for node in nodes:
        if node.status.endpoints.p2p_address:
            hosts.add(split_address(node.status.endpoints.p2p_address)[0])
    return hosts
