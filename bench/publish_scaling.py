"""NodePublish latency with many volumes on the node, divided by the latency with one.

The node agent finds devices in its own index and checks mounts with a stat, so the cost of
NodePublish should not grow with the number of volumes (TopoLVM issue 1086 saw 400 ms per
lvm call at 100 PVCs). Goal: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cairn.csi.proto import csi_pb2
from tests.testbed.components import mount_capability, start_controller, start_node_agent

from .common import CsiClients, bench_bed, median, report, timed

MiB = 1024 * 1024


class Node:
    def __init__(self, clients: CsiClients, workdir: Path) -> None:
        self.clients = clients
        self.workdir = workdir
        self.volumes: list[str] = []

    def create_and_stage(self, index: int, size: int) -> str:
        response = self.clients.controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=f"bench-publish-{index}",
                capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                volume_capabilities=[mount_capability()],
                parameters={"cairn.dev/pool": "nvme"},
            ),
            timeout=120,
        )
        volume_id = response.volume.volume_id
        staging = self.workdir / "staging" / volume_id
        staging.mkdir(parents=True, exist_ok=True)
        self.clients.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), volume_capability=mount_capability()
            ),
            timeout=120,
        )
        self.publish(volume_id, self.workdir / "pods" / volume_id / "mount")
        self.volumes.append(volume_id)
        return volume_id

    def publish(self, volume_id: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.clients.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(self.workdir / "staging" / volume_id),
                target_path=str(target),
                volume_capability=mount_capability(),
            ),
            timeout=60,
        )

    def unpublish(self, volume_id: str, target: Path) -> None:
        self.clients.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)), timeout=60
        )

    def publish_latencies(self, volume_id: str, rounds: int) -> list[float]:
        samples = []
        for i in range(rounds):
            target = self.workdir / "probe" / f"{volume_id}-{i}"
            samples.append(timed(lambda t=target: self.publish(volume_id, t)))
            self.unpublish(volume_id, target)
        return samples

    def teardown(self) -> None:
        for volume_id in self.volumes:
            self.unpublish(volume_id, self.workdir / "pods" / volume_id / "mount")
            self.clients.node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=volume_id, staging_target_path=str(self.workdir / "staging" / volume_id)
                ),
                timeout=60,
            )
            self.clients.controller.DeleteVolume(
                csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=120
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=60, help="NodePublish calls timed at each point")
    parser.add_argument("--volume-size", type=int, default=16 * MiB)
    args = parser.parse_args()

    with bench_bed() as bed:
        workdir = bed.workdir / "bench-publish"
        disk_size = max(4096 * MiB, (args.volumes + 8) * (args.volume_size + 4 * MiB))
        (node,) = bed.add_nodes(1, disks=1, disk_size=disk_size)
        cp = bed.control_plane
        agent, node_socket = start_node_agent(workdir, bed.run_id, cp.kubeconfigs["cairn-node-agent"], node)
        controller, controller_socket = start_controller(
            workdir, bed.run_id, cp.kubeconfigs["cairn-controller"]
        )
        clients = CsiClients(controller_socket, node_socket)
        subject = Node(clients, workdir)
        try:
            probe = subject.create_and_stage(0, args.volume_size)
            one = subject.publish_latencies(probe, args.rounds)
            for index in range(1, args.volumes):
                subject.create_and_stage(index, args.volume_size)
                if index % 50 == 0:
                    print(f"  {index} volumes staged and published", flush=True)
            many = subject.publish_latencies(probe, args.rounds)
            subject.teardown()
        finally:
            clients.close()
            controller.stop()
            agent.stop()
            shutil.rmtree(workdir / "probe", ignore_errors=True)
    p50_one, p50_many = median(one), median(many)
    print(
        f"NodePublish p50: {p50_one * 1000:.2f} ms with 1 volume, "
        f"{p50_many * 1000:.2f} ms with {args.volumes}"
    )
    report(
        "publish_scaling",
        p50_many,
        p50_one,
        "s",
        {"volumes": args.volumes, "rounds": args.rounds, "volume_size": args.volume_size},
        goal="<= 1.2",
    )


if __name__ == "__main__":
    main()
