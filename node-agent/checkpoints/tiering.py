"""The node agent's background tiering: upload each recorded checkpoint, verify it, apply retention.

One pass lists the Checkpoints this node recorded (label cairn.dev/node), oldest step first, and
uploads those not yet Tiered, one at a time: the parts of one checkpoint already go out
concurrently, and one checkpoint at a time gets the oldest one safe soonest. The trainer never
waits for any of it; detection runs in its own thread.

Phases: Committed (recorded, local only) → Uploading → Tiered once every object is verified
against the manifest. Failed carries a reason. A failure that can clear by itself (S3 unreachable,
a Secret not there yet, a verification that did not pass) is retried with backoff; a checkpoint
whose files changed after it was committed is never uploaded, because no copy of it can be trusted.

With tiers [memory, local, s3], a memory volume's checkpoint is copied to this node's tier store
by the memory drain (local_tier.py, a loop of its own, so an upload of minutes never holds memory
full) while it is uploaded here: the upload reads from the memory copy while there is one, else
from the tier store's.

After each pass, retention runs per series (one PVC's volume): `plan_retention` decides, this
module deletes, and status always says what is left.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes.client.exceptions import ApiException

from cairn.api.base import condition
from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointPhase,
    CheckpointPolicySpec,
    CheckpointStatus,
    RemoteCopy,
    S3Target,
    Tier,
)
from cairn.api.names import GROUP_VERSION, NODE_LABEL
from cairn.events import EventRecorder
from cairn.kube import ResourceClient, Typed
from cairn.node_agent import metrics
from cairn.node_agent.checkpoints.local import disk_copy_directory, local_copy_directory
from cairn.node_agent.checkpoints.replica_store import TIER_STORE_DIR
from cairn.node_agent.checkpoints.replicas import assign_replicas
from cairn.node_agent.checkpoints.retention import CheckpointRecord, plan_retention
from cairn.node_agent.checkpoints.upload import (
    CheckpointUploader,
    RemoteConflictError,
    TransferError,
    UnsafeFileError,
    UploadError,
    checkpoint_location,
    state_path,
)
from cairn.node_agent.host.files import Directory, open_beneath, remove_tree_beneath
from cairn.node_agent.host.priority import run_in_background
from cairn.node_agent.manifests import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError
from cairn.s3 import CredentialsError, ReadSecret, S3Location, client_from_secret
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.tiering")
UPLOADED = "Uploaded"
PROGRESS_INTERVAL = 2.0
"""Seconds between bytesUploaded patches: often enough to watch, rare enough to spare the apiserver."""
MAX_BACKOFF = 300.0
UNSAFE_PATH = "UnsafeCheckpointPath"


class PermanentFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RetryableFailure(PermanentFailure):
    pass


# -- pure decisions --------------------------------------------------------------------------------

PERMANENT_REASONS = frozenset({"ChangedAfterCommit", "ManifestMismatch", "UnsafeFile", "RemoteCopyConflict"})
"""Failures no retry can fix: the files no longer match what was committed, or the remote location
already holds another copy that is not ours to overwrite."""


def awaits_local_copy(checkpoint: Checkpoint, policy: CheckpointPolicySpec) -> bool:
    """A memory volume's checkpoint whose policy copies it to this node's disks, not copied yet."""
    status = checkpoint.status
    return (
        policy.copies_to_local
        and status.local is not None
        and status.local.in_memory
        and (status.disk is None or not status.disk.present)
    )


def needs_upload(checkpoint: Checkpoint, policy: CheckpointPolicySpec) -> bool:
    if policy.target is None:
        return False  # local-only
    if checkpoint.status.remote is not None and checkpoint.status.remote.verified_at is not None:
        return False
    return checkpoint.status.reason not in PERMANENT_REASONS


def ready_to_upload(checkpoint: Checkpoint, policy: CheckpointPolicySpec) -> bool:
    """Needs an upload. A memory volume's checkpoint does not wait for its local copy: both slower
    copies are made at once, each from memory, so the drain takes as long as the slower of the
    two (the disk and the network are apart), not their sum. Memory is left once either holds it
    verified (retention.py)."""
    return needs_upload(checkpoint, policy)


def retention_record(checkpoint: Checkpoint, policy: CheckpointPolicySpec | None = None) -> CheckpointRecord:
    """The copies retention weighs. A memory volume's copy is a memory-tier copy only when the
    policy's tiers name memory; otherwise it is kept by keepLocal as any volume's copy is."""
    status = checkpoint.status
    memory = policy is not None and policy.memory_tier and status.local is not None and status.local.in_memory
    volume_copy = status.local is not None and status.local.present and not memory
    return CheckpointRecord(
        step=checkpoint.spec.step,
        has_local=volume_copy or (status.disk is not None and status.disk.present),
        remote_verified=status.remote is not None and status.remote.verified_at is not None,
        remote_present=status.remote is not None,
        has_memory=memory,
    )


def tier_lag_seconds(checkpoints: Iterable[tuple[Checkpoint, datetime]], now: datetime) -> float:
    """How long the oldest checkpoint not yet verified in S3 has waited; 0 when none waits."""
    waiting = [
        created
        for checkpoint, created in checkpoints
        if checkpoint.status.remote is None or checkpoint.status.remote.verified_at is None
    ]
    return max(0.0, (now - min(waiting)).total_seconds()) if waiting else 0.0


@dataclass(frozen=True, order=True)
class SeriesKey:
    """One series: one directory of one PVC's volume, where a step names one checkpoint.

    A job may write several streams into one volume (say `actor/step_100` and `critic/step_100`);
    each keeps its own newest copies.
    """

    namespace: str
    pvc: str
    volume: str
    directory: str


def group_series(items: Iterable[Typed]) -> dict[SeriesKey, list[Typed]]:
    series: dict[SeriesKey, list[Typed]] = defaultdict(list)
    for item in items:
        spec = item.model.spec
        key = SeriesKey(
            item.metadata.get("namespace", ""),
            spec.pvc_name,
            spec.volume,
            str(PurePosixPath(spec.path).parent),
        )
        series[key].append(item)
    return series


# -- the worker -----------------------------------------------------------------------------------


def checkpoint_event_target(item: Typed) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Checkpoint",
        "name": item.name,
        "namespace": item.metadata.get("namespace"),
        "uid": item.metadata.get("uid"),
    }


def created_at(item: Typed) -> datetime:
    stamp = item.metadata.get("creationTimestamp")
    if isinstance(stamp, datetime):
        return stamp
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return datetime.now(UTC)


@dataclass
class CheckpointTierer:
    node_name: str
    checkpoints: ResourceClient
    policies: ResourceClient
    read_secret: ReadSecret
    state_dir: Path
    staging_path_of: Callable[[str], Path | None]
    events: EventRecorder
    storage_nodes: ResourceClient | None = None
    """For choosing peer replica holders; without it no replicas are assigned."""
    tier_store_root: Path | None = None
    """Where the memory drain keeps local-tier copies; `<state>/tier-store` unless given."""
    _retry_at: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def upload_state_dir(self) -> Path:
        return self.state_dir / "uploads"

    @property
    def store_root(self) -> Path:
        return self.tier_store_root or self.state_dir / TIER_STORE_DIR

    def run_pass(self) -> None:
        """One look at everything this node recorded; the Coalescing runner calls it."""
        run_in_background()  # this thread reads and hashes what it uploads: the trainer comes first
        with self._lock:  # one pass at a time, however often it is triggered
            items = self.checkpoints.list(label_selector=f"{NODE_LABEL}={self.node_name}")
            nodes = [n.model for n in self.storage_nodes.list()] if self.storage_nodes else []
            remaining: dict[tuple[str, str], list[Typed]] = defaultdict(list)
            lag_tracked: set[tuple[str, str]] = set()
            for key, members in sorted(group_series(items).items()):
                members.sort(key=lambda i: i.model.spec.step)
                try:
                    left, tracked = self._pass_series(key, members, nodes)
                except Exception as error:  # one tenant's series must not hold back the others
                    log.warning("checkpoint series %s failed this pass", key, exc_info=True)
                    self.events.record(
                        checkpoint_event_target(members[-1]),
                        "SeriesFailed",
                        f"tiering and retention of this series stopped this pass: "
                        f"{type(error).__name__}: {error}; other series carry on, this one is retried",
                        warning=True,
                    )
                    continue
                remaining[(key.namespace, key.pvc)] += left
                if tracked:
                    lag_tracked.add((key.namespace, key.pvc))
            self._record_phases(self.checkpoints.list(label_selector=f"{NODE_LABEL}={self.node_name}"))
            now = datetime.now(UTC)
            for namespace, pvc in lag_tracked:
                series = [(item.model, created_at(item)) for item in remaining[(namespace, pvc)]]
                metrics.CHECKPOINT_TIER_LAG.labels(
                    node=self.node_name, namespace=namespace, pvc=pvc, tier=Tier.S3.value
                ).set(tier_lag_seconds(series, now))

    def _pass_series(
        self, key: SeriesKey, members: list[Typed], nodes: list[Any]
    ) -> tuple[list[Typed], bool]:
        """Uploads, retention and replicas for one series; what is left, and whether it tiers."""
        policy_object = self.policies.get(members[-1].model.spec.policy, namespace=key.namespace)
        if policy_object is None:
            return [], False  # the watcher logs it; nothing can be uploaded or expired without one
        policy: CheckpointPolicySpec = policy_object.model.spec
        for item in members:
            if ready_to_upload(item.model, policy) and self._due(item):
                self._tier(item, policy)
        left = self._apply_retention(key.namespace, members, policy)
        if nodes:
            assign_replicas(left, policy, nodes, self.node_name, self.checkpoints)
        return left, policy.target is not None

    # -- upload ---------------------------------------------------------------------------------

    def _due(self, item: Typed) -> bool:
        return time.monotonic() >= self._retry_at.get(self._key(item), 0.0)

    @staticmethod
    def _key(item: Typed) -> str:
        return f"{item.metadata.get('namespace')}/{item.name}"

    def _tier(self, item: Typed, policy: CheckpointPolicySpec) -> None:
        namespace = item.metadata.get("namespace", "")
        try:
            self._upload_and_verify(item, policy)
        except PermanentFailure as failure:
            retry = isinstance(failure, RetryableFailure)
            self._fail(item, failure.reason, str(failure), retry=retry)
        except Exception as error:  # S3 or network trouble: retry with backoff
            log.warning("tiering %s/%s failed", namespace, item.name, exc_info=True)
            self._fail(item, "UploadError", f"upload failed, will retry: {error}", retry=True)
        else:
            self._retry_at.pop(self._key(item), None)
            self._failures.pop(self._key(item), None)

    def _upload_and_verify(self, item: Typed, policy: CheckpointPolicySpec) -> None:
        namespace = item.metadata.get("namespace", "")
        checkpoint: Checkpoint = item.model
        target = policy.target
        assert target is not None
        # The memory copy is the fastest read; once retention let it go, the tier store's copy.
        directory: Directory | None = local_copy_directory(
            checkpoint, self.node_name, self.staging_path_of, probe=False
        ) or disk_copy_directory(checkpoint, self.node_name, self.store_root)
        if directory is None:
            # The volume is not staged here right now; it is picked up again once it is.
            log.debug("checkpoint %s/%s has no reachable local copy; skipped", namespace, item.name)
            return
        manifest = self._manifest(directory, checkpoint)
        try:
            s3 = _policy_client(
                self.read_secret, namespace, checkpoint.spec.policy, target, policy.upload.concurrency
            )
        except CredentialsError as error:
            raise RetryableFailure(error.reason, str(error)) from None
        location = remote_location(item, target)
        uploader = CheckpointUploader(
            s3,
            self.upload_state_dir,
            concurrency=policy.upload.concurrency,
            part_size=policy.upload.part_size_bytes,
            bandwidth_bytes_per_second=policy.upload.bandwidth_limit_bytes_per_second,
        )
        previous = checkpoint.status.conditions
        self.checkpoints.patch_status(
            item.name,
            CheckpointStatus(
                phase=CheckpointPhase.UPLOADING,
                reason=None,
                message=None,
                remote=RemoteCopy(url=location.url, verified_at=None),  # not verified until it is
                conditions=[
                    condition(UPLOADED, False, "Uploading", f"uploading to {location.url}", previous)
                ],
            ),
            namespace=namespace,
        )
        last_patch = [time.monotonic()]

        def progress(sent: int) -> None:
            if time.monotonic() - last_patch[0] >= PROGRESS_INTERVAL:
                last_patch[0] = time.monotonic()
                try:
                    self.checkpoints.patch_status(
                        item.name, CheckpointStatus(bytes_uploaded=sent), namespace=namespace
                    )
                except ApiException:
                    log.debug("progress patch for %s failed", item.name, exc_info=True)

        started = time.monotonic()
        try:
            report = uploader.upload(directory, manifest, location, on_progress=progress)
        except TransferError:
            raise  # S3 or the network: retried, resuming from the parts that arrived
        except RemoteConflictError as error:
            raise PermanentFailure("RemoteCopyConflict", str(error)) from None
        except UploadError as error:
            uploader.abandon(manifest, location)
            reason = "UnsafeFile" if isinstance(error, UnsafeFileError) else "ChangedAfterCommit"
            raise PermanentFailure(reason, str(error)) from None
        problems = uploader.verify(manifest, location)
        if problems:
            raise RetryableFailure(
                "RemoteVerificationFailed",
                f"{len(problems)} object(s) in {location.url} do not match the manifest: "
                + "; ".join(problems[:3]),
            )
        seconds = time.monotonic() - started
        metrics.CHECKPOINT_BYTES.labels(node=self.node_name, operation="upload", tier="s3").inc(
            report.bytes_sent
        )
        metrics.CHECKPOINT_UPLOAD_SECONDS.labels(node=self.node_name).observe(seconds)
        resumed = (
            f"; resumed an earlier attempt, keeping {report.parts_skipped} part(s) already in S3"
            if report.parts_skipped
            else ""
        )
        message = (
            f"{human_bytes(manifest.total_bytes)} in {len(manifest.files)} files verified at "
            f"{location.url}; sent {human_bytes(report.bytes_sent)} in {seconds:.1f}s{resumed}"
        )
        # Read again: the memory drain may have added the local copy while this uploaded, and the
        # TIERS column must not lose it.
        fresh = self.checkpoints.get(item.name, namespace=namespace)
        status = (fresh.model if fresh is not None else checkpoint).status.model_copy(deep=True)
        # Whole seconds, as Kubernetes writes its own timestamps.
        status.remote = RemoteCopy(url=location.url, verified_at=datetime.now(UTC).replace(microsecond=0))
        self.checkpoints.patch_status(
            item.name,
            CheckpointStatus(
                phase=CheckpointPhase.TIERED,
                reason=None,
                message=None,
                tiers=status.restorable_tiers(),
                remote=status.remote,
                bytes_uploaded=manifest.total_bytes,
                conditions=[condition(UPLOADED, True, "Verified", message, previous)],
            ),
            namespace=namespace,
        )
        state_path(self.upload_state_dir, location, manifest.digest).unlink(missing_ok=True)
        self.events.record(checkpoint_event_target(item), "Tiered", message)
        log.info("checkpoint %s/%s tiered: %s", namespace, item.name, message)

    def _manifest(self, directory: Directory, checkpoint: Checkpoint) -> Manifest:
        try:
            with open_beneath(directory, MANIFEST_NAME) as stream:
                manifest = Manifest.from_json(stream.read(MAX_MANIFEST_BYTES + 1))
        except FileNotFoundError:
            raise PermanentFailure(
                "ManifestMismatch", f"the checkpoint's manifest is gone from {checkpoint.spec.path}"
            ) from None
        except OSError as error:
            raise PermanentFailure(
                "UnsafeFile",
                f"the checkpoint's manifest cannot be reached without following a link "
                f"({error.strerror or error}); {checkpoint.spec.path} is not uploaded",
            ) from None
        except (ManifestError, ValueError) as error:
            raise PermanentFailure(
                "ManifestMismatch", f"the checkpoint's manifest is unreadable: {error}"
            ) from None
        if manifest.digest != checkpoint.spec.manifest_digest:
            raise PermanentFailure(
                "ManifestMismatch",
                f"the manifest beside the checkpoint has digest {manifest.digest}, but it was recorded "
                f"with {checkpoint.spec.manifest_digest}; the checkpoint changed after its commit",
            )
        return manifest

    def _fail(self, item: Typed, reason: str, message: str, *, retry: bool) -> None:
        key = self._key(item)
        if retry:
            self._failures[key] += 1
            delay = min(MAX_BACKOFF, 5.0 * 2 ** (self._failures[key] - 1))
            self._retry_at[key] = time.monotonic() + delay
            message = f"{message} (attempt {self._failures[key]}; next in {delay:.0f}s)"
        namespace = item.metadata.get("namespace", "")
        previous = item.model.status.conditions
        try:
            self.checkpoints.patch_status(
                item.name,
                CheckpointStatus(
                    phase=CheckpointPhase.FAILED,
                    reason=reason,
                    message=message,
                    conditions=[condition(UPLOADED, False, reason, message, previous)],
                ),
                namespace=namespace,
            )
        except ApiException:
            log.warning("could not record the failure of %s", key, exc_info=True)
        self.events.record(checkpoint_event_target(item), reason, message, warning=True)
        log.warning("checkpoint %s: %s: %s", key, reason, message)

    # -- retention ------------------------------------------------------------------------------

    def _apply_retention(
        self, namespace: str, members: list[Typed], policy: CheckpointPolicySpec
    ) -> list[Typed]:
        """Carries out the series' retention plan; returns the series as it stands afterwards."""
        # Re-read: the uploads above changed these objects.
        fresh = [self.checkpoints.get(m.name, namespace=namespace) for m in members]
        current = [item for item in fresh if item is not None]
        if not current:
            return []
        retention = policy.retention
        plan = plan_retention(
            (retention_record(item.model, policy) for item in current),
            retention.keep_local,
            retention.keep_remote_last,
            retention.keep_remote_every,
            local_only=policy.target is None,
            keep_memory=retention.keep_memory,
            memory_only=policy.memory_only,
        )
        by_step = {item.model.spec.step: item for item in current}
        for step in sorted(plan.delete_memory):
            self._delete_memory(by_step[step], namespace, policy)
        for step in sorted(plan.delete_local - plan.delete_memory):
            self._delete_local(by_step[step], namespace, policy)
        for step in sorted(plan.delete_remote):
            self._delete_remote(by_step[step], namespace, policy)
        if plan.delete_memory or plan.delete_local or plan.delete_remote:
            current = [
                item
                for item in (self.checkpoints.get(m.name, namespace=namespace) for m in current)
                if item is not None
            ]
        return current

    def _delete_memory(self, item: Typed, namespace: str, policy: CheckpointPolicySpec) -> None:
        """The memory tier's copy, which is the volume's own: a slower tier holds it, or nothing does
        by policy (tiers [memory])."""
        checkpoint: Checkpoint = item.model
        if not self._remove_volume_copy(item):
            return
        record = retention_record(checkpoint, policy)
        if not (record.has_local or record.remote_verified):
            self.checkpoints.delete(item.name, namespace=namespace)
            self.events.record(
                checkpoint_event_target(item), "Expired", f"memory copy {checkpoint.spec.path} deleted"
            )
            return
        kept = "this node's disks" if record.has_local else "S3"
        self._mark_gone(item, namespace, local=True)
        self.events.record(
            checkpoint_event_target(item),
            "MemoryCopyDeleted",
            f"memory copy deleted by retention; {kept} keeps {checkpoint.spec.path}",
        )

    def _delete_local(self, item: Typed, namespace: str, policy: CheckpointPolicySpec | None = None) -> None:
        """The local tier's copies: the tier store's copy of a memory volume's checkpoint, and the
        volume's own copy where that counts as local (a disk volume, or a policy without memory)."""
        checkpoint: Checkpoint = item.model
        record = retention_record(checkpoint, policy)
        volume_copy = (
            checkpoint.status.local is not None and checkpoint.status.local.present and not record.has_memory
        )
        disk = checkpoint.status.disk is not None and checkpoint.status.disk.present
        if volume_copy and not self._remove_volume_copy(item):
            return
        if disk and (directory := disk_copy_directory(checkpoint, self.node_name, self.store_root)):
            # The agent's own store: no tenant can have put a link there. What a racing cleanup left
            # is the memory drain's to collect.
            shutil.rmtree(directory, ignore_errors=True)
        if not (record.has_memory or record.remote_verified):
            # Local-only policy: this was the last copy, so the record goes with it.
            self.checkpoints.delete(item.name, namespace=namespace)
            self.events.record(
                checkpoint_event_target(item), "Expired", f"local copy {checkpoint.spec.path} deleted"
            )
            return
        self._mark_gone(item, namespace, local=volume_copy, disk=disk)
        self.events.record(
            checkpoint_event_target(item),
            "LocalCopyDeleted",
            f"local copy deleted by retention; S3 keeps {checkpoint.spec.path}",
        )

    def _remove_volume_copy(self, item: Typed) -> bool:
        """Deletes the copy in the tenant's volume, never leaving it; False when it was not done."""
        checkpoint: Checkpoint = item.model
        directory = local_copy_directory(checkpoint, self.node_name, self.staging_path_of, probe=False)
        if directory is None or checkpoint.status.reason == UNSAFE_PATH:
            return False  # not staged here (retention waits until it is), or refused once already
        try:
            remove_tree_beneath(directory)
        except OSError as error:
            # A directory on the way swapped for a link (or a file): nothing outside the volume is
            # touched, and this checkpoint, not the rest of its series, carries the failure.
            self._fail(
                item,
                UNSAFE_PATH,
                f"retention could not delete {checkpoint.spec.path} without following a link or "
                f"leaving the volume ({error.strerror or error}); left in place",
                retry=False,
            )
            return False
        return True

    def _mark_gone(self, item: Typed, namespace: str, *, local: bool = False, disk: bool = False) -> None:
        # Read again, so a copy another loop added meanwhile (a replica) stays in the TIERS column.
        fresh = self.checkpoints.get(item.name, namespace=namespace)
        status = (fresh.model if fresh is not None else item.model).status.model_copy(deep=True)
        fields: dict[str, Any] = {}
        if local and status.local is not None:
            status.local.present = False
            fields["local"] = status.local
        if disk and status.disk is not None:
            status.disk.present = False
            fields["disk"] = status.disk
        self.checkpoints.patch_status(
            item.name, CheckpointStatus(tiers=status.restorable_tiers(), **fields), namespace=namespace
        )

    def _delete_remote(self, item: Typed, namespace: str, policy: CheckpointPolicySpec) -> None:
        checkpoint: Checkpoint = item.model
        assert policy.target is not None and checkpoint.status.remote is not None
        location = S3Location.from_url(checkpoint.status.remote.url)
        s3 = _policy_client(
            self.read_secret, namespace, checkpoint.spec.policy, policy.target, policy.upload.concurrency
        )
        deleted, refused = delete_remote_copy(s3, location)
        if refused:
            # The record stays while any object does: it is what says the objects are there.
            self.events.record(
                checkpoint_event_target(item),
                "RemoteDeleteFailed",
                f"retention could not delete {len(refused)} object(s) of {location.url}, so the "
                f"Checkpoint is kept and the deletion retried: " + "; ".join(refused[:3]),
                warning=True,
            )
            return
        # The plan deletes a remote copy only once no copy on the node is left, so nothing remains.
        self.checkpoints.delete(item.name, namespace=namespace)
        self.events.record(
            checkpoint_event_target(item),
            "Expired",
            f"remote copy {location.url} deleted by retention ({deleted} objects)",
        )

    # -- metrics --------------------------------------------------------------------------------

    def _record_phases(self, items: list[Typed]) -> None:
        counts = {phase.value: 0 for phase in CheckpointPhase}
        for item in items:
            counts[item.model.status.phase.value] += 1
        for phase, count in counts.items():
            metrics.CHECKPOINTS.labels(node=self.node_name, phase=phase).set(count)


