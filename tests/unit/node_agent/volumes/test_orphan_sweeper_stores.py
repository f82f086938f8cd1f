"""The agent's own store LVs (peer replicas, the memory drain's tier store) are never orphans."""

from __future__ import annotations

from typing import Any

from cairn.api.names import OWNED_TAG, REPLICA_STORE_TAG, TIER_STORE_TAG
from cairn.api.volume import PoolClass
from cairn.node_agent.lvm.report import LvInfo
from cairn.node_agent.volumes.orphan_sweeper import OrphanSweeper


def lv(name: str, *tags: str) -> LvInfo:
    return LvInfo("cairn-nvme", name, f"uuid-{name}", 1 << 30, 4 << 20, "-wi-a-----", "", True, tags, ())


class StoreLvs:
    """lvm as the sweeper sees it: the two store LVs and nothing else; removing one fails the test."""

    def list_lvs(self, vg: str) -> list[LvInfo]:
        return [lv("replicas", OWNED_TAG, REPLICA_STORE_TAG), lv("tier-store", OWNED_TAG, TIER_STORE_TAG)]

    def device_path(self, vg: str, name: str) -> str | None:
        return None

    def lvremove(self, vg: str, name: str) -> None:
        raise AssertionError(f"the agent's own store {vg}/{name} was removed")


class NoVolumes:
    def list(self, label_selector: str | None = None) -> list[Any]:
        return []

    def get(self, name: str) -> None:
        return None


class NoEvents:
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a store LV was reported as an orphan")


def test_the_replica_and_tier_store_lvs_are_never_orphans() -> None:
    sweeper = OrphanSweeper(
        "n1",
        StoreLvs(),  # type: ignore[arg-type]
        NoVolumes(),  # type: ignore[arg-type]
        NoEvents(),  # type: ignore[arg-type]
        [PoolClass.NVME],
        grace_seconds=0,
        clock=lambda: 1e9,
    )
    assert sweeper.run_pass() == []
