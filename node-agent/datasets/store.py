"""Where an agent keeps its datasets on the node: copies, each part's .torrent and resume data.

    <state>/datasets/<namespace>/<name>/          the copy's volume, mounted (files under data/)
    <state>/datasets/<namespace>/<name>.parts/    <index>.torrent and <index>.resume per part
    <state>/datasets/.clean-shutdown              resume data may be trusted (see `trust_resume_data`)

The .torrent and resume files sit beside the copy, never in it, so a consumer's volume holds the
dataset and nothing else.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cairn.node_agent.host.files import atomic_write

log = logging.getLogger("cairn.node.datasets")
DATA_DIR = "data"
"""Files live at `<mount>/data/<path>` on every node (and the torrent is named after it)."""


class PartStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._clean_start: bool | None = None

    def mount_point(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def data_directory(self, namespace: str, name: str) -> Path:
        return self.mount_point(namespace, name) / DATA_DIR

    def parts_dir(self, namespace: str, name: str) -> Path:
        return self.root / namespace / f"{name}.parts"

    def _file(self, namespace: str, name: str, index: int, suffix: str) -> Path:
        return self.parts_dir(namespace, name) / f"{index}{suffix}"

    def torrent(self, namespace: str, name: str, index: int) -> bytes | None:
        path = self._file(namespace, name, index, ".torrent")
        return path.read_bytes() if path.exists() else None

    def save_torrent(self, namespace: str, name: str, index: int, torrent: bytes) -> None:
        atomic_write(self._file(namespace, name, index, ".torrent"), torrent)

    def resume_data(self, namespace: str, name: str, index: int) -> bytes | None:
        """Saved resume data, only after a clean shutdown (see `trust_resume_data`)."""
        path = self._file(namespace, name, index, ".resume")
        return path.read_bytes() if self.trust_resume_data() and path.exists() else None

    def save_resume_data(self, namespace: str, name: str, index: int, data: bytes) -> None:
        atomic_write(self._file(namespace, name, index, ".resume"), data)

    def drop_resume_data(self, namespace: str, name: str, index: int) -> None:
        self._file(namespace, name, index, ".resume").unlink(missing_ok=True)

    def drop_parts(self, namespace: str, name: str) -> None:
        shutil.rmtree(self.parts_dir(namespace, name), ignore_errors=True)

    @property
    def clean_marker(self) -> Path:
        return self.root / ".clean-shutdown"

    def mark_clean_shutdown(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_marker.touch()

    def trust_resume_data(self) -> bool:
        """Whether the last run saved its resume data on the way out; decided once, at the first ask.

        After a crash, resume data may name pieces whose writes never reached the disk, so the
        copies are hashed on disk instead.
        """
        if self._clean_start is None:
            self._clean_start = self.clean_marker.exists()
            self.clean_marker.unlink(missing_ok=True)
            if not self._clean_start:
                log.info("no clean-shutdown marker: dataset copies will be checked on disk, not resumed")
        return self._clean_start
