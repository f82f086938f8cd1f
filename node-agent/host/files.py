"""Files on the node: tenant files opened without following links, and the one way the agent
replaces a file it owns.

Tenants control everything inside their volumes, so every tenant file is opened by `open_beneath`,
never by a path the kernel resolves for us, and its name first passes `cairn.paths`.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cairn.paths import safe_relative_path


class NotRegularFileError(OSError):
    """What was opened is a FIFO, device, socket or directory where a file was expected."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EINVAL, "not a regular file", name)


def open_beneath(root: Path, relative: PurePosixPath) -> BinaryIO:
    """Open a regular file under `root` for reading, following no symlink on the way.

    `root` is typically a tenant's volume, so any component may be a symlink pointing elsewhere on
    the node; each one is opened with O_NOFOLLOW relative to its parent's descriptor. O_NONBLOCK
    keeps a FIFO planted under a file's name from hanging the open; it is refused just after.
    """
    parts = safe_relative_path(str(relative)).parts
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        descriptor = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotRegularFileError(str(relative))
    os.set_blocking(descriptor, True)
    return open(descriptor, "rb", buffering=0)


def atomic_write(path: Path, data: bytes | str, *, temporary_prefix: str = ".") -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, whole.

    The data is fsynced before the rename and the directory after it: without the first, a crash
    can leave the new name pointing at an empty file; without the second, the old one. The
    temporary name starts with `temporary_prefix` and is unique, so writers never share one.
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{temporary_prefix}{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as output:
            output.write(payload)
            output.flush()
            os.fsync(output.fileno())
        os.rename(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make the names created or renamed in directory `path` survive a crash."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
