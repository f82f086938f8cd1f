"""The Grafana dashboards in deploy/dashboards, checked against a real Prometheus scraping the bed.

Two nodes with agents and a controller serving /metrics run a small workload: a volume, a DCP
checkpoint tiered to the bed's S3 server and replicated to the other node, and a dataset of a few MiB
loaded onto both nodes. Prometheus scrapes every second. Then every panel's PromQL, with Grafana's
variables filled in, must parse and return at least one series.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cairn import TOPOLOGY_KEY
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from tests.testbed.bed import TestBed
from tests.testbed.chart import dataset_gate_policies, install_dataset_gate
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import METRICS_PORT, mount_capability, start_controller, start_node_agent
from tests.testbed.controlplane import free_port
from tests.testbed.datasets import pod_waiting_for, s3_dataset
from tests.testbed.kube_components import open_to_the_scheduler
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.prometheus import PrometheusServer
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
PVC = "dashboards-trainer"
DATASET = "dashboards-corpus"
SECRET = "dashboards-s3"
CAPABILITY = mount_capability()
GATED_PODS = {"dashboards-job": DATASET, "dashboards-next-job": "dashboards-later"}
"""Pod name to the Dataset it waits for: the first is made by the workload, the second never."""
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "dashboards"
GRAFANA_INTERVALS = {
    # What Grafana would pick over its default 1h range with a 1s scrape interval.
    "__rate_interval": "15s",
    "__interval": "5s",
    "__range": "1h",
}
ALL = ".*"
"""Every template variable is multi-value with an All option whose value is this regex."""


@dataclass
class Observed:
    bed: TestBed
    prometheus: PrometheusServer
    nodes: list[SimulatedNode]


def apply(bed: TestBed, manifest: dict) -> None:
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def get_json(bed: TestBed, *args: str) -> dict:
    result = bed.control_plane.kubectl("get", *args, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def checkpoint_status(bed: TestBed) -> dict:
    items = get_json(bed, "checkpoints", "-l", f"cairn.dev/pvc={PVC}").get("items", [])
    return items[0].get("status", {}) if items else {}


@pytest.fixture(scope="module")
def observed(bed: TestBed) -> Iterator[Observed]:
    assert bed.s3 is not None
    workdir = bed.workdir / "dashboards"
    kubeconfigs = bed.control_plane.kubeconfigs
    bucket = bed.s3.create_bucket(f"dashboards-{bed.run_id[:8]}")
    keys = {"accessKeyId": bed.s3.access_key, "secretAccessKey": bed.s3.secret_key}
    apply(
        bed,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        },
    )
    nodes = bed.add_nodes(2, disks=1, disk_size=256 * MiB)
    agents: dict[str, tuple[ManagedProcess, Path]] = {}
    processes: list[ManagedProcess] = []
    prometheus = None
    stage: tuple[Path, str, Path] | None = None
    controller_socket: Path | None = None
    try:
        for node in nodes:
            agents[node.name] = start_node_agent(workdir, bed.run_id, kubeconfigs["cairn-node-agent"], node)
            processes.append(agents[node.name][0])
        metrics_address = f"127.0.0.1:{free_port('127.0.0.1')}"
        controller, controller_socket = start_controller(
            workdir,
            bed.run_id,
            kubeconfigs["cairn-controller"],
            name="controller-dashboards",
            extra_args=("--metrics-address", metrics_address),
        )
        processes.append(controller)
        prometheus = PrometheusServer(
            workdir / "prometheus",
            bed.run_id,
            jobs={
                "cairn-node-agent": [f"{node.ip}:{METRICS_PORT}" for node in nodes],
                "cairn-controller": [metrics_address],
            },
        ).start()
        wait_until(
            lambda: set(prometheus.targets_up().values()) == {"up"},
            30,
            "Prometheus to scrape every agent and the controller",
            context=lambda: json.dumps(prometheus.targets_up()),
        )
        stage = run_checkpoint_workload(bed, workdir, bucket, agents, controller_socket)
        run_dataset_workload(bed, bucket, nodes)
        yield Observed(bed, prometheus, nodes)
    finally:
        try:
            release_workload(bed, controller_socket, stage)
        finally:
            if prometheus is not None:
                prometheus.stop()
            for process in reversed(processes):
                process.stop()
                print(f"\n{process.name} log tail:\n{process.log_tail(5)}")
            bed.remove_nodes(nodes)
        client = bed.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


def release_workload(
    bed: TestBed, controller_socket: Path | None, stage: tuple[Path, str, Path] | None
) -> None:
    """Objects first, while the agents still run to drop their LVs and replicas."""
    bed.control_plane.kubectl(
        "delete", "pods", *GATED_PODS, "-n", NAMESPACE, "--ignore-not-found", "--grace-period=0", "--force",
        check=False,
    )  # fmt: skip
    bed.control_plane.kubectl(
        "delete", "-f", "-", "--ignore-not-found", input_text=dataset_gate_policies(), check=False
    )
    bed.control_plane.kubectl(
        "delete", "dataset", DATASET, "-n", NAMESPACE, "--ignore-not-found", "--timeout=120s", check=False
    )
    if stage is not None and controller_socket is not None:
        node_socket, volume, staging = stage
        with grpc.insecure_channel(f"unix://{node_socket}") as channel:
            csi_pb2_grpc.NodeStub(channel).NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=str(staging)),
                timeout=60,
            )
        with grpc.insecure_channel(f"unix://{controller_socket}") as channel:
            csi_pb2_grpc.ControllerStub(channel).DeleteVolume(
                csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=60
            )
    bed.control_plane.kubectl(
        "delete", "checkpoints", "-l", f"cairn.dev/pvc={PVC}", "-n", NAMESPACE, check=False
    )
    for kind, name in (("ckptpolicy", "dashboards"), ("secret", SECRET)):
        bed.control_plane.kubectl("delete", kind, name, "-n", NAMESPACE, "--ignore-not-found", check=False)


def run_checkpoint_workload(
    bed: TestBed,
    workdir: Path,
    bucket: str,
    agents: dict[str, tuple[ManagedProcess, Path]],
    controller_socket: Path,
) -> tuple[Path, str, Path]:
    """A volume with a tiering policy, one DCP checkpoint: Tiered in S3 and replicated to the peer."""
    assert bed.s3 is not None
    apply(
        bed,
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": "dashboards", "namespace": NAMESPACE},
            "spec": {
                "commit": {"settleSeconds": 1},
                "target": {
                    "endpoint": bed.s3.endpoint,
                    "bucket": bucket,
                    "prefix": "runs",
                    "credentialsSecretRef": {"name": SECRET},
                },
                "peerReplicas": 1,
            },
        },
    )
    with grpc.insecure_channel(f"unix://{controller_socket}") as channel:
        created = csi_pb2_grpc.ControllerStub(channel).CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name="dashboards-trainer",
                capacity_range=csi_pb2.CapacityRange(required_bytes=64 * MiB),
                volume_capabilities=[CAPABILITY],
                parameters={
                    "cairn.dev/checkpoint-policy": "dashboards",
                    "csi.storage.k8s.io/pvc/name": PVC,
                    "csi.storage.k8s.io/pvc/namespace": NAMESPACE,
                },
            ),
            timeout=60,
        )
    volume = created.volume.volume_id
    node = created.volume.accessible_topology[0].segments[TOPOLOGY_KEY]
    node_socket = agents[node][1]
    # The kubelet stand-in: the workload writes its checkpoint straight into the staged volume.
    staging = KubeletStandIn(node_socket, workdir).stage(volume, capability=CAPABILITY)
    write_dcp(staging / "ckpt" / "step_1", [3 * MiB, 2 * MiB], metadata_bytes=2048)
    wait_until(
        lambda: (
            checkpoint_status(bed).get("phase") == "Tiered"
            and "peer" in checkpoint_status(bed).get("tiers", "").split(",")
        ),
        120,
        "the checkpoint to be Tiered in S3 and replicated to the other node",
        context=lambda: json.dumps(checkpoint_status(bed), indent=1),
    )
    return node_socket, volume, staging


def run_dataset_workload(bed: TestBed, bucket: str, nodes: list[SimulatedNode]) -> None:
    """4 MiB from S3 onto both nodes: the seeder reads the origin, the other node its peer.

    Two pods wait for data behind the chart's gate: one for this dataset, whose gate lifts when it
    is Ready, and one for a Dataset not made yet, which stays gated.
    """
    assert bed.s3 is not None
    client = bed.s3.client()
    for index in range(4):
        client.put_object(Bucket=bucket, Key=f"corpus/part-{index}.bin", Body=os.urandom(MiB))
    open_to_the_scheduler(bed.control_plane, NAMESPACE, [node.name for node in nodes])
    install_dataset_gate(bed.control_plane, NAMESPACE)
    for pod, dataset in GATED_PODS.items():
        apply(bed, pod_waiting_for(pod, NAMESPACE, dataset))
    for pod in GATED_PODS:
        gates = get_json(bed, "pod", pod)["spec"].get("schedulingGates", [])
        assert {"name": "cairn.dev/dataset"} in gates, f"{pod} was admitted without the dataset gate"
    names = [node.name for node in nodes]
    apply(bed, s3_dataset(DATASET, NAMESPACE, f"s3://{bucket}/corpus", bed.s3.endpoint, SECRET, names))
    wait_until(
        lambda: get_json(bed, "dataset", DATASET).get("status", {}).get("phase") == "Ready",
        180,
        "the dataset to be Ready on both nodes",
        context=lambda: json.dumps(get_json(bed, "dataset", DATASET).get("status", {}), indent=1),
    )
    wait_until(
        lambda: not get_json(bed, "pod", "dashboards-job")["spec"].get("schedulingGates"),
        60,
        "the gate of the pod waiting for the dataset to lift",
    )


# -- reading the dashboards -----------------------------------------------------------------------


def dashboards() -> dict[str, dict]:
    found = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}
    assert len(found) >= 4, f"expected the four dashboards in {DASHBOARDS}, found {sorted(found)}"
    return found


def panels(container: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def template_variables(dashboard: dict) -> list[dict]:
    return dashboard.get("templating", {}).get("list", [])


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Fill in $name, ${name} and [[name]] the way Grafana would; an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in variables, f"{expr!r} uses ${name}, which the dashboard does not define"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def variable_values(dashboard: dict) -> dict[str, str]:
    values = dict(GRAFANA_INTERVALS)
    for variable in template_variables(dashboard):
        if variable["type"] == "query":
            assert variable.get("includeAll") and variable.get("allValue") == ALL, variable["name"]
            values[variable["name"]] = ALL
    return values


def label_values(prometheus: PrometheusServer, query: str, variables: dict[str, str]) -> set[str]:
    """What Grafana's label_values(selector, label) offers, through the series API."""
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", query)
    assert match, f"variable query {query!r} is not label_values(selector, label)"
    selector, label = substitute(match.group(1), variables), match.group(2)
    answer = prometheus.api("series", **{"match[]": selector})
    assert answer["status"] == "success", f"{selector}: {answer}"
    return {series[label] for series in answer["data"] if label in series}


