"""What the scale bench writes and reads, as plain data: object bodies, metric sums, /proc figures.

Nothing here talks to a cluster, so the bench's arithmetic can be tested without one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cairn.api.names import GROUP_VERSION, NODE_LABEL, POLICY_LABEL, POOL_LABEL, PVC_LABEL, TOPOLOGY_KEY
from cairn.api.names import volume_name as local_volume_name

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_VALUE = "fake"
"""kwok manages only Nodes annotated so (its --manage-nodes-with-annotation-selector)."""
MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB


def node_names(count: int) -> list[str]:
    return [f"scale-{i:04d}" for i in range(count)]


def node_body(name: str) -> dict[str, Any]:
    """A Node that kwok keeps Ready; Cairn's controller reads only its name and labels."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # A TTL of 0 keeps the (absent) kubelet from being asked to cache objects for it.
            "annotations": {KWOK_ANNOTATION: KWOK_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, TOPOLOGY_KEY: name, "type": "kwok"},
        },
    }


def local_volume_body(node: str, index: int, size_bytes: int = GiB) -> dict[str, Any]:
    """A LocalVolume as the controller's CreateVolume writes one, for a volume placed on `node`."""
    csi_name = f"pvc-scale-{node}-{index}"
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "LocalVolume",
        "metadata": {
            "name": local_volume_name(csi_name),
            "labels": {NODE_LABEL: node, POOL_LABEL: "nvme"},
        },
        "spec": {
            "csiName": csi_name,
            "nodeName": node,
            "pool": "nvme",
            "sizeBytes": size_bytes,
            "access": "mount",
            "fsType": "ext4",
        },
    }


def checkpoint_body(node: str, index: int, namespace: str = "default") -> dict[str, Any]:
    """A recorded Checkpoint of a volume on `node`, labelled as the agent's watcher labels them."""
    pvc = f"train-{node}"
    step = 100 * (index + 1)
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Checkpoint",
        "metadata": {
            "name": f"{pvc}-{step}",
            "namespace": namespace,
            "labels": {NODE_LABEL: node, PVC_LABEL: pvc, POLICY_LABEL: "scale-bench"},
        },
        "spec": {
            "policy": "scale-bench",
            "pvcName": pvc,
            "nodeName": node,
            "volume": local_volume_name(f"pvc-scale-{node}-0"),
            "path": f"step_{step}",
            "step": step,
            "sizeBytes": 64 * MiB,
            "size": "64Mi",
            "fileCount": 3,
            "hashAlgorithm": "blake3",
            "manifestDigest": hashlib.sha256(f"{node}/{step}".encode()).hexdigest(),
        },
    }


SIMULATED_SEED_SECONDS_ANNOTATION = "bench.cairn.dev/simulated-seed-seconds"
"""Read by bench/scale/simulated_agents.py: its targets report a copy done after this many seconds."""
MISSING_S3_ENDPOINT = "http://127.0.0.1:9"
"""The discard port: nothing answers, so no Dataset ever gets past listing its origin."""


def dataset_body(index: int, nodes: list[str], namespace: str = "default") -> dict[str, Any]:
    """A small Dataset on `nodes` whose S3 origin does not exist: it stays where the controller left it."""
    source = {"s3": {"url": f"s3://scale-bench-missing/set-{index}", "endpoint": MISSING_S3_ENDPOINT}}
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Dataset",
        "metadata": {"name": f"scale-dataset-{index:03d}", "namespace": namespace},
        "spec": {"source": source, "nodes": {"names": nodes}, "pool": "nvme"},
    }


def progress_dataset_body(nodes: list[str], seconds: float, namespace: str = "default") -> dict[str, Any]:
    """One Dataset on every node, which the simulated agents "seed" over `seconds` (reports only)."""
    body = dataset_body(0, nodes, namespace)
    body["metadata"] = {
        "name": "scale-progress",
        "namespace": namespace,
        "annotations": {SIMULATED_SEED_SECONDS_ANNOTATION: str(seconds)},
    }
    return body


def dataset_nodes(index: int, names: list[str], per_dataset: int = 3) -> list[str]:
    """A few nodes per Dataset, spread so that the Datasets together touch many nodes."""
    count = min(per_dataset, len(names))
    return [names[(index * per_dataset + k) % len(names)] for k in range(count)]


# -- apiserver-side request counts -------------------------------------------------------------------

BENCH_PRIORITY_LEVEL = "cairn-scale-bench"


def priority_level_body() -> dict[str, Any]:
    """A priority level for Cairn's components alone, roomy enough that it never queues them."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": BENCH_PRIORITY_LEVEL},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 200,
                "lendablePercent": 0,
                "limitResponse": {
                    "type": "Queue",
                    "queuing": {"queues": 64, "handSize": 6, "queueLengthLimit": 100},
                },
            },
        },
    }


def flow_schema_body(name: str, service_account: str, namespace: str) -> dict[str, Any]:
    """Every request of one ServiceAccount, counted under its own flow schema by the apiserver."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            # Ahead of the default `service-accounts` schema (9000), behind the system ones.
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": BENCH_PRIORITY_LEVEL},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": service_account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of every sample of `name` whose labels include `labels`, in Prometheus text format."""
    wanted = dict(labels or {})
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if all(found.get(key) == value for key, value in wanted.items()):
            total += float(match.group(3))
    return total


# -- one process's CPU and memory, from /proc --------------------------------------------------------


def cpu_seconds(stat_text: str, ticks_per_second: int) -> float:
    """utime + stime of /proc/<pid>/stat, in seconds (the command name may hold spaces and parens)."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    # The split starts at proc(5)'s field 3 (state): utime and stime, fields 14 and 15, are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def vm_rss_bytes(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS line: the process has exited")


def per_node_per_minute(requests: float, nodes: int, seconds: float) -> float:
    return requests / nodes / (seconds / 60)
