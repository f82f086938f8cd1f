"""Files on the node: tenant files opened without following links, and the one way the agent
replaces a file it owns.

Tenants control everything inside their volumes, so every tenant file is opened by `open_beneath`,
never by a path the kernel resolves for us, and its name first passes `cairn.paths`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import secrets
import shutil
import stat
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cairn.paths import safe_relative_path


class NotRegularFileError(OSError):
    """What was opened is a FIFO, device, socket or directory where a file was expected."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EINVAL, "not a regular file", name)


class FileChangedError(OSError):
    """The file opened is not the one listed: another inode, size or modification time."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(errno.ESTALE, f"not the file that was listed ({detail})", name)


@dataclass(frozen=True)
class FileIdentity:
    """What a listing saw of a file; an open must find the same, or someone swapped it since."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def differs_from(self, other: FileIdentity) -> str | None:
        for field_name in ("device", "inode", "size", "mtime_ns"):
            if getattr(self, field_name) != getattr(other, field_name):
                return f"{field_name} {getattr(self, field_name)} listed, {getattr(other, field_name)} now"
        return None


# openat2(2) (Linux 5.6+) resolves a whole path beneath a directory in one call, refusing every
# symlink on the way; older kernels get the O_NOFOLLOW walk, one component at a time.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works = platform.machine() in ("x86_64", "aarch64")


def _openat2(directory: int, relative: str, flags: int) -> int | None:
    """A descriptor, or None where the kernel has no openat2 (the caller walks instead)."""
    global _openat2_works
    if not _openat2_works:
        return None
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    descriptor = _libc.syscall(
        _SYS_OPENAT2, directory, os.fsencode(relative), ctypes.byref(how), ctypes.sizeof(how)
    )
    if descriptor >= 0:
        return int(descriptor)
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EPERM):  # no such call, or a seccomp filter refusing it
        _openat2_works = False
        return None
    raise OSError(error, os.strerror(error), relative)


def _open_at(directory: int, parts: tuple[str, ...], flags: int) -> int:
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    if not parts:
        return os.dup(directory)
    opened = _openat2(directory, "/".join(parts), flags)
    if opened is not None:
        return opened
    current = directory
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            if current != directory:
                os.close(current)
            current = inner
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != directory:
            os.close(current)


def _parts(relative: PurePosixPath | str) -> tuple[str, ...]:
    text = str(relative)
    return () if text in ("", ".") else safe_relative_path(text).parts


@dataclass(frozen=True)
class TenantDirectory:
    """A directory inside a tenant's volume: the volume's root, which the agent mounted and trusts,
    and the path below it, which the tenant controls and the kernel must never resolve as a whole.

    Deliberately not path-like: it can only be used through the functions here.
    """

    root: Path
    relative: PurePosixPath

    @property
    def path(self) -> Path:
        """For messages only."""
        return self.root / self.relative

    def __str__(self) -> str:
        return str(self.path)


Directory = Path | TenantDirectory
"""Where a file is looked up: a directory the agent owns, or one inside a tenant's volume."""


def _anchored(directory: Directory, relative: PurePosixPath | str) -> tuple[Path, tuple[str, ...]]:
    if isinstance(directory, TenantDirectory):
        return directory.root, _parts(directory.relative) + _parts(relative)
    return directory, _parts(relative)


