"""Simulated nodes: a network namespace with its own loop disks, and the processes run inside it.

There is no kubelet, so a "node" is just enough of one for Cairn's node agent: an IP address on the
cluster bridge, block devices, and a Kubernetes Node object (see `register_node_object`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.testbed import leaks
from tests.testbed.disks import LoopDisk, LoopDisks
from tests.testbed.network import DEFAULT_SUBNET, ClusterNetwork, NodeLink, Shaping
from tests.testbed.process import stop_process

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api, V1Node

MiB = 1024 * 1024
TOPOLOGY_LABEL = "topology.cairn.dev/node"
# Addresses and conditions are lists keyed by "type"; a strategic merge updates entries in place.
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


@dataclass(eq=False)  # identity semantics: a node is a live resource, usable as a dict key
class SimulatedNode:
    name: str
    namespace: str
    ip: str
    host_veth: str
    node_veth: str
    run_id: str
    cluster: SimulatedCluster = field(repr=False)
    disks: list[LoopDisk] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """argv wrapped to run inside this node's network namespace.

        nsenter switches only the network namespace. `ip netns exec` would also give the command a
        private mount namespace, hiding its mounts from the host, as a kubelet's mount propagation
        never would: a node agent's NodeStage/NodePublish mounts must be visible to the bed.
        """
        return ["nsenter", f"--net=/run/netns/{self.namespace}", "--", *map(str, argv)]

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside the namespace, in its own session, with a run-tagged environment.

        nsenter execs the command in place, so the returned pid is the command's own.
        """
        kw["env"] = leaks.process_env(self.run_id, kw.get("env"))
        kw["start_new_session"] = True
        proc = subprocess.Popen(self.command(argv), **kw)
        self.processes.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        input: str | bytes | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Like subprocess.run inside the namespace; output is captured unless stdout/stderr are given.

        On timeout the whole process group is killed, not just the leader.
        """
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        # Never let a command read the test runner's own stdin.
        kw["stdin"] = subprocess.PIPE if input is not None else kw.get("stdin", subprocess.DEVNULL)
        proc = self.popen(argv, **kw)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, self.run_id, grace=1.0)
            raise
        finally:
            if proc.poll() is not None:
                self.processes.remove(proc)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def add_disk(self, size_bytes: int, name: str | None = None) -> LoopDisk:
        disk = self.cluster.disks.attach(size_bytes, name or f"{self.name}-disk{self._next_disk_no()}")
        self.disks.append(disk)
        return disk

    def _next_disk_no(self) -> int:
        # A pulled disk keeps its file (a pulled disk still exists), so its name stays taken.
        used = {d.name for d in self.cluster.disks.disks}
        run_dir = self.cluster.disks.run_dir
        return next(
            i
            for i in itertools.count()
            if f"{self.name}-disk{i}" not in used and not (run_dir / f"{self.name}-disk{i}.img").exists()
        )

    def remove_disk(self, disk: LoopDisk, *, delete_file: bool = False) -> None:
        """Hot-remove: detach the loop device; anything using it sees the disk vanish."""
        self.cluster.disks.detach(disk, delete_file=delete_file)
        self.disks.remove(disk)

    def shape(self, shaping: Shaping | None) -> None:
        self.cluster.network.shape(self.name, shaping)

    def stop_processes(self, grace: float = 5.0) -> None:
        for proc in reversed(self.processes):
            stop_process(proc, self.run_id, grace)
        self.processes.clear()


class SimulatedCluster:
    """K simulated nodes on one bridge, sharing a run id and a run directory for disk images."""

    def __init__(
        self,
        run_id: str | None = None,
        *,
        run_dir: Path | None = None,
        subnet: str = DEFAULT_SUBNET,
        instance: str = "",
    ) -> None:
        self.run_id = run_id or leaks.new_run_id()
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix=f"{self.run_id}-", dir="/var/tmp"))
        self.network = ClusterNetwork(self.run_id, subnet, instance)
        self.disks = LoopDisks(self.run_dir / "disks")
        self.nodes: list[SimulatedNode] = []

    @property
    def gateway(self) -> str:
        """Host address on the cluster bridge; the apiserver must listen here for nodes to reach it."""
        return self.network.gateway

    def node(self, name: str) -> SimulatedNode:
        return next(n for n in self.nodes if n.name == name)

    def add_node(
        self,
        name: str | None = None,
        *,
        disks: int = 0,
        disk_size: int = 64 * MiB,
        shaping: Shaping | None = None,
    ) -> SimulatedNode:
        name = name or f"node{len(self.nodes)}"
        link: NodeLink = self.network.add_node(name, shaping)
        node = SimulatedNode(
            name=name,
            namespace=link.namespace,
            ip=link.ip,
            host_veth=link.host_veth,
            node_veth=link.node_veth,
            run_id=self.run_id,
            cluster=self,
        )
        self.nodes.append(node)
        for _ in range(disks):
            node.add_disk(disk_size)
        return node

    def remove_node(self, node: SimulatedNode, grace: float = 5.0) -> None:
        """Take a node away entirely (a machine dying): its processes, disks and network go."""
        node.stop_processes(grace)
        for disk in list(node.disks):
            node.remove_disk(disk, delete_file=True)
        self.network.remove_node(node.name)
        self.nodes.remove(node)

    def close(self, grace: float = 5.0) -> None:
        """Stop processes (SIGTERM, SIGKILL after `grace` s), detach disks, delete links and namespaces.
        Idempotent; raises at the end if any step failed, after attempting all of them."""
        errors: list[str] = []
        # Processes first: they hold namespaces alive and may hold loop devices open.
        for node in self.nodes:
            node.stop_processes(grace)
        for step in (self.disks.cleanup, self.network.teardown):
            try:
                step()
            except Exception as e:  # keep going: a failed step must not leak the others
                errors.append(f"{step.__qualname__}: {e}")
        for node in self.nodes:
            node.disks.clear()
        self.nodes.clear()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("cluster teardown incomplete: " + "; ".join(errors))

    def __enter__(self) -> SimulatedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_cluster(
    nodes: int,
    disks_per_node: int = 0,
    disk_size: int = 64 * MiB,
    *,
    rate: str | None = None,
    delay: str | None = None,
    burst: str | None = None,
    run_id: str | None = None,
    run_dir: Path | None = None,
    subnet: str = DEFAULT_SUBNET,
) -> SimulatedCluster:
    """Build a cluster of `nodes` nodes named node0..node{K-1}; on any failure, tear down what exists."""
    # Validate shaping before the cluster makes its run directory.
    shaping = Shaping(rate=rate, delay=delay, burst=burst) if (rate or delay) else None
    cluster = SimulatedCluster(run_id, run_dir=run_dir, subnet=subnet)
    try:
        cluster.network.setup()
        for _ in range(nodes):
            cluster.add_node(disks=disks_per_node, disk_size=disk_size, shaping=shaping)
    except BaseException:
        cluster.close()
        raise
    return cluster


def node_object_body(node: SimulatedNode) -> dict[str, Any]:
    """Node manifest (metadata + spec only; the apiserver ignores status on create)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {"kubernetes.io/hostname": node.name, TOPOLOGY_LABEL: node.name},
        },
    }


