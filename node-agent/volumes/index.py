"""The agent's in-memory index of its node's volumes, and why a volume could not be filled.

The reconciler writes the index as it carves, activates and removes LVs; the CSI Node service,
datasets, the checkpoint watcher and the StorageNode publisher read it. It lives apart from all of
them, so each can be built before the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cairn.api.names import pool_vg
from cairn.api.volume import LocalVolumeSpec, PoolClass, VolumeAccess


@dataclass(frozen=True)
class StagedVolume:
    """What the node service needs to know about one of its node's volumes."""

    name: str
    device: str
    access: VolumeAccess
    fs_type: str | None
    pool: str
    read_only: bool = False
    """Staged and published read-only whatever the CO asks: a Dataset's copy is shared, verified data."""

    @property
    def directory(self) -> bool:
        """A memory volume: `device` is the directory of its tmpfs, bound where a disk is mounted."""
        return self.pool == PoolClass.MEMORY.value


class PopulateError(Exception):
    """A volume cannot be filled from its source; `reason` goes on the claim's Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class VolumeIndex:
    """The volumes this agent has carved or activated since it started, by LocalVolume name.

    NodeStage and NodePublish find their device here without asking LVM, so their cost stays flat
    however many volumes the node carries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._volumes: dict[str, StagedVolume] = {}
        self._specs: dict[str, LocalVolumeSpec] = {}

    def lookup(self, volume_id: str) -> StagedVolume | None:
        with self._lock:
            return self._volumes.get(volume_id)

    def spec_of(self, volume_id: str) -> LocalVolumeSpec | None:
        with self._lock:
            return self._specs.get(volume_id)

    def volume_count(self, vg: str) -> int:
        with self._lock:
            return sum(1 for volume in self._volumes.values() if pool_vg(volume.pool) == vg)

    def remember(self, name: str, volume: StagedVolume, spec: LocalVolumeSpec) -> None:
        with self._lock:
            self._specs[name] = spec
            self._volumes[name] = volume

    def forget(self, name: str) -> None:
        with self._lock:
            self._specs.pop(name, None)
            self._volumes.pop(name, None)
