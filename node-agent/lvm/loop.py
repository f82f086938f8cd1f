"""The kernel's loop devices, by ioctl: the activation state of an LV in loop mode.

losetup attaches (it finds a free device); the rest goes straight to the kernel, because losetup
can neither resize an attached device nor refuse to detach a mounted one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from cairn.node_agent.lvm.errors import LvInUse, LvmError
from cairn.node_agent.lvm.report import format_bytes

# linux/loop.h
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s2Q")  # struct loop_info64; lo_sizelimit is field 4
_LOOP_SIZELIMIT_FIELD = 4


def attached(loop_name: str) -> bool:
    return Path("/sys/block", Path(loop_name).name, "loop", "backing_file").exists()


def detach(loop_name: str, in_use: LvInUse, what: str) -> None:
    """Detach `loop_name` (the device of `what`, e.g. "volume vg/lv"); `in_use` is raised while mounted.

    O_EXCL fails with EBUSY while the device is mounted or claimed, and holding it closes the window
    in which a mount could sneak in between the check and the detach. `losetup -d` on a mounted loop
    would "succeed" by only setting autoclear, and lvremove would then free extents a live
    filesystem still writes to.
    """
    try:
        fd = os.open(loop_name, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise in_use from exc
        if exc.errno == errno.ENXIO:
            return  # detached meanwhile
        raise LvmError(f"cannot open {loop_name} of {what} to detach it: {exc}") from exc
    try:
        fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise LvmError(f"cannot detach {loop_name} of {what}: {exc}") from exc
    finally:
        os.close(fd)
    # The kernel detaches on the last close; another non-exclusive opener delays that.
    deadline = time.monotonic() + 2.0
    while attached(loop_name):
        if time.monotonic() > deadline:
            raise LvInUse(
                f"{what}: {loop_name} is still held open by another process and will "
                f"detach when it closes; find it with `fuser -v {loop_name}` and retry"
            )
        time.sleep(0.05)


def set_sizelimit(loop_name: str, sizelimit: int) -> None:
    """Resize an attached loop device online (losetup cannot; LOOP_SET_STATUS64 can)."""
    fd = os.open(loop_name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(_LOOP_INFO64.size)
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
        fields = list(_LOOP_INFO64.unpack(buf))
        fields[_LOOP_SIZELIMIT_FIELD] = sizelimit
        for attempt in range(20):
            try:
                fcntl.ioctl(fd, _LOOP_SET_STATUS64, _LOOP_INFO64.pack(*fields))
                return
            except OSError as exc:
                # Older kernels return EAGAIN while dirty pages are being flushed.
                if exc.errno != errno.EAGAIN or attempt == 19:
                    raise LvmError(
                        f"cannot resize {loop_name} to {format_bytes(sizelimit)}: {exc}; the volume "
                        "itself was grown, deactivate and activate it to use the new size"
                    ) from exc
                time.sleep(0.1)
    finally:
        os.close(fd)
