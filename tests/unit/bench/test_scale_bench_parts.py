"""The scale bench's pure parts: its arithmetic, and the simulated agents' in-memory LVM."""

from __future__ import annotations

import threading
import time

import pytest

from bench.scale import simulated_agents
from bench.scale.objects import (
    TiB,
    cpu_seconds,
    dataset_nodes,
    metric_sum,
    node_body,
    per_node_per_minute,
    progress_dataset_body,
    vm_rss_bytes,
)
from bench.scale.simulated_agents import EXTENT_BYTES, PASS_SECONDS, InMemoryLvm, SimulatedCopy, Timetable
from cairn.api.dataset import Dataset, DatasetNodeStatus, DatasetStatus, NodePhase
from cairn.api.names import TOPOLOGY_KEY
from cairn.kube import Typed
from cairn.node_agent.datasets.steps import progress_interval
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


class FakeDatasetCache:
    """Stands in for the shared Dataset informer: items() holds what the writes left."""

    def __init__(self, item: Typed) -> None:
        self.item = item

    def items(self) -> list[Typed]:
        return [self.item]


class FakeDatasets:
    """The CachedResources surface SimulatedCopy and NodeReports use: a cache and status patches."""

    def __init__(self, item: Typed) -> None:
        self.cache = FakeDatasetCache(item)
        self.writes: list[DatasetNodeStatus] = []

    def patch_status(self, name: str, status: DatasetStatus, namespace: str | None = None) -> None:
        dataset: Dataset = self.cache.item.model
        for node, report in status.nodes.items():
            dataset.status.nodes[node] = report
            self.writes.append(report)


def seeding_dataset(targets: list[str], seconds: float) -> Typed:
    body = progress_dataset_body(targets, seconds)
    model = Dataset.model_validate({**body, "status": {"targetNodes": targets}})
    return Typed(model, body["metadata"])


def test_a_simulated_copy_writes_as_the_agent_paces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(simulated_agents.time, "monotonic", lambda: clock[0])
    targets = [f"n{i}" for i in range(100)]
    datasets = FakeDatasets(seeding_dataset(targets, seconds=120))
    copy = SimulatedCopy("n7", datasets)  # type: ignore[arg-type]
    copy.run_pass()
    assert [w.phase for w in datasets.writes] == [NodePhase.DOWNLOADING]
    due = progress_interval(len(targets), "n7")  # 50 s at 100 targets, stretched by n7's spread
    began = clock[0]
    while clock[0] + PASS_SECONDS < began + due:  # passes every 2 s, none of them due
        clock[0] += PASS_SECONDS
        copy.run_pass()
    assert len(datasets.writes) == 1
    clock[0] = began + due
    copy.run_pass()
    assert len(datasets.writes) == 2 and datasets.writes[-1].phase == NodePhase.DOWNLOADING
    clock[0] = began + 121  # past the 120 s: Ready is a phase change, written at once
    copy.run_pass()
    clock[0] += PASS_SECONDS
    copy.run_pass()
    assert [w.phase for w in datasets.writes[2:]] == [NodePhase.READY]
    assert datasets.writes[-1].progress == 1.0


def test_a_simulated_copy_leaves_datasets_it_is_not_a_target_of_alone() -> None:
    datasets = FakeDatasets(seeding_dataset(["n1", "n2"], seconds=10))
    SimulatedCopy("n9", datasets).run_pass()  # type: ignore[arg-type]
    assert datasets.writes == []
