"""Carves, extends and removes the LocalVolumes assigned to this node.

The controller only writes LocalVolume specs; this reconciler is the one place that turns
them into LVs. LVM work on a VG is serialised by the LVM adapter, so two volumes created at
once can never over-commit a pool. A finalizer keeps each LocalVolume until its LV is gone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from cairn.api.names import NODE_LABEL, VOLUME_FINALIZER, pool_vg
from cairn.api.volume import LocalVolumeSpec, LocalVolumeStatus, VolumeAccess, VolumePhase
from cairn.background import backoff_seconds
from cairn.fault_injection import crash_point
from cairn.informer import CachedResources
from cairn.kube import ResourceClient, Typed
from cairn.node_agent.host.device_copy import CopyError, copy_device
from cairn.node_agent.lvm.errors import (
    InsufficientSpace,
    LvAlreadyExists,
    LvmError,
    LvNotFound,
    NotContiguous,
    VgNotFound,
)
from cairn.node_agent.lvm.report import LvInfo, volume_tag
from cairn.node_agent.volumes.index import PopulateError, StagedVolume, VolumeIndex
from cairn.node_agent.volumes.steps import VolumeAction, VolumeEvent, volume_actions

log = logging.getLogger("cairn.node.volumes")


def serves_read_only(spec: LocalVolumeSpec) -> bool:
    """A volume filled from a Dataset is mounted read-only: consumers get the verified data as it is.

    A Checkpoint restore is a training job's own state to resume and write on, so it stays writable.
    """
    return spec.populate_from is not None and spec.populate_from.kind == "Dataset"


def foreign_source(spec: LocalVolumeSpec) -> str | None:
    """Why a volume may not be filled from its populateFrom: the source is not its claim's namespace's.

    The controller already refuses such requests; the agent, which holds the credentials the
    restore would use, checks again rather than trust a LocalVolume spec it did not write.
    """
    source = spec.populate_from
    if source is None or source.namespace == spec.pvc_namespace:
        return None
    return (
        f"{source.kind} {source.namespace}/{source.name} is not in namespace "
        f"{spec.pvc_namespace or '(none)'} of the claim this volume is for; refused"
    )


class VolumeLvm(Protocol):
    """What the reconciler asks of LVM (the adapter in lvm/, or a small fake in unit tests)."""

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo: ...
    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo: ...
    def lvremove(self, vg: str, lv: str) -> None: ...
    def get_lv(self, vg: str, lv: str) -> LvInfo: ...
    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str: ...
    def device_path(self, vg: str, lv: str) -> str | None: ...


DRAINING = "Draining"


class VolumeReconciler:
    def __init__(
        self,
        node_name: str,
        lvm: VolumeLvm,
        volumes: ResourceClient,
        index: VolumeIndex,
        *,
        on_change: Callable[[], None] = lambda: None,
        publish_now: Callable[[], None] = lambda: None,
        before_remove: Callable[[str], None] = lambda name: None,
        populate: Callable[[str, LocalVolumeSpec, str], str] | None = None,
        removal_blocker: Callable[[Typed], str | None] = lambda item: None,
        held_still: Callable[[StagedVolume], AbstractContextManager[str]] = lambda source: (
            contextlib.nullcontext("not checked")
        ),
    ) -> None:
        self.node_name = node_name
        self.lvm = lvm
        self.volumes = volumes
        self.index = index
        self.on_change = on_change
        self.publish_now = publish_now
        """Reports freed space at once: DeleteVolume returns when the finalizer goes."""
        self.before_remove = before_remove
        """Lets go of a volume the agent itself uses (a dataset copy's mount) before its LV goes."""
        self.populate = populate
        """Fills a new volume (name, spec, device) from spec.populateFrom; raises PopulateError."""
        self.removal_blocker = removal_blocker
        """Why a deleted volume must wait (its checkpoints are still draining to S3), or None."""
        self.held_still = held_still
        """Keeps a clone's source from changing during the copy (quiesce.py), or refuses."""
        self._filling: set[str] = set()
        self._filling_lock = threading.Lock()
        self._volume_locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, int] = {}

    # -- what the node service asks --------------------------------------------------------

    def lookup(self, volume_id: str) -> StagedVolume | None:
        return self.index.lookup(volume_id)

    def health(self, volume_id: str) -> str | None:
        """Why the volume is unhealthy, or None: the LV must exist and be active."""
        volume = self.lookup(volume_id)
        if volume is None:
            return f"volume {volume_id} is not known on node {self.node_name}"
        vg = pool_vg_of_device(volume)
        try:
            self.lvm.get_lv(vg, volume.name)
        except LvmError as error:
            return f"logical volume {vg}/{volume.name} is gone: {error}"
        if self.lvm.device_path(vg, volume.name) is None:
            return f"logical volume {vg}/{volume.name} is not active"
        return None

    # -- reconcile ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Every event on this node's LocalVolumes, one at a time, from the shared cache when there is one."""
        if isinstance(self.volumes, CachedResources):
            self.volumes.cache.add_handler(self.handle)
            stop.wait()
            return
        self.volumes.informer(self.handle, label_selector=f"{NODE_LABEL}={self.node_name}", stop=stop.is_set)

    def handle(self, event: str, item: Typed) -> None:
        lock = self._volume_locks.setdefault(item.name, threading.Lock())
        with lock:
            try:
                self._reconcile(event, item)
            except Exception:
                attempt = self._failures[item.name] = self._failures.get(item.name, 0) + 1
                delay = backoff_seconds(attempt)
                log.exception("reconciling volume %s failed; again in %.0fs", item.name, delay)
                if event != "DELETED":
                    self._later(delay, self._requeue, item.name)
            else:
                self._failures.pop(item.name, None)

    def _requeue(self, name: str) -> None:
        """Reconcile a volume again from its current object: a failure is retried, not forgotten
        until an unrelated change happens to bring another event."""
        try:
            current = self.volumes.get(name)
        except Exception as error:
            attempt = self._failures[name] = self._failures.get(name, 0) + 1
            log.warning("volume %s could not be read to retry (%s)", name, error)
            self._later(backoff_seconds(attempt), self._requeue, name)
            return
        if current is None:
            self._failures.pop(name, None)
            return
        self.handle("MODIFIED", current)

    @staticmethod
    def _later(delay: float, action: Callable[..., None], *args: object) -> None:
        timer = threading.Timer(delay, action, args=args)
        timer.daemon = True
        timer.start()

    def _reconcile(self, event: str, item: Typed) -> None:
        spec: LocalVolumeSpec = item.model.spec
        status = item.model.status
        vg = pool_vg(spec.pool.value)
        actions = volume_actions(
            VolumeEvent(
                kind=event,
                on_this_node=spec.node_name == self.node_name,
                deleting=bool(item.metadata.get("deletionTimestamp")),
                phase=status.phase,
                indexed=self.lookup(item.name) is not None,
                size_bytes=spec.size_bytes,
                capacity_bytes=status.capacity_bytes or 0,
            )
        )
        for action in actions:
            match action:
                case VolumeAction.FORGET:
                    self._forget(item.name)
                case VolumeAction.REMOVE:
                    self._remove(item, vg)
                case VolumeAction.CREATE:
                    self._create(item, vg)
                case VolumeAction.ACTIVATE:
                    self._remember(item.name, self.lvm.activate(vg, item.name), spec)
                case VolumeAction.EXTEND:
                    self._extend(item, vg)

    def _create(self, item: Typed, vg: str) -> None:
        spec: LocalVolumeSpec = item.model.spec
        with self._filling_lock:
            if item.name in self._filling:
                return  # carved already; its fill runs in its own thread
        self._add_finalizer(item)
        try:
            try:
                info = self.lvm.lvcreate(vg, item.name, spec.size_bytes, tags=[volume_tag(item.name)])
            except LvAlreadyExists:
                recreated = self._recreate(item, vg)
                if recreated is None:
                    return
                info = recreated
            device = self.lvm.activate(vg, item.name, info)
            crash_point("agent.create.lv-carved")
        except (InsufficientSpace, NotContiguous) as error:
            self._fail(item, type(error).__name__, str(error))
            return
        except VgNotFound:
            self._fail(
                item,
                "PoolNotFound",
                f"node {self.node_name} has no {spec.pool.value} pool (volume group {vg})",
            )
            return
        if not (spec.source_volume or spec.populate_from):
            self._ready(item, vg, info, device)
            return
        # A copy can take minutes (a dataset may even have to arrive first): not on the informer's
        # thread, which must stay free to carve other volumes, including the one being waited for.
        with self._filling_lock:
            self._filling.add(item.name)
        threading.Thread(
            target=self._fill_then_ready, args=(item, vg, info, device), name=f"fill-{item.name}", daemon=True
        ).start()

    def _fill_then_ready(self, item: Typed, vg: str, info: LvInfo, device: str) -> None:
        spec: LocalVolumeSpec = item.model.spec
        try:
            if spec.source_volume and not self._clone_into(item, vg, device):
                return
            if spec.populate_from and not self._populate_into(item, vg, device):
                return
            self._ready(item, vg, info, device)
        except Exception:
            attempt = self._failures[item.name] = self._failures.get(item.name, 0) + 1
            delay = backoff_seconds(attempt)
            log.exception("filling volume %s failed; filled again in %.0fs", item.name, delay)
            self._later(delay, self._requeue, item.name)
        finally:
            with self._filling_lock:
                self._filling.discard(item.name)

    def _ready(self, item: Typed, vg: str, info: LvInfo, device: str) -> None:
        self._remember(item.name, device, item.model.spec)
        status = LocalVolumeStatus(
            phase=VolumePhase.READY,
            volume_group=vg,
            logical_volume=item.name,
            capacity_bytes=info.size_bytes,
            reason=None,
            message=None,
        )
        log.info("volume %s carved: %s/%s %d bytes on %s", item.name, vg, item.name, info.size_bytes, device)
        self._report_ready(item.name, status, attempt=0)

    def _report_ready(self, name: str, status: LocalVolumeStatus, attempt: int) -> None:
        """Patch Ready, and keep trying until it lands or the volume is no longer waiting for it.

        The volume is indexed by now, so no later event would carve or report it again: a patch
        that failed once and was only logged left it Pending for ever, and its CreateVolume with it.
        """
        try:
            if attempt:
                current = self.volumes.get(name)
                if current is None or current.metadata.get("deletionTimestamp"):
                    return
                if current.model.status.phase != VolumePhase.PENDING:
                    return
            self.volumes.patch_status(name, status)
        except Exception as error:
            delay = backoff_seconds(attempt + 1)
            log.warning("volume %s: Ready could not be reported (%s); again in %.0fs", name, error, delay)
            self._later(delay, self._report_ready, name, status, attempt + 1)
            return
        log.info("volume %s ready%s", name, f" after {attempt} retries" if attempt else "")
        self.on_change()

    def _recreate(self, item: Typed, vg: str) -> LvInfo | None:
        """An LV for a still-Pending volume: a crash came between lvcreate and the status patch.

        It was never handed to anyone, but it may not have been wiped yet, so it is made again
        from scratch; only after its tag proves it is this volume's own.
        """
        current = self.volumes.get(item.name)
        if current is None or current.model.status.phase != VolumePhase.PENDING:
            raise RuntimeError(f"volume {item.name} changed while being created; skipping a stale event")
        existing = self.lvm.get_lv(vg, item.name)
        if existing.volume_id != item.name:
            self._fail(
                item,
                "NameConflict",
                f"an LV named {vg}/{item.name} exists but is not tagged as this volume's; left untouched",
            )
            return None
        self.lvm.lvremove(vg, item.name)
        return self.lvm.lvcreate(vg, item.name, item.model.spec.size_bytes, tags=[volume_tag(item.name)])

    def _clone_into(self, item: Typed, vg: str, device: str) -> bool:
        """Copy the source volume's bytes; False (and the volume Failed) when that is impossible."""
        source = self.lookup(item.model.spec.source_volume or "")
        problem: tuple[str, str] | None = None
        if source is None:
            problem = (
                "CloneSourceMissing",
                f"clone source {item.model.spec.source_volume} is not on node {self.node_name}",
            )
        else:
            try:
                with self.held_still(source) as how:
                    copy_device(source.device, device)
                log.info("volume %s cloned from %s (source %s)", item.name, source.name, how)
            except CopyError as error:
                problem = ("CloneFailed", str(error))
            except PopulateError as error:
                problem = (error.reason, str(error))
        if problem is None:
            return True
        # The new LV was never handed out and is tagged as this volume's: remove it before the
        # finalizer goes, or a deleted Failed volume would leave an orphaned LV behind.
        self.lvm.lvremove(vg, item.name)
        self._fail(item, *problem)
        return False

    def _populate_into(self, item: Typed, vg: str, device: str) -> bool:
        """Restore the requested data; False (and the volume Failed, its LV removed) when that fails."""
        try:
            refusal = foreign_source(item.model.spec)
            if refusal is not None:
                raise PopulateError("CrossNamespaceSource", refusal)
            if self.populate is None:
                raise PopulateError(
                    "PopulateUnsupported", f"the agent on {self.node_name} cannot populate volumes"
                )
            done = self.populate(item.name, item.model.spec, device)
        except PopulateError as error:
            problem = (error.reason, str(error))
        except Exception as error:  # a failed restore must not leave a half-filled volume Ready
            log.warning("populating %s failed", item.name, exc_info=True)
            problem = ("PopulateFailed", f"{type(error).__name__}: {error}")
        else:
            log.info("volume %s populated: %s", item.name, done)
            return True
        # As with a failed clone: the LV was never handed out, so it goes before the finalizer does.
        self.lvm.lvremove(vg, item.name)
        self._fail(item, *problem)
        return False

    def _extend(self, item: Typed, vg: str) -> None:
        spec: LocalVolumeSpec = item.model.spec
        try:
            info = self.lvm.lvextend(vg, item.name, spec.size_bytes)
        except (InsufficientSpace, NotContiguous) as error:
            self.volumes.patch_status(item.name, LocalVolumeStatus(expansion_error=str(error)))
            return
        self.volumes.patch_status(
            item.name, LocalVolumeStatus(capacity_bytes=info.size_bytes, expansion_error=None)
        )
        log.info("volume %s extended to %d bytes", item.name, info.size_bytes)
        self.on_change()

    def _remove(self, item: Typed, vg: str) -> None:
        if VOLUME_FINALIZER not in item.metadata.get("finalizers", []):
            return
        waiting = self.removal_blocker(item)
        if waiting is not None:
            # The finalizer stays, so DeleteVolume waits; the drainer calls again when it may go.
            if item.model.status.message != waiting:
                self.volumes.patch_status(item.name, LocalVolumeStatus(reason=DRAINING, message=waiting))
            return
        self.before_remove(item.name)
        # Already gone is fine: a retry after a crash, or a create that never happened.
        with contextlib.suppress(LvNotFound, VgNotFound):
            self.lvm.lvremove(vg, item.name)
        crash_point("agent.delete.lv-removed")
        self._forget(item.name)
        # Report the freed space before letting go: DeleteVolume returns when the finalizer is gone,
        # and a CreateVolume right after it must not be refused on a stale free-space figure.
        try:
            self.publish_now()
        except Exception:  # the periodic publish corrects it soon; the LV is gone either way
            log.warning("could not publish freed space after removing %s", item.name, exc_info=True)
        remaining = [f for f in item.metadata.get("finalizers", []) if f != VOLUME_FINALIZER]
        self.volumes.patch_metadata(
            item.name, {"finalizers": remaining or None}, resource_version=item.resource_version
        )
        log.info("volume %s removed", item.name)
        self.on_change()

    def _add_finalizer(self, item: Typed) -> None:
        finalizers = item.metadata.get("finalizers", [])
        if VOLUME_FINALIZER not in finalizers:
            self.volumes.patch_metadata(
                item.name,
                {"finalizers": [*finalizers, VOLUME_FINALIZER]},
                resource_version=item.resource_version,
            )

    def _fail(self, item: Typed, reason: str, message: str) -> None:
        log.warning("volume %s failed: %s", item.name, message)
        self.volumes.patch_status(
            item.name, LocalVolumeStatus(phase=VolumePhase.FAILED, reason=reason, message=message)
        )
        # Nothing is on disk, so the finalizer has nothing left to guard.
        current = self.volumes.get(item.name)
        if current is not None:
            remaining = [f for f in current.metadata.get("finalizers", []) if f != VOLUME_FINALIZER]
            self.volumes.patch_metadata(item.name, {"finalizers": remaining or None})

    def _remember(self, name: str, device: str, spec: LocalVolumeSpec) -> None:
        volume = StagedVolume(
            name=name,
            device=device,
            access=VolumeAccess(spec.access),
            fs_type=spec.fs_type,
            pool=spec.pool.value,
            read_only=serves_read_only(spec),
        )
        self.index.remember(name, volume, spec)

    def _forget(self, name: str) -> None:
        self.index.forget(name)


def pool_vg_of_device(volume: StagedVolume) -> str:
    return pool_vg(volume.pool)
