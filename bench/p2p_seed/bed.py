"""The bench's bed: an origin behind a shaped link of its own, the nodes and their agents."""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.p2p_seed import METRICS_CACHE_SECONDS, NAMESPACE, ORIGIN_PORT, SECRET
from bench.p2p_seed.measure import metric_sum, scrape

# -- the bed: origin, nodes, agents -------------------------------------------------------------------


@dataclass
class Origin:
    node: Any
    process: Any
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"http://{self.node.ip}:{ORIGIN_PORT}"

    def client(self) -> Any:
        from cairn.s3 import s3_client

        return s3_client(self.endpoint, self.access_key, self.secret_key)

    def sent_bytes(self) -> float:
        return metric_sum(scrape(f"{self.endpoint}/minio/v2/metrics/cluster"), "minio_s3_traffic_sent_bytes")

    def sent_bytes_after(self, moment: float) -> float:
        """The counter as it stood at least once after `moment` (monotonic), past MinIO's cache."""
        time.sleep(max(0.0, moment + METRICS_CACHE_SECONDS - time.monotonic()))
        return self.sent_bytes()


def start_origin(bed: Any, workdir: Path) -> Origin:
    """MinIO inside a namespace of its own, listening on that namespace's address only."""
    import secrets

    from tests.testbed.controlplane import http_ok
    from tests.testbed.process import ManagedProcess
    from tests.testbed.tools import tool_path

    node = bed.cluster.add_node("origin")
    access_key, secret_key = "cairn-bench-origin", secrets.token_hex(16)
    argv = node.command(
        [
            tool_path("minio"),
            "server",
            workdir / "data",
            "--address",
            f"{node.ip}:{ORIGIN_PORT}",
            "--console-address",
            f"{node.ip}:{ORIGIN_PORT + 1}",
            "--quiet",
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_"))}
    env |= {
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        "MINIO_PROMETHEUS_AUTH_TYPE": "public",  # the bench reads what the origin itself counts as sent
        "HOME": str(workdir),
    }
    process = ManagedProcess("origin-minio", argv, run_id=bed.run_id, log_dir=workdir / "logs", env=env)
    origin = Origin(node, process, access_key, secret_key)
    try:
        process.wait_until(lambda: http_ok(f"{origin.endpoint}/minio/health/ready"), 60, "ready to serve S3")
    except BaseException:
        process.stop()
        raise
    return origin


def upload_dataset(origin: Origin, bucket: str, prefix: str, size: int, files: int) -> list[tuple[str, int]]:
    """Random bytes (nothing on the path compresses) as `files` objects under <prefix>/data/."""
    s3 = origin.client()
    s3.create_bucket(Bucket=bucket)
    # Anonymous reads, so the bucket URL can be a BEP 19 web seed (a presigned URL names one key only).
    s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": ["*"]},
                        "Action": ["s3:GetObject"],
                        "Resource": [f"arn:aws:s3:::{bucket}/*"],
                    }
                ],
            }
        ),
    )
    sizes = [size // files] * files
    sizes[-1] += size - sum(sizes)
    listing = []
    for index, part in enumerate(sizes):
        path = f"shards/part-{index:04d}.bin"
        s3.put_object(Bucket=bucket, Key=f"{prefix}/data/{path}", Body=os.urandom(part))
        listing.append((path, part))
    return listing


@dataclass
class Swarm:
    """The bed, the origin, N shaped nodes with their agents, and the controller."""

    bed: Any
    workdir: Path
    origin: Origin
    nodes: list[Any]
    bucket: str
    prefix: str
    size: int
    agents: dict[str, Any] = field(default_factory=dict)
    controller: Any = None

    @functools.cached_property
    def api(self) -> Any:
        """One client for the whole run: the watch polls five times a second inside the measured window."""
        from kubernetes import client

        return client.CustomObjectsApi(self.bed.control_plane.api_client())

    def dataset(self, name: str) -> dict[str, Any]:
        from cairn import API_GROUP, API_VERSION

        return self.api.get_namespaced_custom_object(API_GROUP, API_VERSION, NAMESPACE, "datasets", name)

    def s3_spec(self) -> dict[str, Any]:
        return {
            "endpoint": self.origin.endpoint,
            "access_key": self.origin.access_key,
            "secret_key": self.origin.secret_key,
            "bucket": self.bucket,
            "prefix": f"{self.prefix}/data",
        }

    def pids(self) -> dict[str, list[int]]:
        return {
            "agents": [a.pid for a in self.agents.values()],
            "controller": [self.controller.pid] if self.controller else [],
            "minio": [self.origin.process.pid],
        }

    def log_tails(self, lines: int = 6) -> str:
        out = []
        for name, process in [*self.agents.items(), ("controller", self.controller)]:
            if process is not None:
                out.append(f"--- {name}\n{process.log_tail(lines)}")
        return "\n".join(out)


def start_swarm(
    bed: Any,
    workdir: Path,
    origin: Origin,
    link: Any,
    count: int,
    disk_size: int,
    bucket: str,
    prefix: str,
    size: int,
) -> Swarm:
    """`count` nodes with one disk each, shaped to `link`, the origin's keys in a Secret, their agents
    and the controller running (not yet waiting for pools: callers know how much room they need)."""
    from kubernetes import client

    nodes = bed.add_nodes(count, disks=1, disk_size=disk_size)
    for node in nodes:
        node.shape(link)
    swarm = Swarm(bed, workdir, origin, nodes, bucket, prefix, size)
    bed.core_v1().create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=SECRET),
            string_data={"accessKeyId": origin.access_key, "secretAccessKey": origin.secret_key},
        ),
    )
    start_agents(swarm)
    return swarm


