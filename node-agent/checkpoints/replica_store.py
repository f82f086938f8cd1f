"""Where this node keeps peer replicas: an LV of its own in a pool, never the root disk.

Replicas are other nodes' checkpoints, as large as a model's state, and arrive unasked. Under the
agent's state directory they would fill the node's root filesystem, which kubelet and every pod's
logs share. So they go to one LV per node (`replicas`, tagged `cairn.dev/replica-store`), carved
the first time this node is asked to hold one, of `--replica-store-bytes`; its filesystem is
mounted at `<state>/replicas`, the path the rest of the replica code uses, and each pull first
checks that the replica fits in what is left of it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cairn.api.names import REPLICA_STORE_TAG, pool_vg
from cairn.node_agent.host import mounts
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.lvm.errors import InsufficientSpace, LvNotFound, NotContiguous, VgNotFound
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.replicas")
STORE_LV = "replicas"
FS_TYPE = "ext4"
HEADROOM = 0.05
"""Kept free in the store beyond each replica: ext4 needs some, and a full store fails pulls midway."""


class ReplicaStore:
    def __init__(self, lvm: Lvm, pool: str, size_bytes: int, root: Path) -> None:
        self.lvm = lvm
        self.vg = pool_vg(pool)
        self.size_bytes = size_bytes
        self.root = root
        self._refused: str | None = None

    def ready(self) -> str | None:
        """Carve, format and mount the store if need be; why it cannot hold replicas, or None."""
        if self.size_bytes <= 0:
            return "this node keeps no peer replicas (--replica-store-bytes is 0)"
        try:
            try:
                info = self.lvm.get_lv(self.vg, STORE_LV)
            except LvNotFound:
                info = self.lvm.lvcreate(self.vg, STORE_LV, self.size_bytes, tags=[REPLICA_STORE_TAG])
                log.info(
                    "carved the replica store %s/%s (%s)", self.vg, STORE_LV, human_bytes(info.size_bytes)
                )
            device = self.lvm.activate(self.vg, STORE_LV, info)
        except VgNotFound:
            return self._refuse(f"there is no pool volume group {self.vg} for the replica store yet")
        except (InsufficientSpace, NotContiguous) as error:
            return self._refuse(f"the replica store does not fit in {self.vg}: {error}")
        if mounts.is_mounted_from(str(self.root), device):
            self._refused = None
            return None
        if mounts.probe_filesystem(device) is None:
            mounts.make_filesystem(device, FS_TYPE)
        if self.root.is_dir() and not mounts.is_mount_point(str(self.root)) and any(self.root.iterdir()):
            # Replicas an older agent kept on the root disk: copies, pulled again where wanted.
            log.warning("removing replicas kept on the root disk at %s; the store replaces them", self.root)
            shutil.rmtree(self.root)
        mounts.ensure_directory(str(self.root))
        mounts.mount(device, str(self.root), FS_TYPE)
        self._refused = None
        return None

    def lacks_room_for(self, size_bytes: int) -> str | None:
        """Why a replica of `size_bytes` does not fit in the store now, or None."""
        usage = shutil.disk_usage(self.root)
        needed = size_bytes + int(usage.total * HEADROOM)
        if usage.free < needed:
            return (
                f"the replica store has {human_bytes(usage.free)} free of {human_bytes(usage.total)}; "
                f"a replica of {human_bytes(size_bytes)} needs {human_bytes(needed)} with headroom"
            )
        return None

    def _refuse(self, why: str) -> str:
        if why != self._refused:
            log.warning("peer replicas not kept here: %s", why)
        self._refused = why
        return why
