"""Which volumes this node has staged, and where, kept on disk across agent restarts.

kubelet stages a volume once; it does not stage it again because the agent restarted. The
mounts outlive the agent, so without this record a restarted agent would stop watching those
volumes for checkpoints and could not serve or tier their copies.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from cairn.node_agent.host.files import atomic_write
from cairn.node_agent.host.mounts import is_mount_point


class StagedVolumes:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "staged"
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}

    def add(self, volume: str, staging_path: str) -> None:
        with self._lock:
            self._paths[volume] = Path(staging_path)
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.directory / f"{volume}.json", json.dumps({"volume": volume, "stagingPath": staging_path})
            )

    def remove(self, volume: str) -> None:
        with self._lock:
            self._paths.pop(volume, None)
            (self.directory / f"{volume}.json").unlink(missing_ok=True)

    def path_of(self, volume: str) -> Path | None:
        with self._lock:
            return self._paths.get(volume)

    def recover(self) -> dict[str, Path]:
        """Records from an earlier run whose staging path is still mounted; stale ones are dropped."""
        recovered: dict[str, Path] = {}
        for record in sorted(self.directory.glob("*.json")) if self.directory.exists() else []:
            entry = json.loads(record.read_text())
            path = Path(entry["stagingPath"])
            if is_mount_point(str(path)):
                recovered[entry["volume"]] = path
            else:
                record.unlink(missing_ok=True)
        with self._lock:
            self._paths.update(recovered)
        return recovered