def node_status_patch(node: SimulatedNode, *, ready: bool = True) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Room the scheduler can place pods into (there is no kubelet to report it).
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    status: dict[str, Any] = {
        "addresses": [
            {"type": "InternalIP", "address": node.ip},
            {"type": "Hostname", "address": node.name},
        ],
        "capacity": resources,
        "allocatable": resources,
    }
    if ready:
        # Without a kubelet nothing else reports readiness; schedulers skip nodes that are not Ready.
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "CairnTestbed",
                "message": "simulated node",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ]
    return {"status": status}


def register_node_object(core_v1_api: CoreV1Api, node: SimulatedNode, *, ready: bool = True) -> V1Node:
    """Create the Kubernetes Node for `node` and set its addresses (status is a subresource, so
    create_node drops it and a second call to patch_node_status is needed). Re-registering an
    existing Node updates its labels instead of failing.

    The patches name their content type explicitly: kubernetes client 37 otherwise labels a dict body
    as application/json-patch+json, which the apiserver rejects for an object.
    """
    from kubernetes.client.exceptions import ApiException

    body = node_object_body(node)
    try:
        core_v1_api.create_node(body)
    except ApiException as e:
        if e.status != 409:
            raise
        labels = {"metadata": {"labels": body["metadata"]["labels"]}}
        core_v1_api.patch_node(node.name, labels, _content_type=STRATEGIC_MERGE)
    return core_v1_api.patch_node_status(
        node.name, node_status_patch(node, ready=ready), _content_type=STRATEGIC_MERGE
    )


def unregister_node_object(core_v1_api: CoreV1Api, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core_v1_api.delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise
