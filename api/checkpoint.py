"""CheckpointPolicy and Checkpoint: how a volume's checkpoints are noticed, tiered and kept."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from cairn.step_pattern import DEFAULT_STEP_PATTERN, MAX_STEP_PATTERN_LENGTH, compile_step_pattern

from .base import CairnModel, Condition, PrinterColumn, Resource, age_column


class CommitRule(StrEnum):
    DCP = "dcp"
    """A directory holding PyTorch Distributed Checkpoint's `.metadata`, which DCP writes last."""
    MARKER = "marker"
    """A directory holding the marker file (`COMMITTED` unless renamed)."""
    ORBAX = "orbax"
    """An Orbax step directory after its rename from `<step>.orbax-checkpoint-tmp-<n>`."""


class HashAlgorithm(StrEnum):
    BLAKE3 = "blake3"
    SHA256 = "sha256"


class SecretKeyRef(CairnModel):
    """A Secret in the policy's namespace; Cairn stores references, never credentials."""

    name: str
    access_key_id_key: str = "accessKeyId"
    secret_access_key_key: str = "secretAccessKey"


class S3Target(CairnModel):
    endpoint: str = Field(description="S3 endpoint URL, e.g. https://s3.us-east-1.amazonaws.com.")
    bucket: str
    prefix: str = Field(
        default="",
        description=(
            "Key prefix; a checkpoint goes under <prefix>/<namespace>/<pvc>/<its path>/<Checkpoint uid>/."
        ),
    )
    region: str = "us-east-1"
    credentials_secret_ref: SecretKeyRef


class CommitSpec(CairnModel):
    rules: list[CommitRule] = Field(
        default=[CommitRule.DCP, CommitRule.MARKER, CommitRule.ORBAX], min_length=1
    )
    marker_name: str = "COMMITTED"
    step_pattern: str = Field(
        default=DEFAULT_STEP_PATTERN,
        max_length=MAX_STEP_PATTERN_LENGTH,
        description=(
            "RE2 regex (linear time: no backreferences or lookaround) with one group, applied to the "
            "checkpoint directory's name."
        ),
    )
    settle_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="A committed checkpoint is recorded once unchanged for this long.",
    )

    @field_validator("step_pattern")
    @classmethod
    def _runs_in_linear_time(cls, pattern: str) -> str:
        compile_step_pattern(pattern)
        return pattern


class Tier(StrEnum):
    """Where a checkpoint's copies are kept, fastest first."""

    MEMORY = "memory"
    """The memory volume it was written to (pool `memory`, a tmpfs); lost with the node or a reboot."""
    LOCAL = "local"
    """The node's disks: the volume it was written to, or the agent's tier store for a memory volume."""
    S3 = "s3"
    """The policy's S3 target."""


TIER_ORDER: tuple[Tier, ...] = (Tier.MEMORY, Tier.LOCAL, Tier.S3)
MEMORY_POOL = Tier.MEMORY.value
"""The pool class of a memory volume (LocalVolume spec.pool), as a LocalCopy records it."""


class RetentionSpec(CairnModel):
    keep_memory: int = Field(
        default=1,
        ge=0,
        description=(
            "Newest checkpoints kept in a memory volume, with tiers naming memory; an older one leaves "
            "memory only once a slower tier holds it verified."
        ),
    )
    keep_local: int = Field(
        default=2,
        ge=0,
        description="Newest checkpoints kept on the node's disks (the volume, or the tier store).",
    )
    keep_remote_last: int = Field(default=3, ge=0, description="Newest checkpoints kept in S3.")
    keep_remote_every: int = Field(
        default=0, ge=0, description="Also keep every K-th step in S3; 0 keeps none."
    )


MAX_UPLOAD_BUFFER_BYTES = 1024 * 1024 * 1024
"""An upload holds at most (concurrency + 1) parts in memory: those in flight and the one being read."""


class UploadSpec(CairnModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # The apiserver checks the schema's `{}` default too, before defaults fill it.
                    "rule": "!has(self.concurrency) || !has(self.partSizeBytes) || "
                    f"(self.concurrency + 1) * self.partSizeBytes <= {MAX_UPLOAD_BUFFER_BYTES}",
                    "message": "(concurrency + 1) * partSizeBytes, the memory an upload holds, "
                    "may be at most 1 GiB",
                }
            ]
        }
    )

    concurrency: int = Field(default=4, ge=1, le=16, description="Parts uploaded at once.")
    part_size_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=256 * 1024 * 1024,
        description="Multipart part size; S3 needs at least 5 MiB.",
    )
    bandwidth_limit_bytes_per_second: int = Field(default=0, ge=0, description="0 means unlimited.")

    @model_validator(mode="after")
    def _memory_is_bounded(self) -> UploadSpec:
        held = (self.concurrency + 1) * self.part_size_bytes
        if held > MAX_UPLOAD_BUFFER_BYTES:
            raise ValueError(
                f"(concurrency + 1) * partSizeBytes = {held} bytes, the memory one upload holds; "
                f"at most {MAX_UPLOAD_BUFFER_BYTES} (1 GiB) are allowed"
            )
        return self


