"""The agent's own stores for checkpoint copies: an LV of its own in a pool, never the root disk.

Two kinds of copy arrive that no tenant's volume holds: peer replicas (other nodes' checkpoints,
unasked) and the local-tier copies of checkpoints written to memory volumes (a tmpfs is gone with
a reboot, so a copy on the node's disks is what survives one). Either is as large as a model's
state; under the agent's state directory they would fill the node's root filesystem, which kubelet
and every pod's logs share. So each goes to one LV per node, tagged as the agent's (the orphan
sweeper leaves it alone), carved the first time it is needed, of the size its flag gives; its
filesystem is mounted at a fixed path under the state directory, and each copy first checks that
it fits in what is left.

- `ReplicaStore`: LV `replicas`, tag `cairn.dev/replica-store`, mounted at `<state>/replicas`.
- `TierStore`: LV `tier-store`, tag `cairn.dev/tier-store`, mounted at `<state>/tier-store`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cairn.api.names import REPLICA_STORE_TAG, TIER_STORE_TAG, pool_vg
from cairn.node_agent.host import mounts
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.lvm.errors import InsufficientSpace, LvNotFound, NotContiguous, VgNotFound
from cairn.units import human_bytes

log = logging.getLogger("cairn.node.stores")
STORE_LV = "replicas"
TIER_STORE_LV = "tier-store"
TIER_STORE_DIR = "tier-store"
"""The tier store's mount point, under the agent's state directory."""
FS_TYPE = "ext4"
HEADROOM = 0.05
"""Kept free in the store beyond each copy: ext4 needs some, and a full store fails copies midway."""


class AgentStore:
    """One agent-owned LV, carved on first need, formatted and mounted at `root`."""

    def __init__(
        self,
        lvm: Lvm,
        pool: str,
        size_bytes: int,
        root: Path,
        *,
        lv_name: str,
        tag: str,
        holds: str,
        size_flag: str,
    ) -> None:
        self.lvm = lvm
        self.pool = pool
        self.vg = pool_vg(pool)
        self.size_bytes = size_bytes
        self.root = root
        self.lv_name = lv_name
        self.tag = tag
        self.holds = holds
        """What the store keeps, in words for messages: "peer replicas"."""
        self.size_flag = size_flag
        self._refused: str | None = None

    def ready(self) -> str | None:
        """Carve, format and mount the store if need be; why it cannot hold copies, or None."""
        if self.size_bytes <= 0:
            return f"this node keeps no {self.holds} ({self.size_flag} is 0)"
        try:
            try:
                info = self.lvm.get_lv(self.vg, self.lv_name)
            except LvNotFound:
                info = self.lvm.lvcreate(self.vg, self.lv_name, self.size_bytes, tags=[self.tag])
                log.info(
                    "carved the store for %s %s/%s (%s)",
                    self.holds,
                    self.vg,
                    self.lv_name,
                    human_bytes(info.size_bytes),
                )
            device = self.lvm.activate(self.vg, self.lv_name, info)
        except VgNotFound:
            return self._refuse(f"there is no pool volume group {self.vg} for the store of {self.holds} yet")
        except (InsufficientSpace, NotContiguous) as error:
            return self._refuse(f"the store of {self.holds} does not fit in {self.vg}: {error}")
        if mounts.is_mounted_from(str(self.root), device):
            self._refused = None
            return None
        if mounts.probe_filesystem(device) is None:
            mounts.make_filesystem(device, FS_TYPE)
        if self.root.is_dir() and not mounts.is_mount_point(str(self.root)) and any(self.root.iterdir()):
            # Copies an older agent kept on the root disk: each is made again where still wanted.
            log.warning(
                "removing %s kept on the root disk at %s; the store replaces them", self.holds, self.root
            )
            shutil.rmtree(self.root)
        mounts.ensure_directory(str(self.root))
        mounts.mount(device, str(self.root), FS_TYPE)
        self._refused = None
        return None

    def lacks_room_for(self, size_bytes: int) -> str | None:
        """Why a copy of `size_bytes` does not fit in the store now, or None."""
        usage = shutil.disk_usage(self.root)
        needed = size_bytes + int(usage.total * HEADROOM)
        if usage.free < needed:
            return (
                f"the store of {self.holds} ({self.vg}/{self.lv_name}) has {human_bytes(usage.free)} "
                f"free of {human_bytes(usage.total)}; a copy of {human_bytes(size_bytes)} needs "
                f"{human_bytes(needed)} with headroom"
            )
        return None

    def _refuse(self, why: str) -> str:
        if why != self._refused:
            log.warning("%s not kept here: %s", self.holds, why)
        self._refused = why
        return why


class ReplicaStore(AgentStore):
    def __init__(self, lvm: Lvm, pool: str, size_bytes: int, root: Path) -> None:
        super().__init__(
            lvm,
            pool,
            size_bytes,
            root,
            lv_name=STORE_LV,
            tag=REPLICA_STORE_TAG,
            holds="peer replicas",
            size_flag="--replica-store-bytes",
        )


class TierStore(AgentStore):
    """Where memory volumes' checkpoints get their local-tier copy; `root` is `<state>/tier-store`."""

    def __init__(self, lvm: Lvm, pool: str, size_bytes: int, root: Path) -> None:
        super().__init__(
            lvm,
            pool,
            size_bytes,
            root,
            lv_name=TIER_STORE_LV,
            tag=TIER_STORE_TAG,
            holds="local-tier copies of memory checkpoints",
            size_flag="--local-tier-bytes",
        )
