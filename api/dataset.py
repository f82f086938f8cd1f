"""Dataset: data from S3, HTTP or a PVC, seeded onto node-local volumes over BitTorrent v2."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from .base import CairnModel, Condition, PrinterColumn, Resource, age_column
from .checkpoint import SecretKeyRef
from .volume import DISK_CLASSES, PoolClass


class S3Source(CairnModel):
    url: str = Field(pattern=r"^s3://[^/]+(/.*)?$", description="s3://bucket/prefix")
    endpoint: str = Field(description="S3 endpoint URL.")
    region: str = "us-east-1"
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret in the Dataset's namespace; anonymous access without one."
    )


class HttpSource(CairnModel):
    urls: list[str] = Field(
        min_length=1, description="https:// URLs; each becomes one file named after its last path segment."
    )


class PvcSource(CairnModel):
    name: str = Field(description="A Cairn PVC in the Dataset's namespace, read on the node holding it.")


class DatasetSource(CairnModel):
    """Exactly one of s3, http or pvc."""

    s3: S3Source | None = None
    http: HttpSource | None = None
    pvc: PvcSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSource:
        given = [name for name in ("s3", "http", "pvc") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"source needs exactly one of s3, http or pvc; got {given or 'none'}")
        return self

    def origin_identity(self) -> str | None:
        """Which store the listing's names are keys of; None for a PVC, whose files have no versions.

        Part of a listing's digest, so two Datasets share copies only when they name the same objects
        of the same store, whatever credentials they read them with.
        """
        if self.s3 is not None:
            return (
                f"s3 {self.s3.endpoint.rstrip('/').lower()} {self.s3.url.removeprefix('s3://').split('/')[0]}"
            )
        if self.http is not None:
            return "http"  # each file's locator is its whole URL
        return None

    def describe(self) -> str:
        if self.s3 is not None:
            return self.s3.url
        if self.http is not None:
            return self.http.urls[0] + (f" (+{len(self.http.urls) - 1})" if len(self.http.urls) > 1 else "")
        assert self.pvc is not None
        return f"pvc/{self.pvc.name}"


class DatasetNodes(CairnModel):
    """Where the dataset is wanted: nodes matching a selector, a list, or only where consumed."""

    selector: dict[str, str] | None = Field(default=None, description="Node labels, as in a nodeSelector.")
    names: list[str] | None = None
    on_demand: bool = Field(
        default=False, description="Only on nodes where a PVC with this Dataset as dataSourceRef lands."
    )


READY_WHEN_PATTERN = r"^(All|[1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$"
MIN_BACKGROUND_BYTES_PER_SECOND = 1024 * 1024


class SeedPriority(StrEnum):
    NORMAL = "Normal"
    """As fast as the origin, the links and the disks allow."""
    BACKGROUND = "Background"
    """Beside running jobs: each node's origin reads and swarm traffic are capped, and the seeder's
    reads and writes run at the lowest CPU and I/O priority."""


class DatasetSpec(CairnModel):
    source: DatasetSource
    nodes: DatasetNodes = Field(default_factory=DatasetNodes)
    ready_when: str = Field(
        default="All",
        pattern=READY_WHEN_PATTERN,
        description=(
            "When pods waiting for this Dataset may be scheduled: All targets hold a verified copy, "
            "a count of nodes (3), or a percentage of the targets (50%)."
        ),
    )
    priority: SeedPriority = SeedPriority.NORMAL
    background_bytes_per_second: int | None = Field(
        default=None,
        ge=MIN_BACKGROUND_BYTES_PER_SECOND,
        description=(
            "With priority Background: each node's cap on bytes in (origin or peers) and, apart, on "
            "bytes out to peers, per second; the agent's --background-bytes-per-second if unset."
        ),
    )
    pool: PoolClass = Field(
        default=PoolClass.NVME,
        description="The disk pool the copies are carved in; memory is for checkpoints, not Datasets.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self != 'memory'", "message": "a Dataset's copies sit on a disk pool, not memory"}
            ]
        },
    )
    piece_size: int | None = Field(
        default=None,
        ge=16384,
        description="BitTorrent piece size in bytes; chosen from the total size if unset.",
    )

    @field_validator("pool")
    @classmethod
    def _a_disk_pool(cls, pool: PoolClass) -> PoolClass:
        if pool not in DISK_CLASSES:
            raise ValueError("a Dataset's copies sit on a disk pool, not memory")
        return pool


class DatasetPhase(StrEnum):
    PENDING = "Pending"
    SEEDING = "Seeding"
    """The seeder is reading the origin; no part is published yet."""
    DISTRIBUTING = "Distributing"
    """Parts are moving between nodes, while the seeder may still be reading the rest."""
    READY = "Ready"
    FAILED = "Failed"
    EVICTED = "Evicted"
    """Every copy was evicted to make room in its pool; a claim of the Dataset brings one back."""


class NodePhase(StrEnum):
    WAITING = "Waiting"
    DOWNLOADING = "Downloading"
    VERIFYING = "Verifying"
    READY = "Ready"
    FAILED = "Failed"
    EVICTED = "Evicted"
    """The copy was removed to make room (the pool passed its high watermark); see the message."""


class DatasetNodeStatus(CairnModel):
    """One node's copy, written by that node's agent (a map entry, so agents never overwrite each other)."""

    phase: NodePhase = NodePhase.WAITING
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    bytes_uploaded: int = 0
    peers: int = 0
    digest: str | None = Field(default=None, description="Whole-dataset digest this node computed.")
    reason: str | None = None
    message: str | None = None
    updated_at: datetime | None = None


class DatasetPart(CairnModel):
    """One torrent of the dataset: a group of whole files, published as soon as the seeder holds it."""

    info_hash: str = Field(description="BitTorrent v2 info-hash (SHA-256, hex) of this part's torrent.")
    files: int
    bytes: int


class SwarmCredentials(CairnModel):
    """Who may join the dataset's swarm: written by the controller, public material only.

    Every part's torrent embeds `caCertificate` (libtorrent's SSL torrents), so a peer is let into
    the swarm only with a certificate that CA signed; the controller signs one per target node, for
    the public key that node's StorageNode publishes, and for no other node.
    """

    ca_certificate: str = Field(max_length=8192, description="PEM of this dataset's swarm CA.")
    node_certificates: dict[str, str] = Field(
        default_factory=dict, description="PEM certificate per target node, for its agent's published key."
    )


class DatasetStatus(CairnModel):
    phase: DatasetPhase = DatasetPhase.PENDING
    source: str | None = Field(default=None, description="The source in one line, for the printer column.")
    total_bytes: int | None = None
    size: str | None = None
    file_count: int | None = None
    piece_size: int | None = None
    part_count: int | None = Field(
        default=None, description="How many torrents the dataset is split into (known once listed)."
    )
    parts: list[DatasetPart] = Field(
        default_factory=list,
        description="The torrents published so far, in the order the seeder read them from the origin.",
    )
    digest: str | None = Field(
        default=None, description="Whole-dataset digest over every file's BLAKE3; set with the last part."
    )
    seeder: str | None = Field(default=None, description="The node that reads the origin once.")
    source_volume: str | None = Field(
        default=None, description="For a PVC source: the LocalVolume behind the claim, read on its node."
    )
    target_nodes: list[str] = Field(default_factory=list)
    listing: str | None = Field(
        default=None,
        description=(
            "SHA-256 over the origin's listing: every key, size and version tag (ETag). Datasets of "
            "one namespace with the same listing share each node's copy; unset when a file has no tag."
        ),
    )
    shared_copies: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Node to the Dataset of this namespace whose verified copy this one uses there, instead "
            "of a copy of its own: no byte is read from the origin or a peer for that node."
        ),
    )
    last_used: dict[str, datetime] = Field(
        default_factory=dict,
        description="Node to when a claim was last filled from the copy there; eviction takes the oldest.",
    )
    swarm: SwarmCredentials | None = None
    nodes: dict[str, DatasetNodeStatus] = Field(default_factory=dict)
    ready_count: int = 0
    ready: str = Field(default="0/0", description="Ready nodes out of wanted, for the printer column.")
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    waiting_pods: int = Field(
        default=0, description="Pods held by the dataset gate until this Dataset is ready."
    )
    conditions: list[Condition] = Field(default_factory=list)


class Dataset(Resource):
    KIND: ClassVar[str] = "Dataset"
    PLURAL: ClassVar[str] = "datasets"
    SHORT_NAMES: ClassVar[list[str]] = ["ds"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = "Data seeded from one origin onto node-local volumes, peer to peer."
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="Source", json_path=".status.source"),
        PrinterColumn(name="Size", json_path=".status.size"),
        PrinterColumn(name="Ready", json_path=".status.ready"),
        PrinterColumn(name="Phase", json_path=".status.phase"),
        PrinterColumn(name="Waiting", json_path=".status.waitingPods", type="integer"),
        PrinterColumn(name="Priority", json_path=".spec.priority", priority=1),
        age_column(),
    ]

    spec: DatasetSpec
    status: DatasetStatus = Field(default_factory=DatasetStatus)

    @property
    def fully_published(self) -> bool:
        """The seeder has published every part and the whole-dataset digest."""
        status = self.status
        return (
            status.part_count is not None
            and len(status.parts) == status.part_count
            and status.digest is not None
        )


def dataset_label(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def dataset_volume_name(namespace: str, name: str, node: str) -> str:
    """The LocalVolume holding one node's copy; deterministic, so a retried reconcile finds its own."""
    return "ds-" + hashlib.sha256(f"{namespace}/{name}/{node}".encode()).hexdigest()[:32]
