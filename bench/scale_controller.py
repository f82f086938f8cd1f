"""The controller at scale: 10 nodes, then 1,000, in one invocation (issue 19).

Each run gets a fresh scale bed (bench/scale/bed.py: real etcd and kube-apiserver, kwok keeping
the Nodes Ready) and ONE process of simulated node agents (bench/scale/simulated_agents.py: the
agent's own publisher, Lease renewer and reconciler, LVM in memory). Then the real controller, and
the steady state: 10 LocalVolumes and 10 Checkpoints per node, and 100 small Datasets whose S3
origin does not exist (no agent here lists origins, so they never get past planning).

Measured over a steady window: the controller's CPU (/proc utime+stime), its resident memory per
1,000 objects, the apiserver's own count of requests from the controller's and the agents'
ServiceAccounts (a flow schema each) per node per minute, and status writes to Datasets. After
the window, CreateVolume latency over the controller's CSI socket, the agents carving each volume.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from kubernetes import client

from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from tests.testbed.components import mount_capability, start_controller
from tests.testbed.process import ManagedProcess
from tests.testbed.tools import REPO_ROOT

from .common import percentile, report
from .scale.bed import AGENTS_FLOW, CONTROLLER_FLOW, ScaleBed, run_all, scale_bed, wait_for
from .scale.objects import (
    MiB,
    checkpoint_body,
    cpu_seconds,
    dataset_body,
    dataset_nodes,
    local_volume_body,
    metric_sum,
    node_names,
    per_node_per_minute,
    progress_dataset_body,
    vm_rss_bytes,
)

PER_NODE = 10
"""LocalVolumes, and Checkpoints, per node."""
DATASETS = 100
TICKS = os.sysconf("SC_CLK_TCK")
GROUP, VERSION = "cairn.dev", "v1alpha1"


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def proc_cpu(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), TICKS)


def proc_rss(pid: int) -> int:
    return vm_rss_bytes(Path(f"/proc/{pid}/status").read_text())


def source_digest() -> str:
    """Which controller was measured: the tree changes under other people's hands."""
    digest = hashlib.sha256()
    for path in sorted([*(REPO_ROOT / "controller").rglob("*.py"), REPO_ROOT / "cairn" / "kube.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def other_load() -> list[str]:
    found = subprocess.run(["pgrep", "-af", r"bench\.|pytest"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "scale_controller" not in line][:5]


def create_objects(bed: ScaleBed, names: list[str]) -> dict[str, int]:
    custom = client.CustomObjectsApi(bed.api_client(pool=24))

    def volume(body: dict[str, Any]) -> None:
        custom.create_cluster_custom_object(GROUP, VERSION, "localvolumes", body, _preload_content=False)

    def namespaced(plural: str) -> Any:
        def create(body: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, "default", plural, body, _preload_content=False
            )

        return create

    started = time.monotonic()
    volumes = [local_volume_body(n, i) for n in names for i in range(PER_NODE)]
    run_all(volume, volumes, 16)
    datasets = [dataset_body(i, dataset_nodes(i, names)) for i in range(DATASETS)]
    run_all(namespaced("datasets"), datasets, 16)
    checkpoints = [checkpoint_body(n, i) for n in names for i in range(PER_NODE)]
    run_all(namespaced("checkpoints"), checkpoints, 16)
    total = len(volumes) + len(datasets) + len(checkpoints)
    elapsed = time.monotonic() - started
    log(f"created {total} objects in {elapsed:.0f}s ({total / elapsed:.0f}/s)")
    return {"localvolumes": len(volumes), "datasets": len(datasets), "checkpoints": len(checkpoints)}


def ready_count(bed: ScaleBed, plural: str, ready: Any) -> int:
    custom = client.CustomObjectsApi(bed.api_client())
    return bed.count(custom.list_cluster_custom_object, GROUP, VERSION, plural, where=ready)


def status_phase(item: dict[str, Any]) -> str:
    return str((item.get("status") or {}).get("phase") or "")


def create_latencies(socket: Path, count: int) -> tuple[list[float], int]:
    """CreateVolume-to-Ready, one call at a time as a provisioner's worker makes them."""
    channel = grpc.insecure_channel(f"unix://{socket}")
    stub = csi_pb2_grpc.ControllerStub(channel)

    def create(name: str) -> str:
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
            volume_capabilities=[mount_capability()],
            parameters={"cairn.dev/pool": "nvme"},
        )
        return stub.CreateVolume(request, timeout=120).volume.volume_id

    try:
        # Unmeasured first call: it pays one-time costs (gRPC channel, first placement) no other does.
        created = [create("scale-create-warmup")]
        latencies = []
        for i in range(count):
            started = time.perf_counter()
            created.append(create(f"scale-create-{i}"))
            latencies.append(time.perf_counter() - started)
        failed_deletes = 0
        for volume_id in created:
            try:
                stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=120)
            except grpc.RpcError:
                failed_deletes += 1
        return latencies, failed_deletes
    finally:
        channel.close()


def seed_everywhere(bed: ScaleBed, names: list[str], seconds: float) -> dict[str, Any]:
    """One Dataset on every node, "seeded" over `seconds`: the writes its N targets and the controller make.

    The targets' reports are the agent's own, paced as the agent paces them (simulated_agents.py,
    SimulatedCopy); the controller sums them into readyCount as it would. Counted: every write to a
    Dataset in that time, the object's size at the end, and how long until the controller said N/N.
    """
    custom = client.CustomObjectsApi(bed.api_client())
    body = progress_dataset_body(names, seconds)
    name = body["metadata"]["name"]
    text_before, started = bed.metrics_text(), time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "datasets", body)

    def read() -> dict[str, Any]:
        raw = custom.get_namespaced_custom_object(
            GROUP, VERSION, "default", "datasets", name, _preload_content=False
        ).data
        return {"bytes": len(raw), "status": json.loads(raw).get("status") or {}}

    budget = seconds * 3 + 120 + len(names) * 0.2
    try:
        wait_for(
            lambda: read()["status"].get("readyCount", 0) >= len(names),
            budget,
            f"Dataset {name} Ready on {len(names)} nodes",
            every=1,
        )
    except TimeoutError as error:
        # Reported, not raised: how far it got, and what it cost, is the finding (the other runs'
        # figures must still be printed).
        log(f"{error}; reporting where it stood")
    ready_s = time.monotonic() - started
    text_after = bed.metrics_text()
    final = read()
    status = final["status"]
    writes = dataset_patches(text_after) - dataset_patches(text_before)
    log(
        f"{name}: Ready on {status.get('readyCount', 0)} of {len(names)} nodes "
        f"({len(status.get('targetNodes') or [])} still planned) {ready_s:.0f}s after creation; "
        f"{writes:.0f} writes "
        f"({writes / ready_s:.1f}/s, {writes / len(names):.1f} per target); object {final['bytes']} B"
    )
    return {
        "targets": len(names),
        "ready_at_end": status.get("readyCount", 0),
        "planned_targets_at_end": len(status.get("targetNodes") or []),
        "all_ready": status.get("readyCount", 0) >= len(names),
        "seed_seconds": seconds,
        "ready_s": ready_s,
        "writes": writes,
        "writes_per_s": writes / ready_s,
        "writes_per_target": writes / len(names),
        "object_bytes": final["bytes"],
        "object_bytes_per_target": final["bytes"] / len(names),
        # What a real cluster's watchers (every agent and the controller) would be sent, at most: the
        # object only grows, so every write is counted at its final size.
        "watch_bytes_at_most_cluster": writes * final["bytes"] * (len(names) + 2),
    }