def remote_location(item: Typed, target: S3Target) -> S3Location:
    """Where this Checkpoint's copy goes: a location no other record shares (its uid is in it)."""
    checkpoint: Checkpoint = item.model
    return checkpoint_location(
        target.bucket,
        target.prefix,
        item.metadata.get("namespace", ""),
        checkpoint.spec.pvc_name,
        checkpoint.spec.path,
        item.metadata.get("uid", ""),
    )


def delete_remote_copy(s3: Any, location: S3Location) -> tuple[int, list[str]]:
    """Deletes every object under the copy's location, and unfinished uploads there.

    Returns how many objects went and, per key, what S3 refused (its per-key errors, and anything
    a fresh listing still finds). Only an empty list proves the copy is gone.
    """
    prefix = f"{location.prefix}/"

    def listed() -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
        return [entry["Key"] for page in pages for entry in page.get("Contents", [])]

    for upload in s3.list_multipart_uploads(Bucket=location.bucket, Prefix=prefix).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=location.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    keys = listed()
    refused: list[str] = []
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        response = s3.delete_objects(Bucket=location.bucket, Delete={"Objects": batch})
        refused += [
            f"{error.get('Key')}: {error.get('Code')} {error.get('Message', '')}".strip()
            for error in response.get("Errors", [])
        ]
    if not refused:
        refused = [f"{key}: still listed after its deletion" for key in listed()]
    return len(keys) - len(refused), refused


def _policy_client(
    read_secret: ReadSecret, namespace: str, policy: str, target: S3Target, concurrency: int
) -> Any:
    return client_from_secret(
        read_secret,
        namespace,
        target.endpoint,
        target.region,
        target.credentials_secret_ref,
        f"CheckpointPolicy {namespace}/{policy}",
        concurrency,
    )
