"""Holding a clone's source still while its bytes are copied.

A clone is a copy of the source LV's device. Copied while a pod writes through a mounted
filesystem, it would be a crash image missing whatever sat in the page cache. So a staged
filesystem volume is frozen (fsfreeze: flushed, writers blocked) for the copy and thawed after;
a block volume that is published is refused, as Cairn cannot make its writers pause.

A freeze outlives the agent that made it, and a frozen filesystem blocks its pod's writes, so
each freeze is recorded first and a restarted agent thaws what a killed one left frozen.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from cairn.api.volume import VolumeAccess
from cairn.node_agent.host import mounts
from cairn.node_agent.host.files import atomic_write
from cairn.node_agent.volumes.index import PopulateError, StagedVolume

log = logging.getLogger("cairn.node.volumes.quiesce")


class CloneSources:
    def __init__(self, state_dir: Path, staging_path_of: Callable[[str], Path | None]) -> None:
        self.records = state_dir / "frozen"
        self.staging_path_of = staging_path_of

    @contextlib.contextmanager
    def held_still(self, source: StagedVolume) -> Iterator[str]:
        """Yields how the source was held still, for the log and the volume's message."""
        if source.access == VolumeAccess.BLOCK:
            bound = mounts.device_bind_mounts(source.device)
            if bound:
                raise PopulateError(
                    "CloneSourceInUse",
                    f"block volume {source.name} is published at {', '.join(bound)}; a copy taken "
                    "while it is written would be torn, so clone it once its pod is gone",
                )
            yield "not published"
            return
        path = self.staging_path_of(source.name)
        if path is None or not mounts.is_mounted_from(str(path), source.device):
            yield "not mounted"
            return
        if source.read_only:
            yield "mounted read-only"
            return
        self.records.mkdir(parents=True, exist_ok=True)
        record = self.records / source.name
        atomic_write(record, str(path))
        mounts.freeze(str(path))
        try:
            yield f"frozen at {path} for the copy"
        finally:
            mounts.thaw(str(path))
            record.unlink(missing_ok=True)

    def thaw_leftovers(self) -> list[str]:
        """Thaw what an agent killed mid-copy left frozen; returns those volumes."""
        thawed = []
        for record in sorted(self.records.iterdir()) if self.records.is_dir() else []:
            path = record.read_text().strip()
            if mounts.is_mount_point(path):
                mounts.thaw(path)
                thawed.append(record.name)
            record.unlink(missing_ok=True)
        return thawed
