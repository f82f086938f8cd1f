"""The seeder's half of a Dataset: list the origin, then read it exactly once into the swarm.

- Listing checks every name before anything is written, then reports the size, so the controller
  can refuse nodes without room before a byte moves.
- Seeding reads each file from the origin once, writing it to disk and hashing it for the dataset
  digest on the way. The files come in parts (datasets/parts.py): as soon as it holds a part, it
  builds that part's v2 torrent (libtorrent hashes the pieces from the page cache), seeds it with
  every piece marked verified (it does not re-hash what it wrote) and publishes its info-hash, then
  reads the next part while the swarm copies this one.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cairn.api.dataset import Dataset, DatasetNodeStatus, DatasetPart, DatasetStatus, NodePhase
from cairn.api.disk import StorageNode
from cairn.api.volume import VolumeAccess
from cairn.egress import EgressPolicy, EgressRefused
from cairn.fault_injection import crash_point
from cairn.kube import ResourceClient, Typed
from cairn.node_agent import metrics
from cairn.node_agent.datasets.origin import (
    DirectoryOrigin,
    HttpOrigin,
    Origin,
    OriginError,
    S3Origin,
    listing_digest,
)
from cairn.node_agent.datasets.origin_reads import fetch_parts
from cairn.node_agent.datasets.pacing import DEFAULT_BACKGROUND_BYTES_PER_SECOND, node_rate
from cairn.node_agent.datasets.parts import plan_parts
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.store import PartStore
from cairn.node_agent.datasets.swarm import Swarm, dataset_key
from cairn.node_agent.host import mounts
from cairn.node_agent.host.rate_limit import TokenBucket
from cairn.node_agent.manifests import Manifest, ManifestEntry
from cairn.node_agent.p2p.session import make_torrent, piece_size_for
from cairn.node_agent.volumes.index import StagedVolume
from cairn.s3 import ReadSecret, S3Location, client_from_secret
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.datasets")
PROGRESS_SECONDS = 2.0
"""How often the seeder reports how far through the origin it is."""


@dataclass
class Seeder:
    node_name: str
    secrets: ReadSecret
    datasets: ResourceClient
    lookup: Callable[[str], StagedVolume | None]
    state_dir: Path
    store: PartStore
    swarm: Swarm
    reports: NodeReports
    egress: Callable[[], EgressPolicy] = EgressPolicy
    """Where origins may lead: the fixed refusals, the cluster's ranges, the chart's allowances."""
    background_bytes_per_second: int = DEFAULT_BACKGROUND_BYTES_PER_SECOND

    def list_origin(self, item: Typed, namespace: str) -> None:
        dataset: Dataset = item.model
        files = self._origin(dataset, namespace, item.name).list_files()
        if not files:
            raise OriginError("EmptySource", f"{dataset.spec.source.describe()} lists no files")
        total = sum(f.size for f in files)
        self.datasets.patch_status(
            item.name,
            DatasetStatus(
                listing=listing_digest(dataset.spec.source.origin_identity(), files),
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

    def seed(self, item: Typed, namespace: str, mount: Path, nodes: list[StorageNode]) -> None:
        """Read the origin into `mount` part by part, publishing each part as it lands.

        Runs in its own thread; every failure ends in a report, never in an exception.
        """
        dataset: Dataset = item.model
        key = dataset_key(namespace, item.name)
        try:
            origin = self._origin(dataset, namespace, item.name)
            files = origin.list_files()
            listed = dataset.status.listing
            if listed is not None and listing_digest(dataset.spec.source.origin_identity(), files) != listed:
                # Other Datasets may already share copies on the strength of the published listing.
                raise OriginError(
                    "OriginChanged",
                    f"{dataset.spec.source.describe()} changed between its listing and its first read; "
                    "create the Dataset again to take the new contents",
                )
            data = self.store.data_directory(namespace, item.name)
            if data.exists():
                shutil.rmtree(data)  # a fetch cut short: the origin is read again, once, from the start
            self.store.drop_parts(namespace, item.name)
            self.reports.report(item.name, namespace, DatasetNodeStatus(phase=NodePhase.DOWNLOADING))
            plan = plan_parts(files)
            piece_size = dataset.spec.piece_size or piece_size_for(sum(f.size for f in files))
            entries: list[ManifestEntry] = []
            published: list[DatasetPart] = []
            progress = FetchProgress(
                self.node_name, self.reports, item.name, namespace, sum(f.size for f in files)
            )

            def publish(index: int, part_entries: list[ManifestEntry]) -> None:
                entries.extend(part_entries)
                part = plan[index]
                swarm = dataset.status.swarm
                meta = make_torrent(
                    data,
                    piece_size,
                    files=[(f.path, f.size) for f in part],
                    root_certificate=swarm.ca_certificate if swarm else None,
                )
                check_republished(dataset, index, meta.info_hash)
                self.store.save_torrent(namespace, item.name, index, meta.torrent)
                info_hash = self.swarm.seed_part(key, index, meta.torrent, data, dataset, nodes)
                published.append(DatasetPart(info_hash=info_hash, files=len(part), bytes=meta.total_bytes))
                ready = None
                if index == len(plan) - 1:
                    self.swarm.mark_verified(key)
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
                crash_point("agent.seed.part-published")
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

            rate = node_rate(dataset.spec, self.background_bytes_per_second)
            if rate:
                log.info("dataset %s: seeding in the background at %s/s", key, human_bytes(rate))
            fetch_parts(origin, plan, data, progress.add, publish, bucket=TokenBucket(rate) if rate else None)
            log.info(
                "dataset %s/%s seeded: %s from the origin", namespace, item.name, human_bytes(progress.done)
            )
        except OriginError as error:
            self.swarm.leave(key)  # a seeding cut short starts again from the origin
            self.reports.fail(item, namespace, error.reason, str(error))
        except Exception as error:
            log.warning("dataset %s/%s: seeding failed", namespace, item.name, exc_info=True)
            self.swarm.leave(key)
            self.reports.report(
                item.name,
                namespace,
                DatasetNodeStatus(phase=NodePhase.WAITING, reason="SeedRetrying", message=f"{error}"),
            )
        finally:
            if dataset.status.source_volume:
                self.unmount_source(dataset.status.source_volume)

    def _origin(self, dataset: Dataset, namespace: str, dataset_name: str) -> Origin:
        source = dataset.spec.source
        if source.s3 is not None:
            s3 = source.s3
            location = S3Location.from_url(s3.url)
            try:
                # boto3 connects by name: a name that resolves elsewhere later is not caught here.
                self.egress().check_url(s3.endpoint)
            except EgressRefused as refused:
                raise OriginError("OriginRefused", f"S3 endpoint {s3.endpoint}: {refused}") from None

            def make_client() -> Any:
                return client_from_secret(
                    self.secrets,
                    namespace,
                    s3.endpoint,
                    s3.region,
                    s3.credentials_secret_ref,
                    f"Dataset {namespace}/{dataset_name}",
                )

            return S3Origin(make_client, location.bucket, location.prefix)
        if source.http is not None:
            return HttpOrigin(source.http.urls, self.egress())
        return DirectoryOrigin(self._mount_source_volume(dataset))

    def _source_mount(self, volume: str) -> Path:
        return self.state_dir / "dataset-sources" / volume

    def _mount_source_volume(self, dataset: Dataset) -> Path:
        """A PVC source's volume, mounted read-only beside its other mounts: ext4 and xfs allow that."""
        volume_name = dataset.status.source_volume
        volume = self.lookup(volume_name) if volume_name else None
        if volume is None:
            raise OriginError(
                "SourceVolumeNotHere", f"the source volume {volume_name} is not on {self.node_name}"
            )
        if volume.access is VolumeAccess.BLOCK:
            # Mounting it would have the host kernel parse a filesystem image the tenant wrote.
            raise OriginError(
                "BlockSourceRefused",
                f"the source volume {volume_name} is a block volume; only a filesystem claim can be a source",
            )
        mount = self._source_mount(volume.name)
        if not mounts.is_mount_point(str(mount)):
            mounts.ensure_directory(str(mount))
            mounts.mount(volume.device, str(mount), volume.fs_type, ["ro"])
        return mount

    def unmount_source(self, volume: str) -> None:
        mount = self._source_mount(volume)
        if mounts.is_mount_point(str(mount)):
            mounts.unmount(str(mount))
        if mount.exists():
            mount.rmdir()


