"""The scale bench's pure parts: its arithmetic, and the simulated agents' in-memory LVM."""

from __future__ import annotations

import threading
import time

import pytest

from bench.scale.objects import (
    TiB,
    cpu_seconds,
    dataset_nodes,
    metric_sum,
    node_body,
    per_node_per_minute,
    vm_rss_bytes,
)
from bench.scale.simulated_agents import EXTENT_BYTES, InMemoryLvm, Timetable
from cairn.api.names import TOPOLOGY_KEY
from cairn.node_agent.lvm.errors import InsufficientSpace, LvAlreadyExists, LvNotFound, VgNotFound

METRICS = """\
# HELP apiserver_flowcontrol_dispatched_requests_total [BETA] Number of requests executed
apiserver_flowcontrol_dispatched_requests_total{flow_schema="cairn-scale-controller",priority_level="b"} 88
apiserver_flowcontrol_dispatched_requests_total{flow_schema="cairn-scale-node-agents",priority_level="b"} 170
apiserver_flowcontrol_dispatched_requests_total_extra{flow_schema="cairn-scale-controller"} 1000
apiserver_request_total{code="200",resource="datasets",subresource="status",verb="PATCH"} 3
apiserver_request_total{code="409",resource="datasets",subresource="status",verb="PATCH"} 2
apiserver_request_total{code="200",resource="datasets",verb="LIST"} 7
"""


def test_request_counts_add_up_only_the_samples_asked_for() -> None:
    name = "apiserver_flowcontrol_dispatched_requests_total"
    assert metric_sum(METRICS, name, {"flow_schema": "cairn-scale-controller"}) == 88
    assert metric_sum(METRICS, name) == 258
    assert metric_sum(METRICS, "apiserver_request_total", {"resource": "datasets", "verb": "PATCH"}) == 5
    assert metric_sum(METRICS, "apiserver_request_total", {"resource": "pods"}) == 0


def test_cpu_seconds_survive_a_process_name_with_spaces_and_parentheses() -> None:
    stat = "4242 (python (cairn) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1 2 3"
    assert cpu_seconds(stat, 100) == pytest.approx(3.0)


def test_resident_memory_is_read_in_bytes() -> None:
    assert vm_rss_bytes("Name:\tpython\nVmRSS:\t  2048 kB\nThreads:\t9\n") == 2 * 1024 * 1024
    with pytest.raises(ValueError):
        vm_rss_bytes("Name:\tzombie\n")


def test_requests_per_node_per_minute() -> None:
    assert per_node_per_minute(1200, nodes=10, seconds=120) == 60


def test_each_dataset_asks_for_a_few_distinct_nodes_and_small_clusters_are_not_overasked() -> None:
    names = [f"n{i}" for i in range(10)]
    assert dataset_nodes(0, names) == ["n0", "n1", "n2"]
    assert dataset_nodes(4, names) == ["n2", "n3", "n4"]
    assert dataset_nodes(0, ["only"]) == ["only"]


def test_fake_nodes_carry_the_topology_label_placement_uses() -> None:
    assert node_body("scale-0001")["metadata"]["labels"][TOPOLOGY_KEY] == "scale-0001"


def test_a_simulated_pool_reports_what_its_volumes_leave_free() -> None:
    lvm = InMemoryLvm("n1", {"nvme": 7 * TiB})
    info = lvm.lvcreate("cairn-nvme", "lv-a", EXTENT_BYTES + 1)
    assert info.size_bytes == 2 * EXTENT_BYTES  # rounded up to whole extents, as LVM does
    assert lvm.get_vg("cairn-nvme").free_bytes == 7 * TiB - 2 * EXTENT_BYTES
    assert lvm.pvs(vg="cairn-nvme")[0].free_bytes == 7 * TiB - 2 * EXTENT_BYTES
    assert lvm.device_path("cairn-nvme", "lv-a") == lvm.activate("cairn-nvme", "lv-a")
    lvm.lvremove("cairn-nvme", "lv-a")
    assert lvm.get_vg("cairn-nvme").free_bytes == 7 * TiB
    assert lvm.device_path("cairn-nvme", "lv-a") is None


def test_a_simulated_pool_refuses_what_real_lvm_would() -> None:
    lvm = InMemoryLvm("n1", {"nvme": 10 * EXTENT_BYTES})
    lvm.lvcreate("cairn-nvme", "lv-a", 8 * EXTENT_BYTES)
    with pytest.raises(InsufficientSpace):
        lvm.lvcreate("cairn-nvme", "lv-b", 4 * EXTENT_BYTES)
    with pytest.raises(LvAlreadyExists):
        lvm.lvcreate("cairn-nvme", "lv-a", EXTENT_BYTES)
    with pytest.raises(VgNotFound):
        lvm.lvcreate("cairn-ssd", "lv-c", EXTENT_BYTES)
    with pytest.raises(LvNotFound):
        lvm.get_lv("cairn-nvme", "lv-missing")
    with pytest.raises(InsufficientSpace):
        lvm.lvextend("cairn-nvme", "lv-a", 11 * EXTENT_BYTES)
    assert lvm.lvextend("cairn-nvme", "lv-a", 10 * EXTENT_BYTES).size_bytes == 10 * EXTENT_BYTES


def test_publishes_asked_for_together_run_once() -> None:
    stop = threading.Event()
    table = Timetable(stop, workers=2)
    calls: list[str] = []
    threading.Thread(target=table.run, daemon=True).start()
    try:
        for _ in range(5):
            table.soon("publish n1", lambda: calls.append("n1"), delay=0.05)
        table.soon("publish n2", lambda: calls.append("n2"), delay=0.05)
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        stop.set()
    assert sorted(calls) == ["n1", "n2"]