def open_directory_beneath(directory: Directory, relative: PurePosixPath | str = ".") -> int:
    """A descriptor of a directory under `directory`, reached without following any link."""
    root, parts = _anchored(directory, relative)
    anchor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_at(anchor, parts, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(anchor)


def open_beneath(
    directory: Directory, relative: PurePosixPath | str, *, expect: FileIdentity | None = None
) -> BinaryIO:
    """Open a regular file under `root` for reading, following no symlink on the way.

    `root` is typically a tenant's volume, so any component may be a symlink pointing elsewhere on
    the node, or be swapped for one between any two calls. O_NONBLOCK keeps a FIFO planted under
    a file's name from hanging the open; it is refused just after. With `expect`, the file must
    still be the one a listing saw.
    """
    root, parts = _anchored(directory, relative)
    if not parts:
        raise NotRegularFileError(str(relative))
    anchor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        descriptor = _open_at(anchor, parts, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(anchor)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(str(relative))
        if expect is not None and (changed := expect.differs_from(FileIdentity.of(info))):
            raise FileChangedError(str(relative), changed)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return open(descriptor, "rb", buffering=0)


@dataclass
class TreeListing:
    """A directory tree as listed through directory descriptors, never through resolved paths."""

    files: list[tuple[str, FileIdentity]] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)
    others: list[tuple[str, str]] = field(default_factory=list)
    """(path, what it is) for symlinks, FIFOs, sockets and devices."""


def list_beneath(
    root: Directory, relative: PurePosixPath | str = ".", *, skip: frozenset[str] = frozenset()
) -> TreeListing:
    """Every entry under root/relative, by path relative to it; `skip` names paths left out."""
    listing = TreeListing()
    pending: list[tuple[str, int]] = [("", open_directory_beneath(root, relative))]
    try:
        _list_into(listing, pending, skip)
    finally:
        for _, left_open in pending:  # an error part way leaves subdirectories not yet listed
            os.close(left_open)
    listing.files.sort()
    return listing


def _list_into(listing: TreeListing, pending: list[tuple[str, int]], skip: frozenset[str]) -> None:
    while pending:
        prefix, descriptor = pending.pop()
        try:
            with os.scandir(descriptor) as scanner:
                found = list(scanner)
            if prefix and not found:
                listing.empty_dirs.append(prefix)
            for entry in found:
                path = f"{prefix}/{entry.name}" if prefix else entry.name
                if path in skip:
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                    pending.append((path, os.open(entry.name, flags, dir_fd=descriptor)))
                elif stat.S_ISREG(info.st_mode):
                    listing.files.append((path, FileIdentity.of(info)))
                else:
                    kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                    listing.others.append((path, kind))
        finally:
            os.close(descriptor)


def remove_tree_beneath(directory: Directory, relative: PurePosixPath | str = ".") -> None:
    """Delete root/relative and everything in it, through directory descriptors only.

    Each directory on the way is opened without following links, and the tree is removed relative
    to its parent's descriptor, so a directory swapped for a symlink, before or during the removal,
    never leads it out of `root`. A tree already gone is not an error.
    """
    root, parts = _anchored(directory, relative)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "refusing to remove the root itself", str(root))
    try:
        parent = open_directory_beneath(root, PurePosixPath(*parts[:-1]) if parts[:-1] else ".")
    except FileNotFoundError:
        return
    try:
        info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "not a directory (a link or file in its place)", str(relative)
            )
        # With dir_fd, rmtree takes its descriptor-based path, which never follows a link.
        shutil.rmtree(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        return
    finally:
        os.close(parent)


def atomic_write_beneath(
    root: Directory, relative: PurePosixPath | str, data: bytes | str, *, temporary_prefix: str = "."
) -> None:
    """Replace root/relative with `data` so that a crash leaves the old file or the new one, whole.

    The directory is reached without following any link, so this is safe inside a tenant's volume.
    The data is fsynced before the rename and the directory after it: without the first, a crash
    can leave the new name pointing at an empty file; without the second, the old one. The
    temporary name starts with `temporary_prefix` and is unique, so writers never share one.
    """
    root, parts = _anchored(root, relative)
    payload = data.encode() if isinstance(data, str) else data
    directory = open_directory_beneath(root, PurePosixPath(*parts[:-1]) if parts[:-1] else ".")
    temporary = f"{temporary_prefix}{parts[-1]}.{secrets.token_hex(4)}.tmp"
    try:
        descriptor = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=directory,
        )
        try:
            with open(descriptor, "wb") as output:
                output.write(payload)
                output.flush()
                os.fsync(output.fileno())
            os.rename(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=directory)
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write(path: Path, data: bytes | str, *, temporary_prefix: str = ".") -> None:
    """`atomic_write_beneath` for a file the agent owns, creating its directory if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_beneath(path.parent, path.name, data, temporary_prefix=temporary_prefix)


def fsync_directory(path: Path) -> None:
    """Make the names created or renamed in directory `path` survive a crash."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
