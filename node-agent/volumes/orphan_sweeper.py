"""The periodic pass that reports Cairn's unclaimed LVs and removes one only with proof.

The proof, checked in this order just before an lvremove, all of it at that moment:
  1. the LV has stayed unclaimed, unused and tagged with its own name for the whole grace period
     on this agent's monotonic clock (orphans.py; an agent restart starts the period over);
  2. a GET of the LocalVolume of that name, which the apiserver answers from etcd (a quorum read,
     not a cache), says there is no such object: it never existed or was deleted, and the agent
     never lets a LocalVolume's finalizer go before its LV is removed;
  3. the device is not mounted, open or held, checked again with an exclusive open.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cairn.api.base import Condition, condition
from cairn.api.names import AGENT_STORE_TAGS, GROUP_VERSION, NODE_LABEL, pool_vg
from cairn.api.volume import PoolClass
from cairn.events import EventRecorder
from cairn.kube import ResourceClient
from cairn.node_agent import metrics
from cairn.node_agent.host.mounts import why_device_in_use
from cairn.node_agent.lvm.errors import LvmError, LvNotFound, VgNotFound
from cairn.node_agent.lvm.report import LvInfo
from cairn.node_agent.volumes.orphans import Orphan, OrphanState, OrphanWatch

log = logging.getLogger("cairn.node.orphans")
ORPHAN_CONDITION = "OrphanVolumes"
DEFAULT_ORPHAN_GRACE_SECONDS = 900.0


class OrphanLvm(Protocol):
    def list_lvs(self, vg: str) -> list[LvInfo]: ...
    def lvremove(self, vg: str, lv: str) -> None: ...
    def device_path(self, vg: str, lv: str) -> str | None: ...


def lv_in_use(lvm: OrphanLvm, lv: LvInfo) -> str | None:
    """Open (lvm's own view, device-mapper only), or its device mounted or held; else None."""
    if len(lv.attr) > 5 and lv.attr[5] == "o":
        return f"{lv.vg}/{lv.name} is open"
    try:
        device = lvm.device_path(lv.vg, lv.name)
    except LvmError as error:  # what cannot be inspected is treated as used
        return f"{lv.vg}/{lv.name} cannot be inspected: {error}"
    return why_device_in_use(device) if device else None


class OrphanSweeper:
    def __init__(
        self,
        node_name: str,
        lvm: OrphanLvm,
        volumes: ResourceClient,
        events: EventRecorder,
        pools: Sequence[PoolClass],
        *,
        grace_seconds: float = DEFAULT_ORPHAN_GRACE_SECONDS,
        on_change: Callable[[], None] = lambda: None,
        storage_node_uid: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_name = node_name
        self.lvm = lvm
        self.volumes = volumes
        self.events = events
        self.pools = list(pools)
        self.watch = OrphanWatch(grace_seconds)
        self.on_change = on_change
        """Republishes the StorageNode, whose OrphanVolumes condition follows `current`."""
        self.storage_node_uid = storage_node_uid
        self.clock = clock
        self.current: list[Orphan] = []
        self._lock = threading.Lock()

    def run_pass(self) -> list[Orphan]:
        with self._lock:
            lvs = self._owned_lvs()
            # Listed after the LVs, never before (orphans.OrphanWatch.judge says why).
            claimed = {v.name for v in self.volumes.list(label_selector=f"{NODE_LABEL}={self.node_name}")}
            claimed |= {lv.name for lv in lvs if AGENT_STORE_TAGS & set(lv.tags)}  # the agent's own
            orphans = self.watch.judge(lvs, claimed, lambda lv: lv_in_use(self.lvm, lv), self.clock())
            kept = [o for o in orphans if not (o.state == OrphanState.REMOVABLE and self._remove(o))]
            self._report(kept)
            return kept

    def _owned_lvs(self) -> list[LvInfo]:
        lvs: list[LvInfo] = []
        for pool in self.pools:
            try:
                lvs += self.lvm.list_lvs(pool_vg(pool.value))
            except VgNotFound:
                continue
        return lvs

    def _remove(self, orphan: Orphan) -> bool:
        """Remove the LV if the proof holds at this moment; False (kept) otherwise."""
        if self.volumes.get(orphan.name) is not None:
            return False  # its LocalVolume exists after all: claimed, on this node or another
        if (held := self._held(orphan)) is not None:
            log.info("orphan %s not removed: %s", orphan.where, held)
            return False
        try:
            self.lvm.lvremove(orphan.vg, orphan.name)
        except LvNotFound:
            pass
        except LvmError as error:
            log.warning("could not remove orphan %s: %s", orphan.where, error)
            return False
        message = (
            f"removed orphan LV {orphan.where}: no LocalVolume {orphan.name} exists (checked against "
            f"etcd), and it was unclaimed and unused for {orphan.unclaimed_seconds:.0f}s"
        )
        log.warning(message)
        metrics.ORPHANS_REMOVED.labels(self.node_name).inc()
        self._event("OrphanRemoved", message, warning=False)
        return True

    def _held(self, orphan: Orphan) -> str | None:
        try:
            [lv] = [lv for lv in self.lvm.list_lvs(orphan.vg) if lv.uuid == orphan.uuid]
        except ValueError:
            return "it is gone or was made again"
        return lv_in_use(self.lvm, lv)

    def _report(self, orphans: list[Orphan]) -> None:
        before = {(o.uuid, o.state) for o in self.current}
        for orphan in orphans:
            if (orphan.uuid, orphan.state) not in before:
                described = orphan.describe(self.watch.grace_seconds)
                self._event(f"Orphan{orphan.state.value}", described, warning=True)
        for state in OrphanState:
            metrics.ORPHANS.labels(self.node_name, state.value).set(sum(o.state == state for o in orphans))
        changed = before != {(o.uuid, o.state) for o in orphans}
        self.current = orphans
        if changed:
            self.on_change()

    def conditions(self, previous: Sequence[Condition]) -> list[dict[str, Any]]:
        """The StorageNode's OrphanVolumes condition, for the publisher."""
        orphans = self.current
        return [
            condition(
                ORPHAN_CONDITION,
                bool(orphans),
                "UnclaimedVolumes" if orphans else "NoneFound",
                "; ".join(o.describe(self.watch.grace_seconds) for o in orphans)
                or "every Cairn LV on this node belongs to a LocalVolume",
                list(previous),
            )
        ]

    def _event(self, reason: str, message: str, *, warning: bool) -> None:
        self.events.record(
            {
                "apiVersion": GROUP_VERSION,
                "kind": "StorageNode",
                "name": self.node_name,
                "uid": self.storage_node_uid(),
            },
            reason,
            message,
            warning=warning,
        )
