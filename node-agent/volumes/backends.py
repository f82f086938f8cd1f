"""Which backend carves a volume: the memory pool for `cairn-memory`, LVM for every disk pool."""

from __future__ import annotations

from collections.abc import Sequence

from cairn.node_agent.lvm.report import LvInfo
from cairn.node_agent.volumes.reconciler import VolumeLvm


class PoolBackends:
    """Answers the reconciler's LVM questions, sending each to the backend of its volume group."""

    def __init__(self, lvm: VolumeLvm, memory: VolumeLvm | None, memory_vg: str) -> None:
        self.lvm = lvm
        self.memory = memory
        self.memory_vg = memory_vg

    def _for(self, vg: str) -> VolumeLvm:
        # Without a memory pool the question goes to LVM, which answers VgNotFound: the volume
        # fails with PoolNotFound, as one asking for a disk class the node lacks does.
        return self.memory if self.memory is not None and vg == self.memory_vg else self.lvm

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo:
        return self._for(vg).lvcreate(vg, lv, size_bytes, tags)

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        return self._for(vg).lvextend(vg, lv, new_size_bytes)

    def lvremove(self, vg: str, lv: str) -> None:
        self._for(vg).lvremove(vg, lv)

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        return self._for(vg).get_lv(vg, lv)

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        return self._for(vg).activate(vg, lv, info)

    def device_path(self, vg: str, lv: str) -> str | None:
        return self._for(vg).device_path(vg, lv)
