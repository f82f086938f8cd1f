"""A node dies mid-dataset: its Lease expires, the rest complete, and deleting its Node releases it.

Three simulated nodes with agents renewing 6-second Leases, one controller. One target dies the
hard way (its agent killed, its disks and network namespace gone, as a machine that loses power),
while a dataset is on its way and while a volume on it waits to be deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cairn.api.names import TOPOLOGY_KEY
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from tests.testbed.bed import TestBed
from tests.testbed.components import mount_capability, start_controller, start_node_agent
from tests.testbed.datasets import s3_dataset
from tests.testbed.network import Shaping
from tests.testbed.nodes import SimulatedNode, unregister_node_object
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
DATASET_BYTES = 96 * MiB
LEASE_SECONDS = 6


@dataclass
class Nodes:
    bed: TestBed
    workdir: Path
    nodes: list[SimulatedNode]
    agents: dict[str, ManagedProcess] = field(default_factory=dict)
    controller: ManagedProcess | None = None
    socket: Path | None = None
    bucket: str = ""

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def get(self, *args: str) -> dict:
        result = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def controller_stub(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{self.socket}"))


@pytest.fixture(scope="module")
def cluster(bed: TestBed) -> Iterator[Nodes]:
    assert bed.s3 is not None
    workdir = bed.workdir / "node-loss"
    nodes = bed.add_nodes(3, disks=1, disk_size=512 * MiB)
    cluster = Nodes(bed, workdir, nodes)
    cluster.bucket = bed.s3.create_bucket(f"node-loss-{bed.run_id[:8]}")
    bed.control_plane.kubectl(
        "apply", "-f", "-", input_text=json.dumps(bed.s3.credentials_secret("node-loss-s3", NAMESPACE))
    )
    gone: list[SimulatedNode] = []
    try:
        for node in nodes:
            node.shape(Shaping(rate="120mbit"))
            cluster.agents[node.name], _ = start_node_agent(
                workdir,
                bed.run_id,
                bed.control_plane.kubeconfigs["cairn-node-agent"],
                node,
                extra_args=("--node-lease-seconds", str(LEASE_SECONDS)),
            )
        cluster.controller, cluster.socket = start_controller(
            workdir,
            bed.run_id,
            bed.control_plane.kubeconfigs["cairn-controller"],
            name="controller-node-loss",
        )
        yield cluster
    finally:
        print("\n" + cluster.kubectl("get", "datasets,storagenodes", "-n", NAMESPACE, check=False).stdout)
        try:
            cluster.kubectl("delete", "dataset", "loss", "-n", NAMESPACE, "--timeout=50s", check=False)
        except subprocess.TimeoutExpired:  # a failed test can leave copies no agent removes; go on
            print("dataset loss not deleted in time; its copies go with the nodes")
        for process in [*cluster.agents.values(), cluster.controller]:
            if process is not None:
                process.stop()
                print(f"\n{process.name} log tail:\n{process.log_tail(8)}")
        gone = [n for n in nodes if n not in bed.cluster.nodes]
        bed.remove_nodes([n for n in nodes if n not in gone])
        for node in gone:
            unregister_node_object(bed.core_v1(), node.name)
            cluster.kubectl("delete", "storagenode", node.name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "secret", "node-loss-s3", "-n", NAMESPACE, check=False)
        client = bed.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=cluster.bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=cluster.bucket)


def test_a_dead_target_is_planned_out_and_deleting_its_node_releases_what_waited_on_it(
    cluster: Nodes,
) -> None:
    bed = cluster.bed
    assert bed.s3 is not None
    client = bed.s3.client()
    for index in range(4):
        client.put_object(
            Bucket=cluster.bucket, Key=f"corpus/part-{index}.bin", Body=os.urandom(DATASET_BYTES // 4)
        )
    names = [n.name for n in cluster.nodes]
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            s3_dataset(
                "loss", NAMESPACE, f"s3://{cluster.bucket}/corpus", bed.s3.endpoint, "node-loss-s3", names
            )
        ),
    )
    wait_until(
        lambda: cluster.get("dataset", "loss", "-n", NAMESPACE).get("status", {}).get("parts"), 180, "a part"
    )
    seeder = cluster.get("dataset", "loss", "-n", NAMESPACE)["status"]["seeder"]
    victim = next(n for n in cluster.nodes if n.name != seeder)

    # Something that waits on the victim: a volume there, and its deletion.
    created = cluster.controller_stub().CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name="on-the-victim",
            capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
            volume_capabilities=[mount_capability()],
            accessibility_requirements=csi_pb2.TopologyRequirement(
                requisite=[csi_pb2.Topology(segments={TOPOLOGY_KEY: victim.name})]
            ),
        ),
        timeout=60,
    )
    volume = created.volume.volume_id

    def phase() -> str:
        reports = cluster.get("dataset", "loss", "-n", NAMESPACE).get("status", {}).get("nodes", {})
        return str(reports.get(victim.name, {}).get("phase", ""))

    # Downloading is written the moment the victim joins; its progress only every few seconds
    # (datasets/steps.report_due), by when 96 MiB on this bed may be all there.
    wait_until(lambda: phase() == "Downloading", 180, f"{victim.name} to be part way through")
    assert phase() == "Downloading", (
        "the victim finished before it died; the test did not kill it mid-dataset"
    )
    agent = cluster.agents.pop(victim.name)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.proc.wait(10)
    agent.stop()
    bed.cluster.remove_node(victim)  # its disks and network namespace go with it

    # The Lease stops: the node is passed over, and the dataset completes on the other two.
    def marked_dead() -> bool:
        status = cluster.get("storagenode", victim.name).get("status", {})
        return status.get("ready") is False and any(
            c["type"] == "AgentLease" and c["reason"] == "LeaseExpired" for c in status.get("conditions", [])
        )

    wait_until(marked_dead, 60, f"StorageNode {victim.name} to be marked dead")

    def complete() -> dict:
        status = cluster.get("dataset", "loss", "-n", NAMESPACE).get("status", {})
        return status if status.get("phase") == "Ready" else {}

    wait_until(complete, 300, "the dataset to complete without the dead node")
    status = complete()
    assert status["ready"] == "2/2" and victim.name not in status["targetNodes"], status
    copies = [v for v in cluster.get("localvolumes").get("items", []) if v["spec"]["nodeName"] == victim.name]
    assert {v["metadata"]["name"] for v in copies} >= {volume}, (
        "the victim's volumes are gone before its Node"
    )

    # Deleting a volume on a dead node waits for an agent that is not there.
    with pytest.raises(grpc.RpcError) as waiting:
        cluster.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=10)
    assert waiting.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The Node goes: everything that waited on it is released without its agent.
    unregister_node_object(bed.core_v1(), victim.name)
    wait_until(
        lambda: (
            not [
                v
                for v in cluster.get("localvolumes").get("items", [])
                if v["spec"]["nodeName"] == victim.name
            ]
        ),
        60,
        f"{victim.name}'s LocalVolumes to be released",
    )
    cluster.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)
    reasons = [e["reason"] for e in cluster.get("events", "-n", NAMESPACE).get("items", [])]
    assert "LeaseExpired" in reasons
    lost = cluster.get("storagenode", victim.name).get("status", {}).get("conditions", [])
    assert any(c["type"] == "AgentLease" and c["reason"] == "NodeLost" for c in lost), lost
    final = cluster.get("dataset", "loss", "-n", NAMESPACE)["status"]
    assert victim.name not in final.get("nodes", {}) and final["phase"] == "Ready"
