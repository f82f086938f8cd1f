from __future__ import annotations

import shutil
from pathlib import Path

from cairn.api.names import AGENT_STORE_TAGS
from cairn.node_agent.checkpoints.replica_store import ReplicaStore, TierStore


class NoLvmNeeded:
    """lacks_room_for reads only the mounted filesystem; nothing here may call lvm."""

    def __getattr__(self, name: str):
        raise AssertionError(f"lvm.{name} called")


def test_a_replica_larger_than_what_is_left_of_the_store_is_refused_with_numbers(tmp_path: Path) -> None:
    store = ReplicaStore(NoLvmNeeded(), "nvme", 1 << 30, tmp_path)  # type: ignore[arg-type]
    usage = shutil.disk_usage(tmp_path)
    why = store.lacks_room_for(usage.free + 1)
    assert why is not None and "free of" in why and "needs" in why


def test_a_node_with_no_store_size_keeps_no_replicas(tmp_path: Path) -> None:
    store = ReplicaStore(NoLvmNeeded(), "nvme", 0, tmp_path)  # type: ignore[arg-type]
    assert store.ready() == "this node keeps no peer replicas (--replica-store-bytes is 0)"


def test_the_tier_store_is_its_own_lv_with_its_own_tag(tmp_path: Path) -> None:
    store = TierStore(NoLvmNeeded(), "nvme", 0, tmp_path / "tier-store")  # type: ignore[arg-type]
    assert store.lv_name == "tier-store" and store.tag == "cairn.dev/tier-store" and store.vg == "cairn-nvme"
    assert store.ready() == (
        "this node keeps no local-tier copies of memory checkpoints (--local-tier-bytes is 0)"
    )
    assert {"cairn.dev/replica-store", "cairn.dev/tier-store"} == AGENT_STORE_TAGS
