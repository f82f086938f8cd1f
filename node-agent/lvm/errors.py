"""Typed errors raised by the LVM adapter.

Each message names the pool (VG) and volume (LV) involved and says what the operator or the
caller can do next, so a CSI error string is actionable as it is.
"""

from __future__ import annotations

from collections.abc import Sequence


class LvmError(Exception):
    """A failed lvm or losetup command, or an LVM state the adapter cannot work with."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        stderr: str = "",
        returncode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.command: tuple[str, ...] = tuple(command)
        self.stderr = stderr
        self.returncode = returncode

    def __str__(self) -> str:
        if not self.command:
            return self.message
        detail = f"{self.message} (command: {' '.join(self.command)}"
        if self.returncode is not None:
            detail += f", exit code {self.returncode}"
        stderr = self.stderr.strip()
        if stderr:
            detail += f", stderr: {stderr}"
        return detail + ")"


class VgNotFound(LvmError):
    """The pool's volume group is not visible on this node."""


class LvNotFound(LvmError):
    """The logical volume does not exist in the volume group."""


class LvAlreadyExists(LvmError):
    """An LV of that name already exists; callers wanting idempotency should get_lv() it."""


class LvInUse(LvmError):
    """The LV's device is mounted or held open, so it cannot be deactivated or removed."""


class InsufficientSpace(LvmError):
    """The volume group has fewer free extents than the request needs."""

    def __init__(
        self,
        message: str,
        *,
        vg: str,
        free_bytes: int,
        needed_bytes: int,
        command: Sequence[str] = (),
        stderr: str = "",
        returncode: int | None = None,
    ) -> None:
        super().__init__(message, command=command, stderr=stderr, returncode=returncode)
        self.vg = vg
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes


class NotContiguous(LvmError):
    """Loop activation mode needs every LV to be one contiguous range of one PV, and it is not."""
