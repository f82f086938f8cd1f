"""Memory volumes that are filling up: a gauge for each, and a Warning Event when one gets full.

The pool itself can never take more than its reservation (each tmpfs has a size limit), so a full
volume means new writes fail with ENOSPC while the node stays healthy. That happens when a job
writes checkpoints faster than they drain to slower tiers, or keeps more than the volume holds;
the operator hears of it on the volume's claim before the job fails on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from cairn.api.names import GROUP_VERSION
from cairn.api.volume import LocalVolumeSpec
from cairn.events import EventRecorder
from cairn.node_agent import metrics
from cairn.node_agent.memory.pool import TmpfsPool
from cairn.node_agent.memory.reservations import is_full
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.memory")


class MemoryPressure:
    def __init__(
        self,
        node_name: str,
        pool: TmpfsPool,
        events: EventRecorder,
        spec_of: Callable[[str], LocalVolumeSpec | None],
    ) -> None:
        self.node_name = node_name
        self.pool = pool
        self.events = events
        self.spec_of = spec_of
        self._full: set[str] = set()
        self._labels: dict[str, tuple[str, str]] = {}

    def run_pass(self) -> None:
        volumes = set(self.pool.volumes())
        for gone in set(self._labels) - volumes:
            namespace, pvc = self._labels.pop(gone)
            metrics.MEMORY_VOLUME_USED.remove(self.node_name, gone, namespace, pvc)
            self._full.discard(gone)
        for volume in sorted(volumes):
            directory = self.pool.device_path(self.pool.vg, volume)
            if directory is None:
                continue
            usage = os.statvfs(directory)
            total = usage.f_blocks * usage.f_frsize
            available = usage.f_bavail * usage.f_frsize
            used = total - usage.f_bfree * usage.f_frsize
            spec = self.spec_of(volume)
            labels = (spec.pvc_namespace or "", spec.pvc_name or "") if spec else ("", "")
            self._labels[volume] = labels
            metrics.MEMORY_VOLUME_USED.labels(self.node_name, volume, *labels).set(
                used / total if total else 0
            )
            full = is_full(used, total, available)
            if full and volume not in self._full:
                self._warn(volume, spec, used, total)
            if full:
                self._full.add(volume)
            else:
                self._full.discard(volume)

    def _warn(self, volume: str, spec: LocalVolumeSpec | None, used: int, total: int) -> None:
        message = (
            f"memory volume {volume} on node {self.node_name} holds {human_bytes(used)} of "
            f"{human_bytes(total)}: new writes fail with ENOSPC. Its checkpoints drain to slower "
            "tiers more slowly than they are written, or retention keeps more than it holds; "
            "lower keepMemory, or size the claim for the checkpoints kept"
        )
        log.warning("%s", message)
        involved: list[dict[str, Any]] = [
            {"apiVersion": GROUP_VERSION, "kind": "LocalVolume", "name": volume}
        ]
        if spec is not None and spec.pvc_name and spec.pvc_namespace:
            involved.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "name": spec.pvc_name,
                    "namespace": spec.pvc_namespace,
                }
            )
        for target in involved:
            self.events.record(target, "MemoryVolumeFull", message, warning=True)
