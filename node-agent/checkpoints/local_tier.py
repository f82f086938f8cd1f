"""The memory drain: a memory volume's checkpoints get a verified copy on this node's disks.

With a policy's tiers [memory, local, ...], a checkpoint committed in a memory volume (a tmpfs)
is copied to the node's tier store (`<state>/tier-store/<namespace>/<name>`, an LV of the agent's
own, replica_store.TierStore) as soon as it is recorded. A tmpfs is gone with a reboot and its
pages are the host's memory, so this copy is what lets retention take the checkpoint out of
memory (retention.py), and what S3 is uploaded from once it has left. The upload does not wait for
it: both slower copies are made at once from memory, on the disk and the network apart.

The copy goes through the restore engine with the memory copy as its only source, so every byte
is verified against the manifest by construction; it lands in `<name>.partial` and is renamed
into place only once complete, so a copy cut short by a crash is never mistaken for one.

This is a loop of its own, separate from the tierer's serial S3 pass: an upload takes minutes,
and memory fills while it waits. It runs at background priority, as the tierer does: the trainer
writing its next checkpoint comes first.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cairn.api.checkpoint import Checkpoint, CheckpointPolicySpec, CheckpointStatus, LocalCopy, Tier
from cairn.api.names import NODE_LABEL
from cairn.events import EventRecorder
from cairn.kube import ResourceClient, Typed
from cairn.node_agent import metrics
from cairn.node_agent.checkpoints.local import disk_copy_directory, disk_copy_path, local_copy_directory
from cairn.node_agent.checkpoints.replica_store import AgentStore
from cairn.node_agent.checkpoints.restore.engine import LocalDirectorySource, RestoreError, restore
from cairn.node_agent.checkpoints.restore.plan import SourceKind
from cairn.node_agent.checkpoints.tiering import (
    PERMANENT_REASONS,
    awaits_local_copy,
    checkpoint_event_target,
    created_at,
)
from cairn.node_agent.host import mounts
from cairn.node_agent.host.files import fsync_directory
from cairn.node_agent.host.priority import run_in_background
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.memory-drain")
PARTIAL_SUFFIX = ".partial"
MAX_BACKOFF = 60.0
"""Short next to the tierer's: memory is what waits, and most failures here are a store not ready."""
COLLECT_EVERY = 30.0
"""Seconds between looks for copies no record names: passes come every second, leftovers are rare."""
COPIED = "CopiedToLocal"
COPY_FAILED = "TierCopyFailed"


# -- pure decisions --------------------------------------------------------------------------------


def wants_local_copy(checkpoint: Checkpoint, policy: CheckpointPolicySpec, node_name: str) -> bool:
    """This node recorded it in a memory volume, its policy copies memory to local, and no copy is
    made yet; a checkpoint whose files changed after the commit can never be copied verified."""
    local = checkpoint.status.local
    return (
        local is not None
        and local.node_name == node_name
        and awaits_local_copy(checkpoint, policy)
        and checkpoint.status.reason not in PERMANENT_REASONS
    )


def copy_lag_seconds(waiting_since: Iterable[datetime], now: datetime) -> float:
    """How long the oldest checkpoint still only in memory has waited; 0 when none waits."""
    since = list(waiting_since)
    return max(0.0, (now - min(since)).total_seconds()) if since else 0.0


# -- the worker -----------------------------------------------------------------------------------


