"""Nothing hangs when the apiserver stops answering: connections that go silent without a reset
(tests/testbed/stall_proxy.py) are cut off by client-side timeouts, the leader steps down before
its renew deadline so a standby takes over with no overlap, and the agent's informer and Lease
come back on fresh connections."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.api.names import NODE_LEASE_PREFIX
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.kube import load_api_client
from tests.testbed.bed import TestBed
from tests.testbed.components import mount_capability, start_controller, start_node_agent
from tests.testbed.controlplane import CAIRN_NAMESPACE
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.stall_proxy import StallingProxy
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
LEADER_ARGS = ("--leader-elect", f"--leader-elect-namespace={CAIRN_NAMESPACE}")


@dataclass
class Rig:
    bed: TestBed
    workdir: Path
    node: SimulatedNode
    proxy: StallingProxy
    processes: list[ManagedProcess]

    def through_proxy(self, identity: str) -> Path:
        """A copy of `identity`'s kubeconfig that reaches the apiserver through the proxy."""
        config = yaml.safe_load(self.bed.control_plane.kubeconfigs[identity].read_text())
        config["clusters"][0]["cluster"]["server"] = self.proxy.url
        path = self.workdir / f"{identity}-via-proxy.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


@pytest.fixture
def rig(bed: TestBed) -> Iterator[Rig]:
    plane = bed.control_plane
    host, port = plane.server_url.removeprefix("https://").rsplit(":", 1)
    proxy = StallingProxy(plane.address, host, int(port))
    (node,) = bed.add_nodes(1, disks=1, disk_size=256 * MiB)
    rig = Rig(bed, bed.workdir / "api-stall", node, proxy, [])
    rig.workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield rig
    finally:
        for process in rig.processes:
            process.stop()
            print(f"\n{process.name} log tail:\n{process.log_tail(12)}")
        proxy.close()
        bed.remove_nodes([node])
        admin = client.CoordinationV1Api(load_api_client(str(plane.kubeconfigs["admin"])))
        with contextlib.suppress(ApiException):  # only the leader test makes one
            admin.delete_namespaced_lease("cairn-controller", CAIRN_NAMESPACE)


def logged(process: ManagedProcess, text: str) -> bool:
    return text in process.log_path.read_text(errors="replace")


def test_a_silent_apiserver_connection_hangs_nothing_and_everything_recovers(rig: Rig) -> None:
    bed = rig.bed
    stalled, _ = start_controller(
        rig.workdir, bed.run_id, rig.through_proxy("cairn-controller"), name="controller-stalled",
        extra_args=LEADER_ARGS,
    )  # fmt: skip
    rig.processes.append(stalled)
    wait_until(lambda: logged(stalled, "elected leader"), 30, "the proxied controller to lead")
    standby, standby_socket = start_controller(
        rig.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-controller"], name="controller-standby",
        extra_args=LEADER_ARGS,
    )  # fmt: skip
    rig.processes.append(standby)
    agent, _ = start_node_agent(rig.workdir, bed.run_id, rig.through_proxy("cairn-node-agent"), rig.node)
    rig.processes.append(agent)
    coordination = client.CoordinationV1Api(load_api_client(str(bed.control_plane.kubeconfigs["admin"])))

    def node_lease_renewed_at() -> object:
        lease = coordination.read_namespaced_lease(NODE_LEASE_PREFIX + rig.node.name, CAIRN_NAMESPACE)
        return lease.spec.renew_time

    wait_until(node_lease_renewed_at, 30, "the agent's node Lease")
    time.sleep(3)  # the agent's informer is now parked in a watch on a proxied connection
    assert not logged(standby, "elected leader")

    rig.proxy.stall()
    stalled_at = time.monotonic()
    renewed_before = node_lease_renewed_at()
    # The leader's renewals now vanish: it must stop within its 10 s renew deadline, and before
    # the standby (which sees the Lease unchanged for its whole 15 s) takes over.
    gave_up = wait_until(lambda: not stalled.alive(), 25, "the stalled leader to step down")
    assert logged(stalled, "could not renew the lease"), stalled.log_tail(10)
    assert not logged(standby, "elected leader"), "two leaders: the standby took over first"
    wait_until(lambda: logged(standby, "elected leader"), 30, "the standby to take over")
    assert gave_up <= 12, f"the leader acted for {gave_up:.0f}s without a renewal"

    rig.proxy.resume()
    resumed_at = time.monotonic()
    # Nothing the agent had open before comes back. Its informer must notice its watch went silent
    # (read timeout above the watch's server-side one) and list again on a new connection.
    stub = csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{standby_socket}"))
    request = csi_pb2.CreateVolumeRequest(
        name="after-the-stall",
        capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
        volume_capabilities=[mount_capability()],
    )

    def created() -> bool:
        try:
            stub.CreateVolume(request, timeout=20)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                raise
            return False
        return True

    wait_until(created, 120, "a volume carved by the agent after the stall", interval=1)
    recovered = time.monotonic() - resumed_at
    wait_until(lambda: node_lease_renewed_at() != renewed_before, 60, "the agent to renew its Lease again")
    print(f"stall: leader stepped down after {gave_up:.1f}s; volume carved {recovered:.0f}s after resume")
    assert time.monotonic() - stalled_at < 200
    assert stalled.proc.returncode == 1


