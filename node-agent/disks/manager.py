"""Keeps LocalDisk objects true to the node's disks, and claims the eligible ones into pools.

One scan: probe every disk, decide class, identity and safety (pure functions), then make
the LocalDisks say so. Disks that are gone become Missing, including those that vanished
while the agent was down, because every scan compares against the objects, not memory.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from cairn.api.base import condition
from cairn.api.disk import DiskState, LocalDisk, LocalDiskSpec, LocalDiskStatus
from cairn.api.names import CLASS_LABEL, GROUP_VERSION, NODE_LABEL, OPT_OUT_LABEL, WIPE_ANNOTATION, pool_vg
from cairn.api.volume import PoolClass
from cairn.events import EventRecorder
from cairn.kube import ResourceClient, Typed
from cairn.node_agent import metrics
from cairn.node_agent.disks.facts import DiskFacts
from cairn.node_agent.disks.identity import DiskIdentity, disk_identity, localdisk_name, resolve_duplicates
from cairn.node_agent.disks.plan import DiskPolicy, PlannedDisk, disk_status, outcome, plan_disk
from cairn.node_agent.disks.probe import device_nodes, disks_in_scope, probe_disks, signatures
from cairn.node_agent.disks.safety import wipe_allowed
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.lvm.errors import LvmError, VgNotFound

log = logging.getLogger("cairn.node.disks")


@dataclass
class ScanResult:
    disks: dict[str, LocalDiskStatus] = field(default_factory=dict)
    """LocalDisk name -> status written."""


class DiskManager:
    def __init__(
        self,
        node_name: str,
        lvm: Lvm,
        disks: ResourceClient,
        events: EventRecorder,
        policy: DiskPolicy,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_name = node_name
        self.lvm = lvm
        self.disks = disks
        self.events = events
        self.policy = policy
        self.on_change = on_change
        self._lock = threading.Lock()

    # -- one scan ----------------------------------------------------------------------------

    def scan(self) -> ScanResult:
        with self._lock:
            # lvm may look at this node's disks only: never at another node's (the test bed shares
            # one kernel) and never at anything else on the host.
            disks = disks_in_scope(self.policy.scope)
            self.lvm.set_devices(device_nodes(disks))
            facts = probe_disks(self.policy.scope, self._pv_lookup, disks)
            existing = {d.name: d for d in self.disks.list(label_selector=f"{NODE_LABEL}={self.node_name}")}
            result = self._reconcile(facts, existing)
        self.on_change()
        return result

    def _pv_lookup(self, device: str) -> tuple[str | None, bool]:
        try:
            pv = self.lvm.get_pv(device)
            if not pv.vg:
                return None, False
            return pv.vg, self.lvm.get_vg(pv.vg).owned_by_cairn
        except LvmError:
            return None, False

    def _reconcile(self, facts: list[DiskFacts], existing: dict[str, Typed]) -> ScanResult:
        result = ScanResult()
        identities = {f.name: disk_identity(f) for f in facts}
        unique = resolve_duplicates(identities)
        planned: list[PlannedDisk] = []
        for disk in facts:
            identity = identities[disk.name]
            disk_id, duplicated = unique[disk.name]
            current = existing.get(localdisk_name(self.node_name, disk_id))
            labels = (current.metadata.get("labels") or {}) if current else {}
            annotations = (current.metadata.get("annotations") or {}) if current else {}
            if WIPE_ANNOTATION in annotations and current is not None:
                disk = self._maybe_wipe(disk, identity, current, annotations[WIPE_ANNOTATION])
            opted_out = labels.get(OPT_OUT_LABEL) == "true"
            planned.append(
                plan_disk(
                    disk, identity, disk_id, duplicated, self.node_name, self.policy, opted_out=opted_out
                )
            )

        claimed = self._claim([p for p in planned if p.claim])
        for disk_plan in planned:
            ended = outcome(disk_plan, disk_plan.facts.device in claimed)
            current = existing.get(disk_plan.name)
            conditions = self._conditions(current, disk_plan.duplicated, ended.message, ended.state)
            status = disk_status(disk_plan, ended, conditions)
            self._write(
                disk_plan.name,
                disk_plan.disk_id,
                disk_plan.disk_class,
                status,
                current,
                ended.reason,
                ended.message,
            )
            result.disks[disk_plan.name] = status
            metrics.record_disk(
                self.node_name,
                disk_plan.name,
                disk_plan.disk_class.value,
                disk_plan.facts.size_bytes,
                ended.state,
            )

        for name, gone in existing.items():
            if name in result.disks:
                continue
            if gone.model.status.state != DiskState.MISSING:
                last = gone.model.status.device or "its device"
                # The kernel hands the device name to the next disk, so it is no longer this disk's.
                self.disks.patch_status(
                    name, LocalDiskStatus(state=DiskState.MISSING, reason="NotPresent", device=None)
                )
                self._event(
                    gone,
                    "DiskMissing",
                    f"disk {gone.model.spec.disk_id} (last seen as {last}) "
                    f"is no longer present on node {self.node_name}",
                    warning=True,
                )
            cls = gone.model.status.disk_class.value if gone.model.status.disk_class else "unknown"
            metrics.record_disk(
                self.node_name, name, cls, gone.model.status.capacity_bytes or 0, DiskState.MISSING
            )
        return result

    # -- steps -------------------------------------------------------------------------------

    def _claim(self, to_claim: list[PlannedDisk]) -> set[str]:
        """pvcreate and add to the class's VG; returns the devices that joined a pool."""
        claimed: set[str] = set()
        by_pool: dict[PoolClass, list[DiskFacts]] = {}
        for planned in to_claim:
            by_pool.setdefault(planned.disk_class, []).append(planned.facts)
        for pool, disks in by_pool.items():
            vg = pool_vg(pool.value)
            for disk in disks:
                # Look again right before writing: the disk may have changed since the probe.
                if signatures(disk.device):
                    log.warning("not claiming %s: it gained a signature since it was probed", disk.device)
                    continue
                try:
                    self.lvm.pvcreate(disk.device)
                    try:
                        self.lvm.get_vg(vg)
                        self.lvm.vgextend(vg, [disk.device])
                    except VgNotFound:
                        self.lvm.vgcreate(vg, [disk.device])
                except LvmError as error:
                    log.error("claiming %s into %s failed: %s", disk.device, vg, error)
                    continue
                log.info("claimed %s into pool %s (VG %s)", disk.device, pool.value, vg)
                claimed.add(disk.device)
        return claimed

    def _maybe_wipe(self, disk: DiskFacts, identity: DiskIdentity, current: Typed, value: str) -> DiskFacts:
        allowed, why = wipe_allowed(disk, value, identity)
        if not allowed:
            self._event(current, "WipeRefused", why, warning=True)
            self.disks.patch_metadata(current.name, {"annotations": {WIPE_ANNOTATION: None}})
            return disk
        self._event(
            current,
            "Wiping",
            f"wiping all signatures from {disk.device} "
            f"({', '.join(disk.signatures) or 'none'}) as annotation {WIPE_ANNOTATION} asked",
        )
        result = subprocess.run(["wipefs", "--all", disk.device], capture_output=True, text=True, timeout=120)
        self.disks.patch_metadata(current.name, {"annotations": {WIPE_ANNOTATION: None}})
        if result.returncode != 0:
            self._event(current, "WipeFailed", result.stderr.strip(), warning=True)
            return disk
        self._event(current, "Wiped", f"{disk.device} carries no signatures now")
        return _with_signatures(disk, signatures(disk.device))

    def _conditions(
        self, current: Typed | None, duplicated: bool, message: str, state: DiskState
    ) -> list[dict[str, Any]]:
        previous = current.model.status.conditions if current else []
        usable_reason = "Claimed" if state == DiskState.CLAIMED else state.value
        conditions = [
            condition(
                "Usable", state in (DiskState.AVAILABLE, DiskState.CLAIMED), usable_reason, message, previous
            )
        ]
        if duplicated:
            conditions.append(
                condition(
                    "DuplicateIdentity",
                    True,
                    "SharedSerial",
                    "another disk on this node reports the same identity; told apart by its path",
                    previous,
                )
            )
        return conditions

    def _write(
        self,
        name: str,
        disk_id: str,
        disk_class: PoolClass,
        status: LocalDiskStatus,
        current: Typed | None,
        reason: str | None,
        message: str,
    ) -> None:
        if current is None:
            try:
                current = self.disks.create(
                    name,
                    LocalDisk(spec=LocalDiskSpec(node_name=self.node_name, disk_id=disk_id)),
                    labels={NODE_LABEL: self.node_name, CLASS_LABEL: disk_class.value},
                )
            except ApiException as error:
                if error.status != 409:
                    raise
                current = self.disks.get(name)
            previous_state, previous_reason = None, None
        else:
            previous_state, previous_reason = current.model.status.state, current.model.status.reason
        state = status.state.value if status.state else ""
        if previous_state is None or previous_state != status.state or previous_reason != reason:
            self._event(current, f"Disk{state}", message, warning=status.state == DiskState.UNAVAILABLE)
        self.disks.patch_status(name, status)

    def _event(self, disk: Typed | None, reason: str, message: str, *, warning: bool = False) -> None:
        if disk is None:
            return
        self.events.record(
            {
                "apiVersion": GROUP_VERSION,
                "kind": "LocalDisk",
                "name": disk.name,
                "uid": disk.metadata.get("uid"),
            },
            reason,
            message,
            warning=warning,
        )


def _with_signatures(disk: DiskFacts, found: tuple[str, ...]) -> DiskFacts:
    from dataclasses import replace

    return replace(disk, signatures=found, lvm_vg=None, lvm_vg_is_cairns=False)
