"""How an LV becomes a block device: by device-mapper, or by a loop device over its PV range.

The adapter picks one from the kernel (`detect_activation_mode`) and leaves every difference
between the two here:

* device-mapper: the normal LVM path, `lvchange -ay`, device `/dev/<vg>/<lv>`.
* loop: kernels without device-mapper. lvm only edits metadata (`--driverloaded n`), every LV is
  allocated as one contiguous PV range, and activation attaches a loop device over exactly that
  byte range of the PV. The loop device itself is the only activation state, so activation
  survives and is rediscovered across agent restarts without a state file.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from typing import Protocol

from cairn.node_agent.lvm import loop
from cairn.node_agent.lvm.errors import LvInUse, LvmError
from cairn.node_agent.lvm.report import (
    LoopDevice,
    LoopExtent,
    LvInfo,
    PvInfo,
    contiguous_pe_range,
    loop_extent,
    loops_at,
    parse_losetup_list,
)
from cairn.node_agent.lvm.zeroing import zero_range

_DEVICE_NODE_WAIT_S = 10.0

RunLvm = Callable[..., str]
"""(subcommand, *args) -> stdout of `lvm <subcommand> ...` with the adapter's filter and environment."""
Typed = Callable[[LvmError, str, str], LvmError]
"""(error, vg, lv) -> the typed error for it."""


class Activation(Protocol):
    def lvm_args(self) -> list[str]:
        """Arguments every lvm command needs in this mode."""
        ...

    def create_args(self) -> list[str]: ...
    def extend_args(self) -> list[str]: ...
    def prepare_new(self, info: LvInfo) -> None:
        """Make a just-created LV safe to hand out (no old data at its ends)."""
        ...

    def after_extend(self, info: LvInfo, previous_bytes: int) -> None: ...
    def activate(self, info: LvInfo) -> str: ...
    def deactivate(self, info: LvInfo, in_use: LvInUse) -> None: ...
    def device_path(self, info: LvInfo) -> str | None: ...
    def forget_pv(self, device: str) -> None: ...


class DeviceMapperActivation:
    def __init__(self, run_lvm: RunLvm, typed: Typed, get_lv: Callable[[str, str], LvInfo]) -> None:
        self._lvm = run_lvm
        self._typed = typed
        self._get_lv = get_lv

    def lvm_args(self) -> list[str]:
        return []

    def create_args(self) -> list[str]:
        return ["--activate", "y", "--zero", "y", "--wipesignatures", "y", "--yes"]

    def extend_args(self) -> list[str]:
        return []

    def prepare_new(self, info: LvInfo) -> None:
        # lvcreate --zero clears only the first 4 KiB; the rest may hold an earlier volume's bytes.
        _wait_for_node(info.path)
        zero_range(info.path, 0, info.size_bytes)

    def after_extend(self, info: LvInfo, previous_bytes: int) -> None:
        # The dm table grows with the LV; the extents it gained are zeroed before anyone sees them.
        _wait_for_node(info.path)
        zero_range(info.path, previous_bytes, info.size_bytes - previous_bytes)

    def activate(self, info: LvInfo) -> str:
        try:
            self._lvm("lvchange", "--activate", "y", f"{info.vg}/{info.name}")
        except LvmError as exc:
            raise self._typed(exc, info.vg, info.name) from exc
        path = self._get_lv(info.vg, info.name).path
        _wait_for_node(path)
        return path

    def deactivate(self, info: LvInfo, in_use: LvInUse) -> None:
        try:
            self._lvm("lvchange", "--activate", "n", f"{info.vg}/{info.name}")
        except LvmError as exc:
            raise self._typed(exc, info.vg, info.name) from exc

    def device_path(self, info: LvInfo) -> str | None:
        return info.path if info.dm_active else None

    def forget_pv(self, device: str) -> None:
        pass


class LoopActivation:
    def __init__(self, run: Callable[..., str], get_pv: Callable[[str], PvInfo]) -> None:
        self._run = run
        self._get_pv = get_pv
        # Fixed for the life of a PV, and each lvm call costs ~50 ms of process start-up, so the
        # activate path reads it once instead of on every call.
        self._pe_start: dict[str, int] = {}

    def lvm_args(self) -> list[str]:
        # Without it lvm refuses lvcreate with "Required device-mapper target(s) not detected".
        return ["--driverloaded", "n"]

    def create_args(self) -> list[str]:
        # -an: lvm cannot activate here; -Zn: it cannot zero either (prepare_new does).
        return ["--activate", "n", "--zero", "n", "--alloc", "contiguous"]

    def extend_args(self) -> list[str]:
        return ["--alloc", "contiguous"]

    def prepare_new(self, info: LvInfo) -> None:
        extent = self._extent(info)
        zero_range(extent.pv, extent.offset, extent.sizelimit)

    def after_extend(self, info: LvInfo, previous_bytes: int) -> None:
        extent = self._extent(info)
        # Zeroed before the loop device grows over it, so the volume never shows the old bytes.
        zero_range(extent.pv, extent.offset + previous_bytes, extent.sizelimit - previous_bytes)
        for device in self._loops_for(extent):
            loop.set_sizelimit(device.name, extent.sizelimit)

    def activate(self, info: LvInfo) -> str:
        extent = self._extent(info)
        existing = self._loops_for(extent)
        if existing:
            device = existing[0]
            if device.sizelimit != extent.sizelimit:
                # The LV grew while no agent was around to resize its loop.
                loop.set_sizelimit(device.name, extent.sizelimit)
            return device.name
        out = self._run(
            "losetup",
            "--find",
            "--show",
            # Direct I/O: no second page cache of the same data through the PV device.
            "--direct-io=on",
            "--offset",
            str(extent.offset),
            "--sizelimit",
            str(extent.sizelimit),
            extent.pv,
        )
        return out.strip()

    def deactivate(self, info: LvInfo, in_use: LvInUse) -> None:
        for device in self._loops_for(self._extent(info)):
            loop.detach(device.name, in_use, f"volume {info.vg}/{info.name}")

    def device_path(self, info: LvInfo) -> str | None:
        loops = self._loops_for(self._extent(info))
        return loops[0].name if loops else None

    def forget_pv(self, device: str) -> None:
        self._pe_start.pop(device, None)

    def _extent(self, info: LvInfo) -> LoopExtent:
        pe_range = contiguous_pe_range(info)
        if pe_range.pv not in self._pe_start:
            self._pe_start[pe_range.pv] = self._get_pv(pe_range.pv).pe_start_bytes
        return loop_extent(pe_range, self._pe_start[pe_range.pv], info.extent_size_bytes)

    def _list_loops(self) -> list[LoopDevice]:
        return parse_losetup_list(
            self._run("losetup", "--list", "--json", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT,AUTOCLEAR")
        )

    def _loops_for(self, extent: LoopExtent) -> list[LoopDevice]:
        return loops_at(self._list_loops(), extent.pv, extent.offset, _device_key)


def _device_key(path: str) -> str:
    """Identity of a block device independent of which /dev name or symlink spells it."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    if stat.S_ISBLK(st.st_mode):
        return f"blk:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.realpath(path)


def _wait_for_node(path: str) -> None:
    # Without udev, lvm creates /dev/<vg>/<lv> itself; with udev it appears asynchronously.
    deadline = time.monotonic() + _DEVICE_NODE_WAIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise LvmError(
                f"{path} did not appear within {_DEVICE_NODE_WAIT_S:g} s after activation; "
                "check that udev is running or that lvm's udev fallback is enabled"
            )
        time.sleep(0.05)