def test_calls_waiting_on_a_frozen_agent_leave_the_controller_answering(rig: Rig) -> None:
    """Every CreateVolume for a node whose agent froze (SIGSTOP: alive, its Lease not yet lapsed)
    waits for that agent. The waits may not take all of the controller's gRPC workers."""
    bed = rig.bed
    controller, socket = start_controller(
        rig.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-controller"], name="controller-waits"
    )
    rig.processes.append(controller)
    agent, _ = start_node_agent(
        rig.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], rig.node
    )
    rig.processes.append(agent)
    channel = grpc.insecure_channel(f"unix://{socket}")
    stub = csi_pb2_grpc.ControllerStub(channel)
    identity = csi_pb2_grpc.IdentityStub(channel)

    def request(index: int) -> csi_pb2.CreateVolumeRequest:
        return csi_pb2.CreateVolumeRequest(
            name=f"frozen-wait-{index}",
            capacity_range=csi_pb2.CapacityRange(required_bytes=4 * MiB),
            volume_capabilities=[mount_capability()],
        )

    stub.CreateVolume(request(0), timeout=60)  # the agent carves: the node is known and has room
    os.killpg(agent.pid, signal.SIGSTOP)
    outcomes: dict[int, str] = {}

    def call(index: int) -> None:
        started = time.monotonic()
        try:
            stub.CreateVolume(request(index), timeout=40)
            outcomes[index] = "ok"
        except grpc.RpcError as error:
            outcomes[index] = f"{error.code().name} after {time.monotonic() - started:.0f}s"

    try:
        callers = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(1, 21)]
        for caller in callers:
            caller.start()
        time.sleep(3)
        started = time.monotonic()
        identity.Probe(csi_pb2.ProbeRequest(), timeout=5)
        stub.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=5)
        answered = time.monotonic() - started
        assert answered < 2, f"Probe and GetCapacity took {answered:.1f}s behind the waiting calls"
        turned_away = [i for i, outcome in outcomes.items() if outcome.startswith("ABORTED after 0s")]
        assert len(turned_away) >= 8, outcomes
    finally:
        os.killpg(agent.pid, signal.SIGCONT)
    for caller in callers:
        caller.join(60)

    def all_created() -> bool:
        for index in range(1, 21):
            try:
                stub.CreateVolume(request(index), timeout=30)
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                return False
        return True

    wait_until(all_created, 120, "every volume carved once the agent thawed", interval=1)
    for index in range(21):
        volume_id = stub.CreateVolume(request(index), timeout=30).volume.volume_id
        stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)
