"""The memory pool: one size-limited tmpfs per volume, under a directory the agent holds.

It answers what the volume reconciler asks of LVM (`VolumeLvm`), so a volume of pool `memory` is
carved, grown, found and removed as an LV is; its "device" is the tmpfs's directory. Each volume's
size and tags are kept in a record beside the mounts, so the pool's accounting outlives the agent.
The tmpfs mounts outlive it too, as long as they sit in the host's mount namespace (the chart puts
the pool under the kubelet directory, whose mount propagates); after a host reboot a record with no
mount is a volume whose contents are gone, and `activate` says so in `lost`.

Errors are LVM's (InsufficientSpace, LvNotFound, LvAlreadyExists, LvInUse), so the reconciler and
the controller report them as they do for disk pools: a full pool is RESOURCE_EXHAUSTED, with numbers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from cairn.node_agent.host import mounts
from cairn.node_agent.host.files import atomic_write
from cairn.node_agent.lvm.errors import InsufficientSpace, LvAlreadyExists, LvInUse, LvNotFound
from cairn.node_agent.lvm.report import LvInfo
from cairn.node_agent.memory.reservations import PAGE_BYTES, PoolExhausted, PoolUsage, admit, usage

log = logging.getLogger("cairn.node.memory")
RECORDS = ".records"
# The pool's pages should stay in memory: a checkpoint swapped out is no faster than one on disk.
NOSWAP = "noswap"


class TmpfsPool:
    def __init__(self, root: Path, total_bytes: int, vg: str) -> None:
        self.root = root
        self.total_bytes = total_bytes
        self.vg = vg
        self.lost: set[str] = set()
        """Volumes whose tmpfs was gone when activated (a host reboot): mounted again, empty."""
        self.on_lost: Callable[[str], None] = lambda volume: None
        """Told of each volume found empty, once per agent run: the operator hears of it."""
        self._lock = threading.Lock()
        (root / RECORDS).mkdir(parents=True, exist_ok=True)

    # -- what the reconciler asks -----------------------------------------------------------------

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo:
        self._check_vg(vg)
        with self._lock:
            if self._record(lv) is not None:
                raise LvAlreadyExists(f"memory volume {lv} already exists")
            size = self._admit(lv, size_bytes)
            record = {"uuid": str(uuid.uuid4()), "size": size, "tags": list(tags)}
            atomic_write(self._record_path(lv), json.dumps(record).encode())
            try:
                self._mount(lv, size)
            except Exception:
                self._record_path(lv).unlink(missing_ok=True)
                raise
            log.info("memory volume %s: %d bytes of the pool", lv, size)
            return self._info(lv, record)

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        self._check_vg(vg)
        with self._lock:
            record = self._existing(lv)
            size = self._admit(lv, new_size_bytes)
            if size != record["size"]:
                mounts.mount("tmpfs", str(self.root / lv), options=("remount", f"size={size}"))
                record["size"] = size
                atomic_write(self._record_path(lv), json.dumps(record).encode())
            return self._info(lv, record)

    def lvremove(self, vg: str, lv: str) -> None:
        self._check_vg(vg)
        with self._lock:
            if self._record(lv) is None:
                raise LvNotFound(f"memory volume {lv} does not exist")
            directory = self.root / lv
            if mounts.is_mount_point(str(directory)):
                others = self._other_mounts(directory)
                if others:
                    raise LvInUse(f"memory volume {lv} is still mounted at {', '.join(others)}")
                mounts.unmount(str(directory))
            if directory.exists():
                directory.rmdir()
            self._record_path(lv).unlink()
            log.info("memory volume %s removed; its pages are back", lv)

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        self._check_vg(vg)
        return self._info(lv, self._existing(lv))

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        """The volume's directory, mounted; a record without a mount is mounted again, empty."""
        self._check_vg(vg)
        with self._lock:
            record = self._existing(lv)
            directory = self.root / lv
            if not mounts.is_mount_point(str(directory)):
                log.warning("memory volume %s: its tmpfs is gone (the host restarted?); empty again", lv)
                self._mount(lv, record["size"])
                if lv not in self.lost:
                    self.lost.add(lv)
                    self.on_lost(lv)
            return str(directory)

    def device_path(self, vg: str, lv: str) -> str | None:
        directory = self.root / lv
        return str(directory) if mounts.is_mount_point(str(directory)) else None

    # -- the pool ---------------------------------------------------------------------------------

    def usage(self) -> PoolUsage:
        return usage(self.total_bytes, self._shares())

    def volumes(self) -> list[str]:
        return sorted(self._shares())

    # -- internals --------------------------------------------------------------------------------

    def _check_vg(self, vg: str) -> None:
        if vg != self.vg:
            raise LvNotFound(f"the memory pool serves {self.vg}, not {vg}")

    def _record_path(self, lv: str) -> Path:
        return self.root / RECORDS / f"{lv}.json"

    def _record(self, lv: str) -> dict | None:
        path = self._record_path(lv)
        return json.loads(path.read_text()) if path.exists() else None

    def _existing(self, lv: str) -> dict:
        record = self._record(lv)
        if record is None:
            raise LvNotFound(f"memory volume {lv} does not exist")
        return record

    def _shares(self) -> dict[str, int]:
        return {
            path.stem: int(json.loads(path.read_text())["size"])
            for path in (self.root / RECORDS).glob("*.json")
        }

    def _admit(self, lv: str, size_bytes: int) -> int:
        try:
            return admit(self.total_bytes, self._shares(), lv, size_bytes)
        except PoolExhausted as full:
            raise InsufficientSpace(
                str(full), vg=self.vg, free_bytes=full.free_bytes, needed_bytes=full.needed_bytes
            ) from None

    def _mount(self, lv: str, size: int) -> None:
        directory = self.root / lv
        directory.mkdir(mode=0o700, exist_ok=True)
        options = (f"size={size}", "mode=0755", "nodev", "nosuid")
        try:
            mounts.mount("tmpfs", str(directory), "tmpfs", (*options, NOSWAP))
        except mounts.MountError:
            # noswap needs Linux 6.4; without it the pages may be swapped under pressure.
            log.warning("memory volume %s: tmpfs refused noswap; mounted without it", lv)
            mounts.mount("tmpfs", str(directory), "tmpfs", options)

    def _other_mounts(self, directory: Path) -> list[str]:
        """Where else this tmpfs is mounted (a staging or pod bind mount): it stays alive while any is."""
        device = os.stat(directory).st_dev
        major, minor = os.major(device), os.minor(device)
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[2] == f"{major}:{minor}" and fields[4] != str(directory):
                found.append(fields[4])
        return found

    def _info(self, lv: str, record: dict) -> LvInfo:
        return LvInfo(
            vg=self.vg,
            name=lv,
            uuid=record["uuid"],
            size_bytes=int(record["size"]),
            extent_size_bytes=PAGE_BYTES,
            attr="-wi-a-----",
            path=str(self.root / lv),
            dm_active=False,
            tags=tuple(record["tags"]),
            segments=(),
        )


def host_memory_bytes() -> int:
    """MemTotal of this host, from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")