DEFAULT_DRAIN_TIMEOUT_SECONDS = 1800
"""Half an hour: a few GiB at a modest uplink, not so long that a wedged target pins a disk for days."""


_TIER_RULES: list[JsonValue] = [
    {
        # Every ordered, duplicate-free, non-empty subset of memory, local, s3.
        "rule": "!has(self.tiers) || self.tiers in ["
        + ", ".join(
            "[" + ", ".join(f"'{t.value}'" for t in subset) + "]"
            for subset in (
                [Tier.MEMORY],
                [Tier.LOCAL],
                [Tier.S3],
                [Tier.MEMORY, Tier.LOCAL],
                [Tier.MEMORY, Tier.S3],
                [Tier.LOCAL, Tier.S3],
                list(TIER_ORDER),
            )
        )
        + "]",
        "message": "tiers is an ordered subset of [memory, local, s3], fastest first, each named once",
    },
    {
        "rule": "!has(self.tiers) || (('s3' in self.tiers) == has(self.target))",
        "message": "tiers names s3 exactly when the policy has a target: add both, or neither",
    },
]


class CheckpointPolicySpec(CairnModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _TIER_RULES})

    commit: CommitSpec = Field(default_factory=CommitSpec)
    target: S3Target | None = Field(
        default=None, description="Where to tier; without one the policy is local-only."
    )
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    upload: UploadSpec = Field(default_factory=UploadSpec)
    tiers: list[Tier] | None = Field(
        default=None,
        max_length=len(TIER_ORDER),
        description=(
            "Where copies go, fastest first, e.g. [memory, local, s3]: a checkpoint in a memory volume "
            "is copied to this node's disks, then to S3, in the background, each copy verified against "
            "the manifest. Unset: the volume's copy, then S3 if there is a target."
        ),
    )
    peer_replicas: int = Field(default=0, ge=0, le=1, description="Copies kept on another node's agent.")
    hash_algorithm: HashAlgorithm = HashAlgorithm.BLAKE3
    drain_timeout_seconds: int = Field(
        default=DEFAULT_DRAIN_TIMEOUT_SECONDS,
        ge=0,
        le=7 * 24 * 3600,
        description=(
            "How long a deleted volume is kept (DeleteVolume waits) for its committed checkpoints "
            "to be recorded and Tiered; past it the volume is released with a Warning Event naming "
            "what had no copy in S3."
        ),
    )

    @field_validator("tiers")
    @classmethod
    def _tiers_in_order(cls, tiers: list[Tier] | None) -> list[Tier] | None:
        if tiers is None:
            return None
        if not tiers:
            raise ValueError("tiers is empty; name at least one of memory, local, s3, or leave it unset")
        if len(set(tiers)) != len(tiers):
            raise ValueError(f"tiers {[t.value for t in tiers]} names a tier twice; name each once")
        if tiers != sorted(tiers, key=TIER_ORDER.index):
            raise ValueError(
                f"tiers {[t.value for t in tiers]} is out of order; list them fastest first: "
                "memory, local, s3"
            )
        return tiers

    @model_validator(mode="after")
    def _s3_needs_a_target(self) -> CheckpointPolicySpec:
        if self.tiers is None:
            return self
        if Tier.S3 in self.tiers and self.target is None:
            raise ValueError("tiers names s3 but the policy has no target; add spec.target or drop s3")
        if Tier.S3 not in self.tiers and self.target is not None:
            raise ValueError(
                "the policy has a target but tiers leaves out s3, so nothing would reach it; "
                "add s3 to tiers or drop spec.target"
            )
        return self

    def tier_list(self) -> list[Tier]:
        """The tiers in effect: as given, else today's default (the volume's copy, then S3)."""
        if self.tiers is not None:
            return list(self.tiers)
        return [Tier.LOCAL, Tier.S3] if self.target is not None else [Tier.LOCAL]

    @property
    def memory_tier(self) -> bool:
        """Copies in a memory volume are a tier of their own (kept by keepMemory, drained to slower ones)."""
        return self.tiers is not None and Tier.MEMORY in self.tiers

    @property
    def memory_only(self) -> bool:
        """tiers is [memory]: the memory copy is the only one, so retention may drop it unbacked."""
        return self.tiers == [Tier.MEMORY]

    @property
    def copies_to_local(self) -> bool:
        """A checkpoint in a memory volume is copied to this node's tier store."""
        return self.tiers is not None and Tier.MEMORY in self.tiers and Tier.LOCAL in self.tiers


