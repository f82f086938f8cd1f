"""Zeroing the extents a volume is given, so no tenant reads bytes an earlier one wrote.

Extents freed by lvremove keep whatever was written to them, and a disk Cairn claims may hold old
data beneath its missing signatures. A block volume hands those bytes straight to the next pod,
and a filesystem's unwritten blocks can too (a file extended by seeking past its end, a
`debugfs` read). So every range an LV gains, at lvcreate and at lvextend, is zeroed before the
volume is reported Ready or grown.

BLKZEROOUT asks the device to do it: NVMe Write Zeroes, or for a loop-backed disk a hole punched
in its file. Either costs little and moves few bytes. Where the device cannot, the zeros are
written, which costs a full write of the range.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

_BLKZEROOUT = 0x127F  # _IO(0x12, 127), linux/fs.h: {start, length} in bytes, 512-aligned
_WRITE_CHUNK = 8 * 1024 * 1024


def zero_range(device: str, start: int, length: int) -> None:
    """Make bytes [start, start + length) of block device `device` read as zeros, durably."""
    if length <= 0:
        return
    if start % 512 or length % 512:
        raise ValueError(f"zeroing {device} needs 512-byte alignment, got start {start}, length {length}")
    descriptor = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.ioctl(descriptor, _BLKZEROOUT, struct.pack("=QQ", start, length))
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise
            _write_zeros(descriptor, start, length)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_zeros(descriptor: int, start: int, length: int) -> None:
    zeros = memoryview(bytes(min(_WRITE_CHUNK, length)))
    offset, end = start, start + length
    while offset < end:
        offset += os.pwrite(descriptor, zeros[: min(len(zeros), end - offset)], offset)
