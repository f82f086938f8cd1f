"""Loop-backed "disks" for simulated nodes.

Each disk is a sparse file in the run directory attached with `losetup --find --show`. Other
tests and developers use loop devices on the same machine, so every detach first checks that the
device's backing file lies inside this run's directory: we never touch a loop device we did not make.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .leaks import stacked_on

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECTOR = 512


class DiskError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoopDisk:
    name: str  # caller's label, also the backing file's stem
    path: str  # block device node, e.g. /dev/loop3
    device: str  # kernel name, e.g. loop3 (its sysfs directory is /sys/block/<device>)
    backing_file: Path
    size: int  # bytes


def loop_backing_file(device: str) -> Path | None:
    """Backing file of an attached loop device (kernel name or /dev path); None when detached."""
    sysfs = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    try:
        text = sysfs.read_text().strip()
    except (FileNotFoundError, OSError):
        return None
    # The kernel appends " (deleted)" once the file has been unlinked while still attached.
    return Path(text.removesuffix(" (deleted)")) if text else None


def attached_loops() -> dict[str, Path]:
    """All attached loop devices on the machine (kernel name -> backing file), read from sysfs."""
    found: dict[str, Path] = {}
    for entry in Path("/sys/block").glob("loop*"):
        backing = loop_backing_file(entry.name)
        if backing is not None:
            found[entry.name] = backing
    return found


@dataclass
class LoopDisks:
    """The loop disks of one run, all backed by files under `run_dir`."""

    run_dir: Path
    disks: list[LoopDisk] = field(default_factory=list)
    direct_io: bool = False
    """Attach with direct I/O: no host page cache beneath the disk, as beneath a real NVMe."""

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _owned(self, backing: Path | None) -> bool:
        return backing is not None and backing.resolve().is_relative_to(self.run_dir)

    def attach(self, size_bytes: int, name: str) -> LoopDisk:
        if not _NAME_RE.match(name):
            raise ValueError(f"disk name {name!r} must be a simple file name")
        if size_bytes <= 0 or size_bytes % SECTOR:
            raise ValueError(f"disk size must be a positive multiple of {SECTOR} bytes, got {size_bytes}")
        backing = self.run_dir / f"{name}.img"
        # "x" mode: a name collision would silently share a file between two disks.
        with backing.open("xb") as f:
            f.truncate(size_bytes)  # sparse: costs no space until written
        direct = ["--direct-io=on"] if self.direct_io else []
        try:
            out = subprocess.run(
                ["losetup", "--find", "--show", *direct, str(backing)],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()  # fmt: skip
        except subprocess.CalledProcessError as e:
            backing.unlink(missing_ok=True)
            raise DiskError(f"losetup failed for {backing}: {e.stderr.strip()}") from e
        disk = LoopDisk(name=name, path=out, device=Path(out).name, backing_file=backing, size=size_bytes)
        self.disks.append(disk)
        return disk

    def detach(self, disk: LoopDisk, *, delete_file: bool = False, timeout: float = 10.0) -> None:
        """Detach the loop device, which to its users looks like the disk being pulled.

        The backing file stays by default (a pulled disk still exists); cleanup() removes it.
        """
        self._detach_device(disk.device, timeout)
        if disk in self.disks:
            self.disks.remove(disk)
        if delete_file:
            disk.backing_file.unlink(missing_ok=True)

    def _detach_device(self, device: str, timeout: float) -> None:
        backing = loop_backing_file(device)
        if backing is None:
            return  # already detached
        if not self._owned(backing):
            raise DiskError(
                f"refusing to detach /dev/{device}: backing file {backing} is outside {self.run_dir}"
            )
        self._release_stacked(device, timeout)
        proc = subprocess.run(
            ["losetup", "--detach", f"/dev/{device}"], capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0 and loop_backing_file(device) is not None:
            raise DiskError(f"losetup --detach /dev/{device}: {proc.stderr.strip()}")
        # If the device is still open, the kernel only marks it autoclear and detaches on last close.
        deadline = time.monotonic() + timeout
        while loop_backing_file(device) is not None:
            if time.monotonic() > deadline:
                raise DiskError(f"/dev/{device} is still attached (held open?) after {timeout}s")
            time.sleep(0.05)

    def _release_stacked(self, device: str, timeout: float) -> None:
        """Unmount and detach loops stacked on this disk (LVs the node agent activated in loop mode).

        Only at teardown: the simulated machine is going away, and its volumes with it.
        """
        for stacked, backing in sorted(attached_loops().items()):
            if stacked_on(str(backing)) != f"/dev/{device}":
                continue
            mounts = Path("/proc/self/mounts").read_text().splitlines()
            for target in reversed([m.split()[1] for m in mounts if m.split()[0] == f"/dev/{stacked}"]):
                subprocess.run(["umount", "--lazy", target], capture_output=True, timeout=30)
            subprocess.run(["losetup", "--detach", f"/dev/{stacked}"], capture_output=True, timeout=30)
            deadline = time.monotonic() + timeout
            while loop_backing_file(stacked) is not None and time.monotonic() < deadline:
                time.sleep(0.05)

    def cleanup(self) -> None:
        """Detach every loop device backed by a file in run_dir (tracked or not) and delete the files."""
        errors: list[str] = []
        for device, backing in sorted(attached_loops().items()):
            if self._owned(backing):
                try:
                    self._detach_device(device, timeout=10.0)
                except DiskError as e:
                    errors.append(str(e))
        self.disks.clear()
        for image in self.run_dir.glob("*.img"):
            image.unlink(missing_ok=True)
        if errors:
            raise DiskError("; ".join(errors))

    def __enter__(self) -> LoopDisks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def block_size_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a block device in bytes, as the kernel reports it."""
    out = subprocess.run(["blockdev", "--getsize64", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())
