"""Notices committed checkpoints on this node's staged volumes and records each as a Checkpoint.

Polling, not inotify: a checkpoint is a deep tree written by many ranks at once, inotify needs a
watch per directory and drops events when its queue overflows, and commit detection needs a
quiet period anyway. Polling every few seconds with already-recorded checkpoints skipped costs
one directory listing per new checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes.client.exceptions import ApiException

from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointPhase,
    CheckpointPolicySpec,
    CheckpointSpec,
    CheckpointStatus,
    LocalCopy,
)
from cairn.api.checkpoint import (
    CommitRule as RuleName,
)
from cairn.api.names import NODE_LABEL, POLICY_LABEL, PVC_LABEL
from cairn.api.volume import LocalVolumeSpec
from cairn.kube import ResourceClient
from cairn.node_agent.checkpoints.commit import CandidateCheckpoint, CommitRule, CommitTracker, snapshot_tree
from cairn.node_agent.host.files import TenantDirectory, atomic_write_beneath
from cairn.node_agent.host.priority import run_in_background
from cairn.node_agent.manifests import MANIFEST_NAME, build_manifest
from cairn.paths import safe_relative_path
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.checkpoints")


def commit_rules(policy: CheckpointPolicySpec) -> list[CommitRule]:
    by_name = {
        RuleName.DCP: CommitRule.dcp(),
        RuleName.MARKER: CommitRule.marker_file(policy.commit.marker_name),
        RuleName.ORBAX: CommitRule.orbax(),
    }
    return [by_name[rule] for rule in policy.commit.rules]


def checkpoint_name(pvc: str, step: int, volume: str, path: str) -> str:
    """Deterministic, so a restarted agent finds the object it made instead of making another."""
    suffix = hashlib.sha256(f"{volume}/{path}".encode()).hexdigest()[:8]
    return f"{pvc}-{step}-{suffix}"[:253]


@dataclass
class WatchedVolume:
    volume: str
    staging_path: Path
    tracker: CommitTracker | None = None
    policy_version: str = ""
    polled_at: float = 0.0
    """Monotonic time the last poll that completed began: a drain trusts only a look taken after it."""
    recording: set[str] = field(default_factory=set)
    """Settled checkpoints whose record is being written: waiting still, for a drain, until it exists."""
    looked_early_for: float | None = None
    """The settle moment an early look was last taken for: one early look per moment, so a
    checkpoint that is still not ready then (an in-progress name left in it) waits for the round."""

    def early_look_due(self) -> float | None:
        due = self.tracker.next_ready_at() if self.tracker else None
        return None if due is None or due == self.looked_early_for else due


@dataclass
class CheckpointWatcher:
    node_name: str
    policies: ResourceClient
    checkpoints: ResourceClient
    spec_of: Callable[[str], LocalVolumeSpec | None]
    """The volume's LocalVolume spec; None until the reconciler has listed it (just after a restart)."""
    period: float = 2.0
    on_recorded: Callable[[str, str], None] = lambda namespace, name: None
    """Called with each newly recorded Checkpoint's namespace and name: the tiering queue."""
    _volumes: dict[str, WatchedVolume] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, volume: str, staging_path: str) -> None:
        """Called after NodeStage; only volumes whose class names a policy are looked at.

        Registering a volume again moves it (to the agent's own mount while it drains, and back
        when it is staged again); what was already reported stays reported.
        """
        with self._lock:
            watched = self._volumes.setdefault(volume, WatchedVolume(volume, Path(staging_path)))
            watched.staging_path = Path(staging_path)

    def pending(self, volume: str) -> tuple[float, list[str]] | None:
        """When the last completed look at the volume began, and the committed checkpoints it found
        that are not recorded yet (settling); None if the volume is not watched."""
        with self._lock:
            watched = self._volumes.get(volume)
            if watched is None:
                return None
            waiting = [w.candidate.path for w in watched.tracker.waiting()] if watched.tracker else []
            return watched.polled_at, sorted({*waiting, *watched.recording})

    def staging_path_of(self, volume: str) -> Path | None:
        with self._lock:
            watched = self._volumes.get(volume)
        return watched.staging_path if watched else None

    def unregister(self, volume: str) -> None:
        with self._lock:
            self._volumes.pop(volume, None)

    def run(self, stop: threading.Event) -> None:
        run_in_background()  # hashing a new checkpoint must not slow the job writing the next one
        next_round = time.monotonic() + self.period
        while not stop.wait(max(0.0, self._next_look(next_round) - time.monotonic())):
            now = time.monotonic()
            every_volume = now >= next_round
            if every_volume:
                next_round = now + self.period
            with self._lock:
                watched = list(self._volumes.values())
            for volume in watched:
                # Between rounds, only a volume whose checkpoint is due to settle is looked at again.
                due = volume.early_look_due()
                if not every_volume:
                    if due is None or due > now:
                        continue
                    volume.looked_early_for = due
                try:
                    self.poll(volume)
                except Exception:  # one volume's trouble must not stop the others being watched
                    log.warning("watching %s for checkpoints failed", volume.volume, exc_info=True)

    def _next_look(self, next_round: float) -> float:
        """The next round, or sooner the moment a settling checkpoint would have settled: so a
        checkpoint is recorded `settle_seconds` after it was first seen committed, not up to a
        period after that."""
        with self._lock:
            watched = list(self._volumes.values())
        return min([next_round, *(due for volume in watched if (due := volume.early_look_due()) is not None)])

    def poll(self, volume: WatchedVolume, now: float | None = None) -> list[CandidateCheckpoint]:
        started = time.monotonic()
        ready = self._poll(volume, now)
        volume.polled_at = started
        return ready

    def _poll(self, volume: WatchedVolume, now: float | None) -> list[CandidateCheckpoint]:
        spec = self.spec_of(volume.volume)
        if spec is None or not (spec.checkpoint_policy and spec.pvc_name and spec.pvc_namespace):
            return []
        policy = self.policies.get(spec.checkpoint_policy or "", namespace=spec.pvc_namespace)
        if policy is None:
            log.warning(
                "volume %s names CheckpointPolicy %s/%s, which does not exist",
                volume.volume,
                spec.pvc_namespace,
                spec.checkpoint_policy,
            )
            return []
        policy_spec: CheckpointPolicySpec = policy.model.spec
        if volume.tracker is None or volume.policy_version != policy.resource_version:
            volume.tracker = CommitTracker(
                commit_rules(policy_spec),
                policy_spec.commit.step_pattern,
                policy_spec.commit.settle_seconds,
                reported=volume.tracker.reported if volume.tracker else (),
            )
            volume.policy_version = policy.resource_version
        snapshot = snapshot_tree(volume.staging_path, skip=volume.tracker.reported)
        # Settled and not yet recorded, a checkpoint is in neither the tracker's waiting list nor the
        # Checkpoints: both steps under the lock `pending` takes, so a drain always sees it in one.
        with self._lock:
            ready = volume.tracker.observe(snapshot, time.monotonic() if now is None else now)
            volume.recording.update(c.path for c in ready)
        recorded = 0
        try:
            for candidate in ready:
                self._record(volume, spec, policy_spec, candidate)
                recorded += 1
                with self._lock:
                    volume.recording.discard(candidate.path)
        except Exception:
            # Offered again once they settle anew: a failed write (the API, a full disk) must not
            # leave committed checkpoints unrecorded for as long as their directories live.
            with self._lock:
                for candidate in ready[recorded:]:
                    volume.tracker.retry(candidate.path)
            raise
        finally:
            with self._lock:
                volume.recording.difference_update(c.path for c in ready)
        return ready

    def _record(
        self,
        volume: WatchedVolume,
        spec: LocalVolumeSpec,
        policy: CheckpointPolicySpec,
        candidate: CandidateCheckpoint,
    ) -> None:
        assert spec.pvc_name and spec.pvc_namespace and spec.checkpoint_policy
        name = checkpoint_name(spec.pvc_name, candidate.step, volume.volume, candidate.path)
        if self.checkpoints.get(name, namespace=spec.pvc_namespace) is not None:
            return  # recorded before a restart
        directory = TenantDirectory(volume.staging_path, safe_relative_path(candidate.path))
        manifest = build_manifest(directory, policy.hash_algorithm)
        atomic_write_beneath(directory, MANIFEST_NAME, manifest.to_json())
        checkpoint = Checkpoint(
            spec=CheckpointSpec(
                policy=spec.checkpoint_policy,
                pvc_name=spec.pvc_name,
                node_name=self.node_name,
                volume=volume.volume,
                path=candidate.path,
                step=candidate.step,
                size_bytes=manifest.total_bytes,
                size=human_bytes(manifest.total_bytes),
                file_count=len(manifest.files),
                hash_algorithm=policy.hash_algorithm,
                manifest_digest=manifest.digest,
            )
        )
        labels = {PVC_LABEL: spec.pvc_name, POLICY_LABEL: spec.checkpoint_policy, NODE_LABEL: self.node_name}
        try:
            # No ownerReference to the PVC on purpose: deleting a claim must not delete remote copies.
            self.checkpoints.create(name, checkpoint, labels=labels, namespace=spec.pvc_namespace)
        except ApiException as error:
            if error.status != 409:
                raise
            return
        local = LocalCopy(
            node_name=self.node_name, volume=volume.volume, path=candidate.path, pool=spec.pool.value
        )
        status = CheckpointStatus(phase=CheckpointPhase.COMMITTED, local=local)
        self.checkpoints.patch_status(
            name,
            CheckpointStatus(phase=status.phase, tiers=status.restorable_tiers(), local=local),
            namespace=spec.pvc_namespace,
        )
        self.on_recorded(spec.pvc_namespace, name)
        log.info(
            "checkpoint %s/%s recorded: step %d, %s in %d files",
            spec.pvc_namespace,
            name,
            candidate.step,
            human_bytes(manifest.total_bytes),
            len(manifest.files),
        )
