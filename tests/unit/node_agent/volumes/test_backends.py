"""Which backend the reconciler's LVM questions reach: memory volumes never touch LVM."""

from __future__ import annotations

from collections.abc import Sequence

from cairn.node_agent.lvm.report import LvInfo
from cairn.node_agent.volumes.backends import PoolBackends


class RecordingBackend:
    """A stand-in that notes each question; its answers do not matter here."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[tuple[str, str, str]] = []

    def _info(self, vg: str, lv: str) -> LvInfo:
        return LvInfo(vg, lv, "uuid", 4096, 4096, "-wi-a-----", f"/{self.name}/{lv}", False, (), ())

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo:
        self.asked.append(("lvcreate", vg, lv))
        return self._info(vg, lv)

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        self.asked.append(("lvextend", vg, lv))
        return self._info(vg, lv)

    def lvremove(self, vg: str, lv: str) -> None:
        self.asked.append(("lvremove", vg, lv))

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        self.asked.append(("get_lv", vg, lv))
        return self._info(vg, lv)

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        self.asked.append(("activate", vg, lv))
        return f"/{self.name}/{lv}"

    def device_path(self, vg: str, lv: str) -> str | None:
        self.asked.append(("device_path", vg, lv))
        return f"/{self.name}/{lv}"


def test_memory_volumes_go_to_the_memory_pool_and_disk_volumes_to_lvm() -> None:
    lvm, memory = RecordingBackend("lvm"), RecordingBackend("memory")
    backends = PoolBackends(lvm, memory, "cairn-memory")
    backends.lvcreate("cairn-memory", "lv-a", 4096)
    backends.activate("cairn-memory", "lv-a")
    backends.lvremove("cairn-memory", "lv-a")
    assert backends.lvcreate("cairn-nvme", "lv-b", 4096).path == "/lvm/lv-b"
    backends.lvextend("cairn-nvme", "lv-b", 8192)
    assert [q[0] for q in memory.asked] == ["lvcreate", "activate", "lvremove"]
    assert [q[0] for q in lvm.asked] == ["lvcreate", "lvextend"]
    assert {q[1] for q in lvm.asked} == {"cairn-nvme"}


def test_without_a_memory_pool_lvm_answers_and_the_volume_fails_as_for_a_missing_pool() -> None:
    lvm = RecordingBackend("lvm")
    PoolBackends(lvm, None, "cairn-memory").get_lv("cairn-memory", "lv-a")
    assert lvm.asked == [("get_lv", "cairn-memory", "lv-a")]