WORKLOAD_METRICS = {
    # What the dashboards are there to show, each of which this workload must have produced.
    'sum by (code) (cairn_controller_create_volume_seconds_count{code="OK"})': "a volume created",
    'sum(cairn_checkpoint_bytes_total{operation="upload"})': "checkpoint bytes uploaded to S3",
    'sum(cairn_checkpoint_bytes_total{operation="restore", tier="peer"})': "checkpoint bytes replicated",
    'sum(cairn_dataset_bytes_total{source="origin"})': "dataset bytes read from the origin",
    'sum(cairn_dataset_bytes_total{source="peer"})': "dataset bytes received from a peer",
    "sum(cairn_p2p_upload_bytes_total)": "dataset bytes served to a peer",
    "sum(cairn_dataset_gate_wait_seconds_count)": "a pod's gate lifted once its data was ready",
    "sum(cairn_dataset_gated_pods)": "a pod waiting for its data",
}


def wait_for_workload_metrics(prometheus: PrometheusServer) -> None:
    def missing() -> list[str]:
        return [
            what
            for expr, what in WORKLOAD_METRICS.items()
            if not any(float(r["value"][1]) > 0 for r in prometheus.query(expr)["data"]["result"])
        ]

    wait_until(
        lambda: not missing(),
        20,
        "Prometheus to hold the workload's metrics",
        context=lambda: (
            "missing: "
            + ", ".join(missing())
            + "\n"
            + json.dumps(prometheus.query("{__name__=~'cairn_(dataset|checkpoint)_bytes_total'}")["data"])
        ),
    )