@dataclass
class LocalTierCopier:
    node_name: str
    checkpoints: ResourceClient
    policies: ResourceClient
    path_of: Callable[[str], Path | None]
    """A volume's directory on this node: its staging mount, or a memory volume's own tmpfs."""
    root: Path
    """`<state>/tier-store`: one directory per namespace, one per checkpoint under it."""
    events: EventRecorder
    store: AgentStore | None = None
    """The LV mounted at `root` (replica_store.TierStore); without one (tests) `root` is a plain directory."""
    streams: int = 2
    """Files copied at once: enough to keep an NVMe busy, few enough to leave the trainer its cores."""
    on_copied: Callable[[], None] = lambda: None
    """Told after a pass that made copies: retention may now take them out of memory."""
    _retry_at: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _no_room: set[str] = field(default_factory=set)
    _next_collection: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run_pass(self) -> None:
        """One look at this node's memory checkpoints; the Coalescing runner calls it."""
        run_in_background()  # it hashes every byte it copies: the trainer comes first
        with self._lock:
            items = self.checkpoints.list(label_selector=f"{NODE_LABEL}={self.node_name}")
            policies: dict[tuple[str, str], CheckpointPolicySpec | None] = {}
            wanted: list[Typed] = []
            series: set[tuple[str, str]] = set()
            for item in items:
                namespace = item.metadata.get("namespace", "")
                key = (namespace, item.model.spec.policy)
                if key not in policies:
                    found = self.policies.get(key[1], namespace=namespace)
                    policies[key] = found.model.spec if found is not None else None
                policy = policies[key]
                if policy is None or not policy.copies_to_local:
                    continue
                series.add((namespace, item.model.spec.pvc_name))
                if wants_local_copy(item.model, policy, self.node_name):
                    wanted.append(item)
            copied: set[str] = set()
            if wanted and self._store_ready():
                # Oldest first: it has waited longest, and retention frees memory in step order.
                for item in sorted(wanted, key=created_at):
                    if self._due(item) and self._copy(item):
                        copied.add(self._key(item))
            if copied:
                self.on_copied()
            waiting: dict[tuple[str, str], list[datetime]] = {key: [] for key in series}
            for item in wanted:
                if self._key(item) not in copied:
                    waiting[(item.metadata.get("namespace", ""), item.model.spec.pvc_name)].append(
                        created_at(item)
                    )
            self._collect_garbage()
            now = datetime.now(UTC)
            for (namespace, pvc), since in waiting.items():
                metrics.CHECKPOINT_TIER_LAG.labels(
                    node=self.node_name, namespace=namespace, pvc=pvc, tier=Tier.LOCAL.value
                ).set(copy_lag_seconds(since, now))

    def _collect_garbage(self) -> None:
        """Removes copies no record names (the Checkpoint was deleted, or says the copy is gone),
        and copies cut short; retention removes the rest itself."""
        if time.monotonic() < self._next_collection:
            return
        self._next_collection = time.monotonic() + COLLECT_EVERY
        if not self.root.is_dir() or (self.store is not None and not mounts.is_mount_point(str(self.root))):
            return  # an unmounted store's mount point is not where copies are
        for namespace_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()):
            for directory in sorted(p for p in namespace_dir.iterdir() if p.is_dir()):
                name = directory.name.removesuffix(PARTIAL_SUFFIX)
                if directory.name == name:
                    item = self.checkpoints.get(name, namespace=namespace_dir.name)
                    expected = disk_copy_path(self.root, namespace_dir.name, name)
                    if (
                        item is not None
                        and disk_copy_directory(item.model, self.node_name, self.root) == expected
                    ):
                        continue
                shutil.rmtree(directory, ignore_errors=True)  # under this pass's lock no copy is in flight
                log.info("tier store: removed %s, which no Checkpoint names", directory)

    def _store_ready(self) -> bool:
        if self.store is None:
            return True
        return self.store.ready() is None  # ready() logs why not, once

    def _due(self, item: Typed) -> bool:
        return time.monotonic() >= self._retry_at.get(self._key(item), 0.0)

    @staticmethod
    def _key(item: Typed) -> str:
        return f"{item.metadata.get('namespace')}/{item.name}"

    def _copy(self, item: Typed) -> bool:
        """Makes the local-tier copy; True once status names it."""
        namespace, name = item.metadata.get("namespace", ""), item.name
        checkpoint: Checkpoint = item.model
        source = local_copy_directory(checkpoint, self.node_name, self.path_of)
        if source is None:
            log.debug("checkpoint %s/%s: its memory volume is not reachable here now", namespace, name)
            return False
        final = disk_copy_path(self.root, namespace, name)
        partial = final.with_name(name + PARTIAL_SUFFIX)
        final.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)  # a copy cut short by a restart; start it over
        if final.exists():
            shutil.rmtree(final)  # on disk but not in status: its record was lost, so it is not trusted
        if self.store is not None and (short := self.store.lacks_room_for(checkpoint.spec.size_bytes)):
            if self._key(item) not in self._no_room:
                self._no_room.add(self._key(item))
                self._fail(item, "TierStoreFull", f"not copied to this node's disks: {short}")
            else:
                self._backoff(item)
            return False
        self._no_room.discard(self._key(item))
        started = time.monotonic()
        try:
            report = restore(
                checkpoint.spec.manifest_digest,
                [LocalDirectorySource(source, SourceKind.MEMORY, "memory")],
                partial,
                hash_threads=1,
                streams=self.streams,
            )
        except (RestoreError, OSError) as error:
            shutil.rmtree(partial, ignore_errors=True)
            self._fail(item, COPY_FAILED, f"copy from memory to this node's disks failed: {error}")
            return False
        os.replace(partial, final)
        fsync_directory(final.parent)
        seconds = time.monotonic() - started
        current = self.checkpoints.get(name, namespace=namespace)
        if current is None:
            shutil.rmtree(final)  # deleted while it was copied
            return False
        status = current.model.status.model_copy(deep=True)
        status.disk = LocalCopy(
            node_name=self.node_name,
            volume="",
            path=str(final.relative_to(self.root.parent)),
            pool=self.store.pool if self.store is not None else None,
        )
        self.checkpoints.patch_status(
            name, CheckpointStatus(disk=status.disk, tiers=status.restorable_tiers()), namespace=namespace
        )
        self._retry_at.pop(self._key(item), None)
        self._failures.pop(self._key(item), None)
        metrics.CHECKPOINT_BYTES.labels(node=self.node_name, operation="tier-copy", tier="local").inc(
            report.total_bytes
        )
        message = (
            f"{human_bytes(report.total_bytes)} in {report.files} files copied from memory to "
            f"{status.disk.path} on {self.node_name} in {seconds:.1f}s, every file verified"
        )
        self.events.record(checkpoint_event_target(item), COPIED, message)
        log.info("checkpoint %s/%s: %s", namespace, name, message)
        return True

    def _backoff(self, item: Typed) -> float:
        key = self._key(item)
        self._failures[key] += 1
        delay = min(MAX_BACKOFF, 1.0 * 2 ** (self._failures[key] - 1))
        self._retry_at[key] = time.monotonic() + delay
        return delay

    def _fail(self, item: Typed, reason: str, message: str) -> None:
        # Status keeps phase and reason for the S3 tier; a failed copy is told as an Event and retried.
        delay = self._backoff(item)
        message = f"{message} (attempt {self._failures[self._key(item)]}; next in {delay:.0f}s)"
        self.events.record(checkpoint_event_target(item), reason, message, warning=True)
        log.warning("checkpoint %s: %s: %s", self._key(item), reason, message)
