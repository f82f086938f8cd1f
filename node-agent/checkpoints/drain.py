"""Drain before release: a volume's committed checkpoints reach S3 even when the job is gone.

A job's last checkpoint is its most valuable, and it is written just before the pod goes: kubelet
unstages the volume seconds later, and the claim may be deleted at once. So when a volume whose
policy tiers to S3 is unstaged, the agent first takes its own private mount of the filesystem (a
bind mount of the staging path, under the agent's state directory) and keeps watching and tiering
through it. It lets go when every committed checkpoint is recorded and Tiered, when the volume is
staged again, or when the volume is deleted and the policy's `drainTimeoutSeconds` have passed
since (a Warning Event then names what was not tiered).

While the volume is deleted but not drained, the agent keeps its finalizer: DeleteVolume waits,
and an Event on the LocalVolume says what for.

A memory volume needs no mount of the agent's own (the agent holds its tmpfs whoever mounts it),
but it is the one copy lost with it: a deleted memory volume is released once each of its
checkpoints has a slower copy, on this node's disks (the memory drain's, status.disk) or verified
in S3, within the same `drainTimeoutSeconds`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cairn.api.checkpoint import MEMORY_POOL, CheckpointPolicySpec
from cairn.api.names import GROUP_VERSION, NODE_LABEL
from cairn.api.volume import LocalVolumeSpec
from cairn.events import EventRecorder
from cairn.kube import ResourceClient, Typed
from cairn.node_agent.checkpoints.tiering import PERMANENT_REASONS, needs_upload
from cairn.node_agent.host import mounts
from cairn.node_agent.host.files import atomic_write

log = logging.getLogger("cairn.node.drain")

# -- pure decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainFacts:
    looked_since_hold: bool
    """A poll of the volume began after the agent took its own mount: nothing committed is unseen."""
    settling: tuple[str, ...] = ()
    """Committed checkpoint directories not recorded yet (their settle time is running)."""
    untiered: tuple[str, ...] = ()
    """Recorded checkpoints of the volume that still need their S3 copy."""
    only_in_memory: tuple[str, ...] = ()
    """Recorded checkpoints of a memory volume with no slower copy yet (local tier or S3)."""


def waiting_for(facts: DrainFacts) -> list[str]:
    """What the drain still waits for, in words; empty once the volume may be let go."""
    left = []
    if not facts.looked_since_hold:
        left.append("a first look at the volume for committed checkpoints")
    left += [f"{path} to be recorded" for path in facts.settling]
    left += [f"{name} to be Tiered" for name in facts.untiered]
    left += [f"{name} to be copied out of memory" for name in facts.only_in_memory]
    return left


def drain_deadline(deletion: datetime | None, timeout_seconds: int) -> datetime | None:
    """When a deleted volume is released whatever is left; None while it is not being deleted."""
    return None if deletion is None else deletion + timedelta(seconds=timeout_seconds)


def untiered_checkpoints(
    items: Iterable[Typed], volume: str, policy: CheckpointPolicySpec
) -> tuple[str, ...]:
    """This volume's recorded checkpoints that still need an upload that can still succeed."""
    return tuple(
        sorted(
            f"{item.name} ({item.model.spec.path})"
            for item in items
            if item.model.spec.volume == volume and needs_upload(item.model, policy)
        )
    )


def keeps_slower_copies(policy: CheckpointPolicySpec) -> bool:
    """The policy puts a memory volume's checkpoints somewhere slower (the node's disks or S3)."""
    return policy.copies_to_local or policy.target is not None


def only_in_memory(items: Iterable[Typed], volume: str, policy: CheckpointPolicySpec) -> tuple[str, ...]:
    """This memory volume's recorded checkpoints whose memory copy is their only one, while the
    policy would give them a slower one that can still be made."""
    if not keeps_slower_copies(policy):
        return ()  # memory is the only tier: nothing to wait for
    waiting = []
    for item in items:
        checkpoint = item.model
        status = checkpoint.status
        if checkpoint.spec.volume != volume or status.local is None or not status.local.in_memory:
            continue
        on_disk = status.disk is not None and status.disk.present
        verified = status.remote is not None and status.remote.verified_at is not None
        if on_disk or verified or status.reason in PERMANENT_REASONS:
            continue
        if policy.copies_to_local or needs_upload(checkpoint, policy):
            waiting.append(f"{item.name} ({checkpoint.spec.path})")
    return tuple(sorted(waiting))


