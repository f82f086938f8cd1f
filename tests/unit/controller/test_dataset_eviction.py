"""Which Dataset copies a full pool gives up, and which it must keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cairn.api.dataset import DatasetNodeStatus, NodePhase
from cairn.controller.datasets.eviction import NodeCopy, Watermarks, copy_in_use, evicted_nodes, evictions

MiB = 1024 * 1024
T0 = datetime(2026, 12, 1, tzinfo=UTC)
MARKS = Watermarks(high=0.7, low=0.55)


def copy(name: str, minutes: int, size: int = 100 * MiB, in_use: str | None = None) -> NodeCopy:
    return NodeCopy(f"ml/{name}", size, T0 + timedelta(minutes=minutes), in_use)


def test_below_the_high_watermark_nothing_is_evicted() -> None:
    assert evictions("n1", "nvme", 1000 * MiB, 301 * MiB, [copy("a", 0)], MARKS) == []


def test_the_least_recently_used_copies_go_until_the_pool_is_at_the_low_watermark() -> None:
    copies = [copy("newest", 30), copy("oldest", 0), copy("middle", 10)]
    # 800 of 1000 MiB used: 250 MiB must go to reach 550.
    chosen = evictions("n1", "nvme", 1000 * MiB, 200 * MiB, copies, MARKS)
    assert [e.copy.dataset for e in chosen] == ["ml/oldest", "ml/middle", "ml/newest"]
    # 710 used: 160 MiB must go, so two copies of 100.
    chosen = evictions("n1", "nvme", 1000 * MiB, 290 * MiB, copies, MARKS)
    assert [e.copy.dataset for e in chosen] == ["ml/oldest", "ml/middle"]
    assert chosen[0].message.startswith("pool nvme on node n1 is 71% full (high watermark 70%)")
    assert "last used 2026-12-01T00:00:00+00:00" in chosen[0].message
    # Exactly at the high watermark is not above it.
    assert evictions("n1", "nvme", 1000 * MiB, 300 * MiB, copies, MARKS) == []


def test_a_copy_in_use_is_never_evicted_even_when_the_pool_stays_full() -> None:
    copies = [copy("lent", 0, in_use="Datasets b share this copy"), copy("free", 5)]
    chosen = evictions("n1", "nvme", 1000 * MiB, 50 * MiB, copies, MARKS)
    assert [e.copy.dataset for e in chosen] == ["ml/free"]


def test_what_counts_as_in_use() -> None:
    ready = DatasetNodeStatus(phase=NodePhase.READY)
    assert copy_in_use(ready, True, 0, [], 0) is None
    assert (
        copy_in_use(DatasetNodeStatus(phase=NodePhase.DOWNLOADING), True, 0, [], 0) == "the copy is not Ready"
    )
    assert copy_in_use(None, True, 0, [], 0) == "the copy is not Ready"
    assert "serves them" in (copy_in_use(ready, False, 0, [], 0) or "")
    assert copy_in_use(ready, True, 2, [], 0) == "2 pods wait for the Dataset"
    assert copy_in_use(ready, True, 0, ["b", "a"], 0) == "Datasets a, b share this copy"
    assert copy_in_use(ready, True, 0, [], 1) == "1 claims are being filled from it"


def test_an_evicted_node_stays_out_until_a_claim_lands_there_after_the_eviction_or_a_pod_waits() -> None:
    evicted = DatasetNodeStatus(phase=NodePhase.EVICTED, updated_at=T0)
    reports = {"n1": evicted, "n2": evicted, "n3": DatasetNodeStatus(phase=NodePhase.READY)}
    claimed = {"n1": T0 - timedelta(minutes=1), "n2": T0 + timedelta(seconds=1), "n3": T0}
    assert evicted_nodes(reports, claimed, waiting_pods=0) == {"n1"}
    assert evicted_nodes(reports, {}, waiting_pods=0) == {"n1", "n2"}
    assert evicted_nodes(reports, {}, waiting_pods=1) == set()


@pytest.mark.parametrize(("high", "low"), [(0.8, 0.8), (0.5, 0.7), (1.1, 0.5), (0.9, 0.0)])
def test_watermarks_out_of_order_are_refused(high: float, low: float) -> None:
    with pytest.raises(ValueError, match="0 < low < high <= 1"):
        Watermarks(high=high, low=low)