def flows(text: str) -> dict[str, float]:
    name = "apiserver_flowcontrol_dispatched_requests_total"
    return {flow: metric_sum(text, name, {"flow_schema": flow}) for flow in (CONTROLLER_FLOW, AGENTS_FLOW)}


def dataset_patches(text: str) -> float:
    return metric_sum(text, "apiserver_request_total", {"resource": "datasets", "verb": "PATCH"})


LISTED = ("nodes", "storagenodes", "localvolumes", "datasets", "leases", "checkpoints")


def list_bytes(text: str) -> dict[str, float]:
    """Bytes the apiserver answered LISTs with, by resource, from everyone: what a list costs at size."""
    name = "apiserver_response_sizes_sum"
    return {r: metric_sum(text, name, {"resource": r, "verb": "LIST"}) for r in LISTED}


def one_run(nodes: int, window_s: float, creates: int, settle_s: float, seed_s: float) -> dict[str, Any]:
    log(f"== {nodes} nodes")
    with scale_bed() as bed:
        names = node_names(nodes)
        started = time.monotonic()
        bed.add_nodes(names)
        bed.wait_nodes_ready(nodes, timeout=120 + nodes * 0.5)
        log(f"{nodes} kwok Nodes Ready in {time.monotonic() - started:.0f}s")

        cp = bed.control_plane
        node_file = bed.workdir / "simulated-nodes.txt"
        node_file.write_text("\n".join(names) + "\n")
        ready_file = bed.workdir / "simulated-agents.ready"
        agents = ManagedProcess(
            "simulated-agents",
            [
                sys.executable,
                "-m",
                "bench.scale.simulated_agents",
                "--kubeconfig",
                str(cp.kubeconfigs["cairn-node-agent"]),
                "--nodes",
                f"@{node_file}",
                "--ready-file",
                str(ready_file),
            ],
            run_id=bed.run_id,
            log_dir=bed.workdir / "logs",
            cwd=REPO_ROOT,
        )
        controller: ManagedProcess | None = None
        try:
            agents.wait_until(ready_file.exists, 120 + nodes * 0.5, "up with every node")
            wait_for(
                lambda: (
                    ready_count(bed, "storagenodes", lambda i: (i.get("status") or {}).get("ready")) >= nodes
                ),
                120,
                f"{nodes} StorageNodes Ready",
            )
            log(f"{nodes} simulated agents published Ready in {time.monotonic() - started:.0f}s")
            controller, socket = start_controller(
                bed.workdir / "controller", bed.run_id, cp.kubeconfigs["cairn-controller"]
            )
            counts = create_objects(bed, names)
            wait_for(
                lambda: (
                    ready_count(bed, "localvolumes", lambda i: status_phase(i) == "Ready")
                    >= counts["localvolumes"]
                ),
                300 + nodes * 1.0,
                f"{counts['localvolumes']} LocalVolumes Ready",
                every=5,
            )
            log(f"steady state reached at {time.monotonic() - started:.0f}s; settling {settle_s:.0f}s")
            time.sleep(settle_s)

            load_before = os.getloadavg()
            processes = {
                "controller": controller.pid,
                "simulated_agents": agents.pid,
                "kube_apiserver": next(p.pid for p in cp.processes if p.name == "kube-apiserver"),
                "etcd": next(p.pid for p in cp.processes if p.name == "etcd"),
                "kwok": bed.kwok.pid if bed.kwok else 0,
            }
            cpu_before = {k: proc_cpu(pid) for k, pid in processes.items() if pid}
            text_before, t0 = bed.metrics_text(), time.monotonic()
            log(f"steady window of {window_s:.0f}s; load {load_before}")
            time.sleep(window_s)
            text_after, t1 = bed.metrics_text(), time.monotonic()
            cpu_after = {k: proc_cpu(pid) for k, pid in processes.items() if pid}
            elapsed = t1 - t0
            cores = {k: (cpu_after[k] - cpu_before[k]) / elapsed for k in cpu_before}
            rss = proc_rss(controller.pid)
            requests = {
                k: flows(text_after)[k] - flows(text_before)[k] for k in (CONTROLLER_FLOW, AGENTS_FLOW)
            }
            listed_bytes = {
                r: (list_bytes(text_after)[r] - list_bytes(text_before)[r]) / elapsed for r in LISTED
            }
            writes = (dataset_patches(text_after) - dataset_patches(text_before)) / elapsed
            load_after = os.getloadavg()
            log(f"cores {json.dumps({k: round(v, 3) for k, v in cores.items()})}; requests {requests}")
            log(f"LIST bytes/s by resource: {json.dumps({k: round(v) for k, v in listed_bytes.items()})}")

            custom = client.CustomObjectsApi(bed.api_client())
            phases: dict[str, int] = {}
            listed = json.loads(
                custom.list_namespaced_custom_object(
                    GROUP, VERSION, "default", "datasets", _preload_content=False
                ).data
            )
            for item in listed.get("items") or []:
                phase = status_phase(item) or "(none)"
                phases[phase] = phases.get(phase, 0) + 1

            latencies, failed_deletes = create_latencies(socket, creates)
            log(
                f"CreateVolume p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                f"p99 {percentile(latencies, 99) * 1000:.0f} ms"
            )
            seeding = seed_everywhere(bed, names, seed_s)
            objects = nodes * 3 + counts["localvolumes"] + counts["datasets"] + counts["checkpoints"]
            return {
                "nodes": nodes,
                "window_s": elapsed,
                "cores": cores,
                "controller_rss_bytes": rss,
                "objects": objects,
                "object_counts": {"nodes": nodes, "storagenodes": nodes, "agent_leases": nodes, **counts},
                "requests": requests,
                "controller_requests_per_node_minute": per_node_per_minute(
                    requests[CONTROLLER_FLOW], nodes, elapsed
                ),
                "agent_requests_per_node_minute": per_node_per_minute(requests[AGENTS_FLOW], nodes, elapsed),
                "dataset_writes_per_s": writes,
                "seed_everywhere": seeding,
                "list_response_bytes_per_s": listed_bytes,
                "dataset_phases": phases,
                "create_p50_s": percentile(latencies, 50),
                "create_p99_s": percentile(latencies, 99),
                "creates": len(latencies),
                "failed_deletes": failed_deletes,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in load_after],
                "controller_log_lines": sum(1 for _ in controller.log_path.open(errors="replace")),
                "controller_log_tail": controller.log_tail(8),
            }
        finally:
            for process in (controller, agents):
                if process is not None:
                    process.stop()
                    print(f"--- {process.name} log tail:\n{process.log_tail(6)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window-s", type=float, default=600.0, help="steady window per run (issue: 10 min)")
    parser.add_argument("--nodes", default="10,1000", help="node counts: the baseline, then the scale")
    parser.add_argument("--creates", type=int, default=100, help="measured CreateVolume calls per run")
    parser.add_argument(
        "--settle-s", type=float, default=30.0, help="wait after steady state, before the window"
    )
    parser.add_argument(
        "--seed-s", type=float, default=120.0, help="how long the one Dataset on every node takes to seed"
    )
    args = parser.parse_args()
    small, large = (int(n) for n in args.nodes.split(","))
    digest = source_digest()
    busy = other_load()
    if busy:
        log("other benchmarks or tests are running; CPU figures are noisy: " + "; ".join(busy))
    runs = [one_run(n, args.window_s, args.creates, args.settle_s, args.seed_s) for n in (small, large)]
    base, scale = runs
    (REPO_ROOT / "bench" / "results").mkdir(exist_ok=True)
    params: dict[str, Any] = {
        "nodes": [small, large],
        "window_s": args.window_s,
        "cpu_count": os.cpu_count(),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "other_load": busy,
        "controller_sources": digest,
        "runs": [{k: v for k, v in run.items() if k != "controller_log_tail"} for run in runs],
        "simulated": "agents: bench/scale/simulated_agents.py (publisher, lease, reconciler; LVM in memory)",
    }
    report(
        "scale_controller_cpu",
        scale["cores"]["controller"],
        base["cores"]["controller"],
        "cores",
        params,
        goal=f"<=0.5 core at {large} nodes",
    )
    for q in (50, 99):
        report(
            f"scale_create_p{q}",
            scale[f"create_p{q}_s"],
            base[f"create_p{q}_s"],
            "s",
            params,
            goal=f"ratio <=1.5 ({large} vs {small} nodes)",
        )

    def per_node(run: dict[str, Any]) -> float:
        return run["controller_requests_per_node_minute"] + run["agent_requests_per_node_minute"]

    report(
        "scale_api_requests_per_node",
        per_node(scale),
        per_node(base),
        "requests/node/minute",
        {
            **params,
            "controller_per_node_minute": [
                base["controller_requests_per_node_minute"],
                scale["controller_requests_per_node_minute"],
            ],
            "agents_per_node_minute": [
                base["agent_requests_per_node_minute"],
                scale["agent_requests_per_node_minute"],
            ],
        },
        goal="ratio <=1.2",
    )

    def rss_per_kobject(run: dict[str, Any]) -> float:
        return run["controller_rss_bytes"] / MiB / (run["objects"] / 1000)

    marginal = (
        (scale["controller_rss_bytes"] - base["controller_rss_bytes"])
        / MiB
        / ((scale["objects"] - base["objects"]) / 1000)
    )
    report(
        "scale_controller_rss_per_kobject",
        rss_per_kobject(scale),
        rss_per_kobject(base),
        "MiB per 1,000 objects",
        {
            **params,
            "marginal_mib_per_kobject": marginal,
            "rss_mib": [r["controller_rss_bytes"] / MiB for r in runs],
        },
    )
    seeded = [run["seed_everywhere"] for run in runs]
    report(
        "scale_dataset_writes",
        seeded[1]["writes_per_s"],
        seeded[0]["writes_per_s"],
        f"writes/s to one Dataset seeding on every node over {args.seed_s:.0f}s",
        {
            **params,
            "seed_everywhere": seeded,
            "steady_dataset_writes_per_s": [run["dataset_writes_per_s"] for run in runs],
        },
        goal="bounded: phase changes (about 2 per target) plus about 2 progress writes/s",
    )
    report(
        "scale_dataset_object_bytes",
        seeded[1]["object_bytes"],
        seeded[0]["object_bytes"],
        f"bytes of that Dataset at {large} vs {small} targets",
        {**params, "seed_everywhere": seeded, "etcd_limit_bytes": int(1.5 * MiB)},
        goal="bounded (open: per-node detail still lives in the Dataset)",
    )
    for run in runs:
        log(
            f"{run['nodes']} nodes: datasets by phase {run['dataset_phases']}; "
            f"controller log tail:\n{run['controller_log_tail']}"
        )


if __name__ == "__main__":
    main()