@dataclass
class FetchProgress:
    """The seeder's progress through the origin, reported every few seconds while it reads."""

    node_name: str
    reports: NodeReports
    name: str
    namespace: str
    total: int
    done: int = 0
    reported_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, count: int) -> None:
        """Called by every origin stream as bytes land."""
        metrics.DATASET_BYTES.labels(node=self.node_name, source="origin").inc(count)
        with self._lock:
            self.done += count
            done = self.done
            if time.monotonic() - self.reported_at <= PROGRESS_SECONDS:
                return
            self.reported_at = time.monotonic()
        # Outside the lock: the other streams keep reading while this one talks to the API.
        self.reports.report(
            self.name,
            self.namespace,
            DatasetNodeStatus(
                phase=NodePhase.DOWNLOADING,
                progress=min(1.0, done / (self.total or 1)),
                bytes_from_origin=done,
            ),
        )


def check_republished(dataset: Dataset, index: int, info_hash: str) -> None:
    """A seeder reading the origin again must publish the very parts others may already hold."""
    parts = dataset.status.parts
    if index < len(parts) and parts[index].info_hash != info_hash:
        raise OriginError(
            "OriginChanged",
            f"part {index} of the data read again is {info_hash}, not the {parts[index].info_hash} "
            "published before: the origin changed while the dataset was being seeded",
        )


def published_patch(
    published: list[DatasetPart], part_count: int, piece_size: int, node: str, ready: DatasetNodeStatus | None
) -> DatasetStatus:
    """The status patch for a part just published; with the last part, the digest and the seeder's
    Ready report (`ready`) go in the same patch. Nothing else is sent, so no other field is reset."""
    fields: dict[str, Any] = {"parts": list(published), "part_count": part_count, "piece_size": piece_size}
    if ready is not None:
        fields.update(digest=ready.digest, nodes={node: ready})
    return DatasetStatus(**fields)