def start_agents(swarm: Swarm) -> None:
    """Agents in parallel (each waits seconds for its CSI socket), then the controller."""
    from tests.testbed.components import start_controller, start_node_agent

    kubeconfigs = swarm.bed.control_plane.kubeconfigs
    workdir = swarm.workdir / "cairn"

    def start(node: Any) -> None:
        swarm.agents[node.name], _ = start_node_agent(
            workdir, swarm.bed.run_id, kubeconfigs["cairn-node-agent"], node
        )

    with ThreadPoolExecutor(len(swarm.nodes)) as pool:
        list(pool.map(start, swarm.nodes))
    # The disks are sized to just fit the benchmark's copies, which puts pools above the default
    # eviction watermark; an eviction between rounds would be work no baseline pays for.
    swarm.controller, _ = start_controller(
        workdir,
        swarm.bed.run_id,
        kubeconfigs["cairn-controller"],
        name="controller-seed",
        extra_args=("--no-dataset-eviction",),
    )


def wait_for_pools(swarm: Swarm, needed: int, timeout: float = 180.0) -> None:
    from cairn.api.disk import StorageNode
    from cairn.api.volume import PoolClass
    from cairn.kube import ResourceClient
    from tests.testbed.waiting import wait_until

    storage_nodes = ResourceClient(swarm.bed.control_plane.api_client(), StorageNode)
    names = {n.name for n in swarm.nodes}

    def ready() -> bool:
        fit = {
            item.model.spec.node_name
            for item in storage_nodes.list()
            if item.model.status.ready
            and item.model.status.endpoints.p2p_address
            and any(
                p.pool_class == PoolClass.NVME and p.free_bytes >= needed for p in item.model.status.pools
            )
        }
        return names <= fit

    wait_until(ready, timeout, "every agent to report an nvme pool with room", context=swarm.log_tails)


def stop_cairn(swarm: Swarm) -> None:
    """Datasets first (their volumes are mounted by the agents), then the agents and the controller."""
    if swarm.controller is not None:
        swarm.bed.control_plane.kubectl(
            "delete", "datasets", "--all", "-n", NAMESPACE, "--timeout=180s", check=False
        )
    for process in [*swarm.agents.values(), swarm.controller]:
        if process is not None:
            process.stop()
    swarm.agents.clear()
    swarm.controller = None