# -- the drainer -----------------------------------------------------------------------------------


@dataclass
class Held:
    volume: str
    private_path: Path
    held_at: float
    """Monotonic."""
    told: str = ""
    """The last "waiting for" message recorded as an Event, so each is told once."""


@dataclass
class Releasing:
    """A deleted memory volume waiting for its checkpoints to leave memory."""

    since: float
    """Monotonic: the first time its removal was asked for."""
    told: str = ""


@dataclass
class VolumeDrainer:
    node_name: str
    state_dir: Path
    checkpoints: ResourceClient
    policies: ResourceClient
    events: EventRecorder
    spec_of: Callable[[str], LocalVolumeSpec | None]
    pending: Callable[[str], tuple[float, list[str]] | None]
    """The watcher's (last poll began, committed but unrecorded paths) for a volume."""
    move_watch: Callable[[str, Path], None]
    """Points the checkpoint watcher, tierer and peer server at the agent's own mount."""
    forget: Callable[[str], None]
    """Stops watching the volume: it is gone from this node or no longer held."""
    on_drained: Callable[[str], None] = lambda volume: None
    """Called when a held volume may go: the reconciler finishes a deletion that waited."""
    _held: dict[str, Held] = field(default_factory=dict)
    _releasing: dict[str, Releasing] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def directory(self) -> Path:
        return self.state_dir / "draining"

    def _policy(self, volume: str) -> CheckpointPolicySpec | None:
        spec = self.spec_of(volume)
        if spec is None or not (spec.checkpoint_policy and spec.pvc_namespace):
            return None
        policy = self.policies.get(spec.checkpoint_policy, namespace=spec.pvc_namespace)
        return policy.model.spec if policy is not None else None

    # -- taking and letting go ---------------------------------------------------------------

    def hold(self, volume: str, staging_path: Path) -> bool:
        """Called as kubelet unstages the volume, before its staging mount goes. True when the agent
        now holds its own mount (the caller keeps the volume watched); False when there is nothing
        to drain (no policy tiers this volume to S3, or it is a memory volume)."""
        policy = self._policy(volume)
        if policy is None or policy.target is None or not mounts.is_mount_point(str(staging_path)):
            return False
        if self._memory_volume(volume):
            return False  # the agent holds the tmpfs itself; removal_blocker waits for its copies
        private = self.directory / volume
        private.mkdir(parents=True, exist_ok=True)
        if not mounts.is_mount_point(str(private)):
            mounts.bind_mount(str(staging_path), str(private))
        atomic_write(self.directory / f"{volume}.json", json.dumps({"volume": volume}))
        with self._lock:
            self._held[volume] = Held(volume, private, time.monotonic())
        self.move_watch(volume, private)
        log.info("volume %s unstaged; the agent holds %s until its checkpoints are tiered", volume, private)
        return True

    def recover(self) -> dict[str, Path]:
        """Held mounts from an earlier run that are still mounted (a restarted agent drains on)."""
        recovered: dict[str, Path] = {}
        for record in sorted(self.directory.glob("*.json")) if self.directory.exists() else []:
            volume = json.loads(record.read_text())["volume"]
            private = self.directory / volume
            if mounts.is_mount_point(str(private)):
                recovered[volume] = private
                with self._lock:
                    self._held[volume] = Held(volume, private, time.monotonic())
            else:
                record.unlink(missing_ok=True)
        return recovered

    def is_held(self, volume: str) -> bool:
        with self._lock:
            return volume in self._held

    def let_go(self, volume: str) -> None:
        """Unmounts the agent's own mount; the volume is staged again, drained, or being removed."""
        with self._lock:
            held = self._held.pop(volume, None)
        if held is None:
            return
        if mounts.is_mount_point(str(held.private_path)):
            mounts.unmount(str(held.private_path))
        (self.directory / f"{volume}.json").unlink(missing_ok=True)
        log.info("volume %s: the agent's own mount is released", volume)

    def restaged(self, volume: str) -> None:
        """kubelet staged the volume again: the watcher moves back to the staging path."""
        self.let_go(volume)

    # -- deciding ----------------------------------------------------------------------------

    def _memory_volume(self, volume: str) -> bool:
        spec = self.spec_of(volume)
        return spec is not None and spec.pool.value == MEMORY_POOL

    def facts(self, volume: str) -> DrainFacts:
        with self._lock:
            held = self._held.get(volume)
            releasing = self._releasing.get(volume)
        if held is None and releasing is not None:
            return self._memory_facts(volume, releasing)
        if held is None:
            return DrainFacts(looked_since_hold=True)
        policy = self._policy(volume)
        if policy is None or policy.target is None:
            return DrainFacts(looked_since_hold=True)  # nothing tiers it any more
        seen = self.pending(volume)
        polled_at, settling = seen if seen is not None else (0.0, [])
        items = self.checkpoints.list(label_selector=f"{NODE_LABEL}={self.node_name}")
        return DrainFacts(
            looked_since_hold=polled_at > held.held_at,
            settling=tuple(settling),
            untiered=untiered_checkpoints(items, volume, policy),
        )

    def _memory_facts(self, volume: str, releasing: Releasing) -> DrainFacts:
        policy = self._policy(volume)
        if policy is None:
            return DrainFacts(looked_since_hold=True)
        seen = self.pending(volume)
        # Not watched (never staged since the agent started): no commit will be seen, so none is awaited.
        polled_at, settling = seen if seen is not None else (releasing.since + 1.0, [])
        items = self.checkpoints.list(label_selector=f"{NODE_LABEL}={self.node_name}")
        return DrainFacts(
            looked_since_hold=polled_at > releasing.since,
            settling=tuple(settling) if keeps_slower_copies(policy) else (),
            only_in_memory=only_in_memory(items, volume, policy),
        )

    def removal_blocker(self, item: Typed) -> str | None:
        """Why the deleted volume `item` must keep its finalizer a while longer, or None.

        Past the deadline the volume is released and a Warning Event names what was not tiered.
        """
        volume = item.name
        if not self.is_held(volume):
            if not self._memory_volume(volume):
                return None
            with self._lock:
                self._releasing.setdefault(volume, Releasing(time.monotonic()))
        left = waiting_for(self.facts(volume))
        if not left:
            with self._lock:
                self._releasing.pop(volume, None)
            return None
        policy = self._policy(volume)
        timeout = policy.drain_timeout_seconds if policy is not None else 0
        deadline = drain_deadline(_deletion_time(item), timeout)
        if deadline is not None and datetime.now(UTC) >= deadline:
            with self._lock:
                released_memory = self._releasing.pop(volume, None) is not None
            where = "outside memory" if released_memory else "in S3"
            self.events.record(
                _involved(item),
                "DrainTimedOut",
                f"released after drainTimeoutSeconds={timeout} without: {'; '.join(left)}; "
                f"those checkpoints have no copy {where} and are lost with the volume",
                warning=True,
            )
            return None
        message = (
            f"deletion waits until {deadline:%H:%M:%S}Z at the latest for {'; '.join(left)}"
            if deadline is not None
            else f"held for {'; '.join(left)}"
        )
        self._tell(volume, item, message)
        return message

    def _tell(self, volume: str, item: Typed, message: str) -> None:
        with self._lock:
            waiting: Held | Releasing | None = self._held.get(volume) or self._releasing.get(volume)
            if waiting is None or waiting.told == message:
                return
            waiting.told = message
        self.events.record(_involved(item), "Draining", message)

    def run_pass(self) -> None:
        """Lets go of every held volume that is drained; wakes the reconciler for deleted ones."""
        with self._lock:
            volumes = list(self._held)
            releasing = [v for v in self._releasing if v not in self._held]
        for volume in releasing:
            try:
                left = waiting_for(self.facts(volume))
            except Exception:
                log.warning("judging the release of %s failed; retried next pass", volume, exc_info=True)
                continue
            if not left:
                self.on_drained(volume)  # the reconciler asks removal_blocker again, and removes it
        for volume in volumes:
            try:
                left = waiting_for(self.facts(volume))
            except Exception:
                log.warning("judging the drain of %s failed; retried next pass", volume, exc_info=True)
                continue
            # The reconciler judges deadlines and lets go of deleted volumes itself.
            self.on_drained(volume)
            if not left and self.is_held(volume):
                self.forget(volume)
                self.let_go(volume)


def _deletion_time(item: Typed) -> datetime | None:
    stamp = item.metadata.get("deletionTimestamp")
    if isinstance(stamp, datetime):
        return stamp
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return None


def _involved(item: Typed) -> dict[str, Any]:
    uid = item.metadata.get("uid")
    return {"apiVersion": GROUP_VERSION, "kind": "LocalVolume", "name": item.name, "uid": uid}
