"""The simulated-node fixture itself: namespaces, veth reachability, shaping, loop disks, teardown."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import leaks
from tests.testbed.disks import DiskError, LoopDisks, loop_backing_file
from tests.testbed.network import ClusterNetwork, Shaping, ShapingUnsupported, free_subnet, netem_available
from tests.testbed.nodes import (
    STRATEGIC_MERGE,
    MiB,
    SimulatedCluster,
    SimulatedNode,
    make_cluster,
    register_node_object,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and loop devices")

# One-shot TCP sink: prints its port, accepts one connection, replies with the sha256 and length of
# everything received. The timeout keeps a broken test from leaving it waiting forever.
SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.settimeout(60); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
while chunk := c.recv(1 << 16):
    h.update(chunk); n += len(chunk)
c.sendall(f"{h.hexdigest()} {n}".encode()); c.close()
"""

# Sends stdin to host:port and prints the server's reply plus the seconds from connect to reply.
CLIENT = """
import json, socket, sys, time
data = sys.stdin.buffer.read()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
t = time.monotonic(); c.sendall(data); c.shutdown(socket.SHUT_WR)
reply = b""
while chunk := c.recv(4096):
    reply += chunk
digest, n = reply.decode().split()
print(json.dumps({"sha256": digest, "bytes": int(n), "seconds": time.monotonic() - t}))
"""