# -- the test -------------------------------------------------------------------------------------


def test_every_dashboard_panel_query_returns_series_after_the_workload(observed: Observed) -> None:
    prometheus = observed.prometheus
    wait_for_workload_metrics(prometheus)
    exported = set(prometheus.api("label/__name__/values")["data"])
    queries: list[tuple[str, str, str]] = []  # (dashboard, panel title, expr as sent)
    for file, dashboard in dashboards().items():
        assert dashboard["schemaVersion"] >= 39, f"{file}: schemaVersion {dashboard['schemaVersion']}"
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"], file
        names = [v["name"] for v in template_variables(dashboard)]
        assert "DS_PROMETHEUS" in names, f"{file}: no DS_PROMETHEUS data source variable"
        values = variable_values(dashboard)
        for variable in template_variables(dashboard):
            if variable["type"] == "query":
                query = variable["query"]
                query = query["query"] if isinstance(query, dict) else query
                offered = label_values(prometheus, query, values)
                assert offered, f"{file}: variable ${variable['name']} ({query}) offers no values"
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{file}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", f"{file}: {panel['title']}"
            assert panel.get("targets"), f"{file}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", f"{file}: {panel['title']}"
                for metric in set(re.findall(r"\bcairn_\w+", target["expr"])):
                    base = re.sub(r"_(bucket|sum|count)$", "", metric)
                    assert metric in exported or base in exported, (
                        f"{file}: panel {panel['title']!r} uses {metric}, which no component exports"
                    )
                queries.append((file, panel["title"], substitute(target["expr"], values)))

    counts: dict[int, int] = {}
    problems: dict[int, str] = {}

    def evaluate_pending() -> bool:
        for index, (_, _, expr) in enumerate(queries):
            if counts.get(index):
                continue
            answer = prometheus.query(expr)
            if answer["status"] != "success":
                problems[index] = f"{answer.get('errorType')}: {answer.get('error')}"
                counts[index] = 0
                continue
            problems.pop(index, None)
            counts[index] = len(answer["data"]["result"])
        return all(counts.values())

    # Rates need two samples of a series; give a just-created one a few scrapes before judging.
    deadline = time.monotonic() + 30
    while not evaluate_pending() and time.monotonic() < deadline:
        time.sleep(2)
    print(f"\n{'series':>6}  {'dashboard / panel':<60}  expr")
    for index, (file, title, expr) in enumerate(queries):
        print(f"{counts[index]:>6}  {file.removesuffix('.json') + ' / ' + title:<60.60}  {expr}")
    failures = [
        f"{file} / {title}: {expr}\n    -> {problems.get(index, 'no series')}"
        for index, (file, title, expr) in enumerate(queries)
        if not counts[index]
    ]
    assert not failures, f"{len(failures)} of {len(queries)} panel queries failed:\n" + "\n".join(failures)
    print(f"{len(queries)} panel queries in {len(dashboards())} dashboards, every one with series")