class CheckpointPolicyStatus(CairnModel):
    conditions: list[Condition] = Field(default_factory=list)


class CheckpointPolicy(Resource):
    KIND: ClassVar[str] = "CheckpointPolicy"
    PLURAL: ClassVar[str] = "checkpointpolicies"
    SHORT_NAMES: ClassVar[list[str]] = ["ckptpolicy"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = (
        "How checkpoints on volumes of a StorageClass are detected, tiered to S3 and kept."
    )
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="Bucket", json_path=".spec.target.bucket"),
        PrinterColumn(name="Keep-Local", json_path=".spec.retention.keepLocal", type="integer"),
        PrinterColumn(name="Keep-Remote", json_path=".spec.retention.keepRemoteLast", type="integer"),
        age_column(),
    ]

    spec: CheckpointPolicySpec
    status: CheckpointPolicyStatus = Field(default_factory=CheckpointPolicyStatus)


class CheckpointPhase(StrEnum):
    COMMITTED = "Committed"
    UPLOADING = "Uploading"
    TIERED = "Tiered"
    FAILED = "Failed"


class LocalCopy(CairnModel):
    node_name: str
    volume: str = Field(description="LocalVolume holding the checkpoint.")
    path: str = Field(description="Directory inside the volume.")
    present: bool = True
    pool: str | None = Field(
        default=None,
        description="Pool class of the volume holding the copy; memory for a tmpfs (unset: a disk pool).",
    )

    @property
    def in_memory(self) -> bool:
        return self.present and self.pool == MEMORY_POOL


class RemoteCopy(CairnModel):
    url: str
    verified_at: datetime | None = None


class CheckpointSpec(CairnModel):
    policy: str
    pvc_name: str
    node_name: str
    volume: str
    path: str = Field(description="Checkpoint directory, relative to the volume's root.")
    step: int
    size_bytes: int
    size: str = Field(description="Human-readable size, for the printer column.")
    file_count: int
    hash_algorithm: HashAlgorithm
    manifest_digest: str = Field(description="Digest over the manifest's sorted per-file entries.")


class CheckpointStatus(CairnModel):
    phase: CheckpointPhase = CheckpointPhase.COMMITTED
    reason: str | None = None
    message: str | None = None
    tiers: str = Field(default="local", description="Where copies exist, e.g. memory,local,peer,s3.")
    local: LocalCopy | None = None
    disk: LocalCopy | None = Field(
        default=None,
        description=(
            "The copy on the recording node's tier store, made from a memory volume's copy; its path "
            "is relative to the agent's state directory."
        ),
    )
    peer: LocalCopy | None = None
    remote: RemoteCopy | None = None
    bytes_uploaded: int = 0
    conditions: list[Condition] = Field(default_factory=list)

    def restorable_tiers(self) -> str:
        """The TIERS column: where a restorable copy exists, fastest first."""
        tiers = []
        if self.local is not None and self.local.in_memory:
            tiers.append(Tier.MEMORY.value)
        on_disk = self.disk is not None and self.disk.present
        if on_disk or (self.local is not None and self.local.present and not self.local.in_memory):
            tiers.append(Tier.LOCAL.value)
        if self.peer is not None and self.peer.present:
            tiers.append("peer")
        if self.remote is not None and self.remote.verified_at is not None:
            tiers.append("s3")
        return ",".join(tiers)


class Checkpoint(Resource):
    KIND: ClassVar[str] = "Checkpoint"
    PLURAL: ClassVar[str] = "checkpoints"
    SHORT_NAMES: ClassVar[list[str]] = ["ckpt"]
    NAMESPACED: ClassVar[bool] = True
    DESCRIPTION: ClassVar[str] = "One committed training checkpoint and where its verified copies are."
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="PVC", json_path=".spec.pvcName"),
        PrinterColumn(name="Step", json_path=".spec.step", type="integer"),
        PrinterColumn(name="Size", json_path=".spec.size"),
        PrinterColumn(name="Node", json_path=".spec.nodeName"),
        PrinterColumn(name="Phase", json_path=".status.phase"),
        PrinterColumn(name="Tiers", json_path=".status.tiers"),
        age_column(),
    ]

    spec: CheckpointSpec
    status: CheckpointStatus = Field(default_factory=CheckpointStatus)
