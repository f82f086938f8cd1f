"""The only code in the node agent that runs mkfs, mount, umount and filesystem resize tools."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class MountError(Exception):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {self.stderr}")


def _run(argv: Sequence[str], timeout: float = 300.0) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise MountError(argv, result.returncode, result.stderr or result.stdout)
    return result.stdout


def probe_filesystem(device: str) -> str | None:
    """The filesystem type found by probing the device itself (not udev's possibly missing cache)."""
    result = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True)
    if result.returncode == 2:  # blkid: nothing found
        return None
    if result.returncode != 0:
        raise MountError(["blkid", "-p", device], result.returncode, result.stderr)
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return fields.get("TYPE") or fields.get("PTTYPE") or "unknown"


def make_filesystem(device: str, fs_type: str, *, few_large_files: bool = False) -> None:
    """`few_large_files`: a dataset copy. mke2fs would give a small volume 1 KiB blocks, an inode per
    4 KiB and 5% reserved for root, about 10% of the space; 4 KiB blocks, an inode per MiB and no
    reserve leave the data what it was promised."""
    if fs_type == "ext4":
        # No lazy init: a volume handed to a pod must not keep zeroing inode tables behind its back.
        extra = ["-b", "4096", "-T", "largefile", "-m", "0"] if few_large_files else []
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                *extra,
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                device,
            ]
        )
    elif fs_type == "xfs":
        _run(["mkfs.xfs", "-q", "-K", device])
    else:
        raise ValueError(f"unsupported filesystem {fs_type}")


def mount(source: str, target: str, fs_type: str | None = None, options: Sequence[str] = ()) -> None:
    argv = ["mount"]
    if fs_type:
        argv += ["-t", fs_type]
    if options:
        argv += ["-o", ",".join(options)]
    _run([*argv, source, target])


def bind_mount(source: str, target: str, *, readonly: bool = False) -> None:
    _run(["mount", "--bind", source, target])
    if readonly:
        # A bind mount ignores "ro" on the first call; only a remount makes it read-only.
        _run(["mount", "-o", "remount,bind,ro", target])


def unmount(target: str) -> None:
    _run(["umount", target])


def is_mount_point(path: str) -> bool:
    """A directory that is a mount point, by comparing devices with its parent: O(1), no table scan."""
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def is_device_bound_at(path: str, device: str) -> bool:
    """Whether a file path currently shows the given block device (a block volume's bind mount)."""
    try:
        here, there = os.stat(path), os.stat(device)
    except FileNotFoundError:
        return False
    return stat.S_ISBLK(here.st_mode) and here.st_rdev == there.st_rdev


def is_mounted_from(path: str, device: str) -> bool:
    """Whether the filesystem mounted at `path` lives on `device`."""
    try:
        return os.stat(path).st_dev == os.stat(device).st_rdev
    except FileNotFoundError:
        return False


def is_same_filesystem(path: str, directory: str) -> bool:
    """Whether `path` shows the filesystem mounted at `directory` (a bind mount of it)."""
    try:
        return os.stat(path).st_dev == os.stat(directory).st_dev
    except FileNotFoundError:
        return False


def resize_filesystem(device: str, mount_path: str, fs_type: str) -> None:
    """Grow a mounted filesystem to fill its device (both tools work online)."""
    if fs_type == "ext4":
        _run(["resize2fs", device])
    elif fs_type == "xfs":
        _run(["xfs_growfs", mount_path])
    else:
        raise ValueError(f"cannot grow filesystem {fs_type}")


def device_size(device: str) -> int:
    with open(device, "rb") as handle:
        return handle.seek(0, os.SEEK_END)


@dataclass(frozen=True)
class FsUsage:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def filesystem_usage(path: str) -> FsUsage:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    available = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return FsUsage(total, available, used, st.f_files, st.f_ffree, st.f_files - st.f_ffree)


def ensure_directory(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def ensure_file(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch(exist_ok=True)


def why_device_in_use(device: str) -> str | None:
    """What holds `device` (a filesystem mounted from it, a device-mapper or other holder), or None.

    An exclusive open fails with EBUSY exactly while the kernel has the device claimed, which a
    mount in any mount namespace and every holder do; the holders directory and mountinfo only
    name the culprit. A device that does not exist is held by nothing.
    """
    try:
        descriptor = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno != errno.EBUSY:
            return f"{device} cannot be opened exclusively: {error.strerror}"
        return f"{device} is {_claimed_by(device)}"
    os.close(descriptor)
    return None


def _claimed_by(device: str) -> str:
    rdev = os.stat(device).st_rdev
    number = f"{os.major(rdev)}:{os.minor(rdev)}"
    holders_dir = Path("/sys/dev/block", number, "holders")
    holders = sorted(p.name for p in holders_dir.iterdir()) if holders_dir.is_dir() else []
    if holders:
        return f"held by {', '.join(holders)}"
    mount_points = [
        fields[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if len(fields := line.split()) > 4 and fields[2] == number
    ]
    if mount_points:
        return f"mounted at {', '.join(mount_points)}"
    return "claimed exclusively (mounted in another mount namespace, or held by a process)"


def freeze(path: str) -> None:
    """Flush and hold a mounted filesystem still (writers block) until `thaw`: a copy of its
    device is then a clean filesystem, not a crash image."""
    _run(["fsfreeze", "--freeze", path], timeout=120)


def thaw(path: str) -> None:
    result = subprocess.run(["fsfreeze", "--unfreeze", path], capture_output=True, text=True, timeout=60)
    # EINVAL: not frozen (thawed already, or by an operator): the state wanted either way.
    if result.returncode != 0 and "Invalid argument" not in result.stderr:
        raise MountError(["fsfreeze", "--unfreeze", path], result.returncode, result.stderr)


def device_bind_mounts(device: str) -> list[str]:
    """Where `device` itself (a block volume's device node) is bind-mounted, as pods get it."""
    name = os.path.basename(os.path.realpath(device))
    return [
        fields[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if len(fields := line.split()) > 4 and fields[3] == f"/{name}" and " - devtmpfs " in line
    ]