def start_sink(node: SimulatedNode) -> tuple[subprocess.Popen[Any], int]:
    proc = node.popen([sys.executable, "-c", SERVER, node.ip], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def send_between(src: SimulatedNode, dst: SimulatedNode, payload: bytes) -> dict[str, Any]:
    sink, port = start_sink(dst)
    out = src.run([sys.executable, "-c", CLIENT, dst.ip, str(port)], input=payload, timeout=120).stdout
    assert sink.wait(timeout=30) == 0
    return json.loads(out)


@pytest.fixture
def cluster() -> Iterator[SimulatedCluster]:
    before = leaks.SystemSnapshot.take()
    c = make_cluster(2, disks_per_node=2, disk_size=64 * MiB, subnet=free_subnet())
    try:
        yield c
    finally:
        c.close()
    assert leaks.find_leaks(c.run_id, before) == []


@pytest.mark.root
@needs_root
def test_disks_are_block_devices_of_the_right_size(cluster: SimulatedCluster) -> None:
    assert [len(n.disks) for n in cluster.nodes] == [2, 2]
    for node in cluster.nodes:
        for disk in node.disks:
            assert Path(disk.path).is_block_device()
            assert loop_backing_file(disk.device) == disk.backing_file
            size = node.run(["blockdev", "--getsize64", disk.path], text=True).stdout
            assert int(size) == 64 * MiB
            # Sparse: the image must not have cost 64 MiB of real space.
            assert disk.backing_file.stat().st_blocks * 512 < MiB


@pytest.mark.root
@needs_root
def test_two_nodes_exchange_data_over_their_veth_addresses(cluster: SimulatedCluster) -> None:
    a, b = cluster.nodes
    assert a.ip != b.ip and a.namespace != b.namespace
    payload = os.urandom(MiB)
    result = send_between(a, b, payload)
    assert result["bytes"] == len(payload)
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    # Inside the namespace the node sees only its own eth0 and lo, with its own address.
    addrs = json.loads(a.run(["ip", "-j", "-4", "addr", "show"], text=True).stdout)
    assert {x["ifname"] for x in addrs} == {"lo", "eth0"}
    route = a.run(["ip", "route", "show", "default"], text=True).stdout
    assert f"via {cluster.gateway}" in route


@pytest.mark.root
@needs_root
def test_host_and_nodes_reach_each_other(cluster: SimulatedCluster) -> None:
    node = cluster.nodes[0]
    # Host -> node at the node's IP (the route is the bridge's connected subnet).
    sink, port = start_sink(node)
    with socket.create_connection((node.ip, port), timeout=30) as c:
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(200).decode().split()[1] == "5"
    assert sink.wait(timeout=30) == 0

    # Node -> host at the gateway address, which is where the apiserver will listen.
    with socket.socket() as srv:
        srv.bind((cluster.gateway, 0))
        srv.listen(1)
        srv.settimeout(30)
        got: list[bytes] = []

        def accept() -> None:
            conn, _ = srv.accept()
            with conn:
                got.append(conn.recv(100))
                conn.sendall(b"0 0")

        t = threading.Thread(target=accept)
        t.start()
        node.run([sys.executable, "-c", CLIENT, cluster.gateway, str(srv.getsockname()[1])], input=b"ping")
        t.join(timeout=30)
    assert got == [b"ping"]


@pytest.mark.root
@needs_root
def test_shaping_limits_throughput(cluster: SimulatedCluster) -> None:
    a, b = cluster.nodes
    for node in (a, b):
        node.shape(Shaping(rate="20mbit"))
        inside = node.run(["tc", "qdisc", "show", "dev", "eth0"], text=True).stdout
        outside = subprocess.run(
            ["tc", "qdisc", "show", "dev", node.host_veth], capture_output=True, text=True
        )
        assert "tbf" in inside and "tbf" in outside.stdout
    payload = os.urandom(2 * MiB)
    # 2 MiB at 20 Mbit/s is ~0.84 s; allow a wide margin for tbf's initial burst.
    for src, dst in ((a, b), (b, a)):
        result = send_between(src, dst, payload)
        assert result["sha256"] == hashlib.sha256(payload).hexdigest()
        assert result["seconds"] >= 0.5, f"{src.name}->{dst.name} moved 2 MiB in {result['seconds']:.2f}s"
    # Clearing restores the default qdisc on both ends.
    a.shape(None)
    assert "tbf" not in a.run(["tc", "qdisc", "show", "dev", "eth0"], text=True).stdout


@pytest.mark.root
@needs_root
def test_delay_shaping_or_clear_refusal(cluster: SimulatedCluster) -> None:
    node = cluster.nodes[0]
    if not netem_available():
        # This kernel has no netem: asking for delay must fail before touching the qdiscs.
        node.shape(Shaping(rate="100mbit"))
        with pytest.raises(ShapingUnsupported):
            node.shape(Shaping(rate="100mbit", delay="20ms"))
        assert "tbf" in node.run(["tc", "qdisc", "show", "dev", "eth0"], text=True).stdout
        return
    node.shape(Shaping(rate="100mbit", delay="100ms"))
    qdiscs = node.run(["tc", "qdisc", "show", "dev", "eth0"], text=True).stdout
    assert "netem" in qdiscs and "tbf" in qdiscs
    # Host -> node connect needs one round trip through two delayed hops: >= ~200 ms.
    sink, port = start_sink(node)
    t = time.monotonic()
    with socket.create_connection((node.ip, port), timeout=30) as c:
        rtt = time.monotonic() - t
        c.shutdown(socket.SHUT_WR)
        c.recv(200)
    sink.wait(timeout=30)
    assert rtt >= 0.15


@pytest.mark.root
@needs_root
def test_hot_remove_detaches_the_loop_device(cluster: SimulatedCluster) -> None:
    node = cluster.nodes[1]
    extra = node.add_disk(32 * MiB)
    assert len(node.disks) == 3 and loop_backing_file(extra.device) == extra.backing_file
    victim = node.disks[0]
    node.remove_disk(victim)
    assert loop_backing_file(victim.device) is None
    assert victim.device not in {Path(d).name for d in leaks.loop_devices()}
    assert victim not in node.disks and len(node.disks) == 2
    # The other disks are untouched.
    for disk in node.disks:
        assert loop_backing_file(disk.device) == disk.backing_file
    # Removing a whole node takes its namespace, veth and disks with it.
    gone = cluster.nodes[0]
    gone_disks = list(gone.disks)
    cluster.remove_node(gone)
    assert gone.namespace not in leaks.network_namespaces()
    assert gone.host_veth not in leaks.network_links()
    for disk in gone_disks:
        assert loop_backing_file(disk.device) is None and not disk.backing_file.exists()
    # The guard: a disk set never detaches a loop device backed by a file outside its own directory.
    with tempfile.TemporaryDirectory() as other, pytest.raises(DiskError, match="outside"):
        LoopDisks(Path(other)).detach(extra)
    assert loop_backing_file(extra.device) == extra.backing_file


@pytest.mark.root
@needs_root
def test_close_leaves_nothing_behind() -> None:
    before = leaks.SystemSnapshot.take()
    cluster = make_cluster(2, disks_per_node=2, disk_size=64 * MiB, rate="1gbit", subnet=free_subnet())
    try:
        run_dir = cluster.run_dir
        names = {n.namespace for n in cluster.nodes} | {cluster.network.bridge}
        # A process with a forked child, both of which must die with the group; and a group that
        # ignores SIGTERM, which must be SIGKILLed after the grace period.
        cluster.nodes[0].popen(["sh", "-c", "sleep 300 & sleep 300"])
        cluster.nodes[1].popen(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"])
        deadline = time.monotonic() + 10
        while len(leaks.processes_of_run(cluster.run_id)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # two shells and their four sleeps, once forked
        assert len(leaks.processes_of_run(cluster.run_id)) == 6
        live = leaks.find_leaks(cluster.run_id, before)  # the check does see a live cluster
        for expected in (
            "process",
            "loop device",
            "network namespace",
            f"network link {cluster.network.bridge}",
        ):
            assert any(leak.startswith(expected) for leak in live), (expected, live)
        t = time.monotonic()
        cluster.close(grace=1.0)
        assert time.monotonic() - t < 20
    finally:
        cluster.close(grace=1.0)  # idempotent; also cleans up if an assertion above failed
    assert leaks.find_leaks(cluster.run_id, before) == []
    assert not names & (leaks.network_namespaces() | leaks.network_links())
    assert not run_dir.exists()


@pytest.mark.root
@needs_root
def test_teardown_after_partial_setup_failure() -> None:
    before = leaks.SystemSnapshot.take()
    # A namespace squatting on node1's name makes `ip netns add` fail after node0 and its disk exist;
    # make_cluster must tear down node0, the disk and the squatter (it carries the run's prefix).
    run_id = leaks.new_run_id()
    subprocess.run(["ip", "netns", "add", f"{run_id}-node1"], check=True)
    with pytest.raises(RuntimeError, match="netns add"):
        make_cluster(2, disks_per_node=1, disk_size=8 * MiB, run_id=run_id, subnet=free_subnet())
    assert leaks.find_leaks(run_id, before) == []

    # tc rejecting the shaping fails add_node after the namespace and veth exist.
    net = ClusterNetwork(leaks.new_run_id(), free_subnet())
    try:
        with pytest.raises(RuntimeError, match="tc"):
            net.add_node("a", Shaping(rate="20mbit", burst="plenty"))
    finally:
        net.teardown()
        net.teardown()  # idempotent
    assert leaks.find_leaks(net.run_id, before) == []
    with pytest.raises(ValueError, match="unsupported rate"):
        Shaping(rate="fast")


class FakeCoreV1:
    """Records calls; enough of CoreV1Api for register_node_object."""

    def __init__(self, exists: bool = False) -> None:
        self.exists = exists
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def create_node(self, body: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        self.calls.append(("create_node", body, kw))
        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        return body

    def patch_node(self, name: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("patch_node", body, kw))
        return body

    def patch_node_status(self, name: str, body: Any, **kw: Any) -> Any:
        self.calls.append(("patch_node_status", body, kw))
        return body


@pytest.mark.parametrize("exists", [False, True])
def test_register_node_object_builds_node_and_status(exists: bool) -> None:
    pytest.importorskip("kubernetes")
    node = SimulatedNode(
        name="node1", namespace="ns", ip="10.213.0.11", host_veth="h", node_veth="eth0",
        run_id="r", cluster=None,  # type: ignore[arg-type]
    )  # fmt: skip
    api = FakeCoreV1(exists=exists)
    register_node_object(api, node)  # type: ignore[arg-type]
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_node", *(["patch_node"] if exists else []), "patch_node_status"]
    create = api.calls[0][1]
    assert create["metadata"]["name"] == "node1"
    assert create["metadata"]["labels"] == {
        "kubernetes.io/hostname": "node1",
        "topology.cairn.dev/node": "node1",
    }
    name, status, kw = api.calls[-1]
    assert name == "patch_node_status" and kw == {"_content_type": STRATEGIC_MERGE}
    assert {"type": "InternalIP", "address": "10.213.0.11"} in status["status"]["addresses"]
    assert status["status"]["conditions"][0]["type"] == "Ready"
