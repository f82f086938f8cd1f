"""CreateVolume-to-Ready latency through the controller, against a bare lvcreate of the same sizes.

Both run in the same session on loop disks of the same simulated node. The Cairn path adds the
kube-apiserver round trips (LocalVolume create, the agent's watch, status patch), activation
and the zeroing of a new LV's extents; the baseline is lvm alone, with the same device filter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

from cairn.csi.proto import csi_pb2
from cairn.node_agent.lvm.report import device_filter_config
from tests.testbed.components import mount_capability, start_controller, start_node_agent

from .common import CsiClients, bench_bed, percentile, report, timed

MiB = 1024 * 1024


def bare_lvcreate_latencies(device: str, sizes: list[int]) -> list[float]:
    """lvcreate alone, as the loop activation mode runs it, on its own VG."""
    # The same device filter the agent gives lvm, so both sides scan exactly one disk.
    config = device_filter_config([device])
    with tempfile.TemporaryDirectory() as system_dir:
        env = {**os.environ, "LVM_SYSTEM_DIR": system_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"}

        def lvm(*args: str) -> None:
            subprocess.run(
                ["lvm", args[0], "--driverloaded", "n", "--config", config, *args[1:]],
                check=True,
                capture_output=True,
                env=env,
            )

        def lvcreate(name: str, size: int) -> None:
            lvm("lvcreate", "-an", "-Zn", "--alloc", "contiguous", "-L", f"{size}b", "-n", name, "benchbare")

        lvm("pvcreate", device)
        lvm("vgcreate", "benchbare", device)
        try:
            lvcreate("warmup", sizes[0])
            lvm("lvremove", "-f", "benchbare/warmup")
            return [timed(lambda i=i, size=size: lvcreate(f"lv{i}", size)) for i, size in enumerate(sizes)]
        finally:
            lvm("vgremove", "-f", "benchbare")
            lvm("pvremove", device)


def create_volume(clients: CsiClients, name: str, size: int) -> str:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=size),
        volume_capabilities=[mount_capability()],
        parameters={"cairn.dev/pool": "nvme"},
    )
    return clients.controller.CreateVolume(request, timeout=120).volume.volume_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=100)
    args = parser.parse_args()
    sizes = [(16 + 16 * (i % 4)) * MiB for i in range(args.volumes)]

    with bench_bed() as bed:
        workdir = bed.workdir / "bench-create"
        disk_size = sum(sizes) + 512 * MiB
        (node,) = bed.add_nodes(1, disks=2, disk_size=disk_size)
        _pool_disk, bare_disk = node.disks
        baseline = bare_lvcreate_latencies(bare_disk.path, sizes)

        cp = bed.control_plane
        agent, node_socket = start_node_agent(workdir, bed.run_id, cp.kubeconfigs["cairn-node-agent"], node)
        controller, controller_socket = start_controller(
            workdir, bed.run_id, cp.kubeconfigs["cairn-controller"]
        )
        clients = CsiClients(controller_socket, node_socket)
        created: list[str] = []
        cairn: list[float] = []
        try:
            # One unmeasured call first, as for any benchmark: it pays the agent's one-time costs
            # (first lvm reports, gRPC channel set-up) that no steady-state create sees.
            warmup = create_volume(clients, "bench-create-warmup", sizes[0])
            clients.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=warmup), timeout=120)
            for i, size in enumerate(sizes):
                started = time.perf_counter()
                created.append(create_volume(clients, f"bench-create-{i}", size))
                cairn.append(time.perf_counter() - started)
            for volume_id in created:
                clients.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=120)
        finally:
            clients.close()
            controller.stop()
            agent.stop()

    slowest = sorted(range(len(cairn)), key=lambda i: cairn[i])[-3:]
    print("slowest creates: " + ", ".join(f"#{i} {cairn[i] * 1000:.0f} ms" for i in reversed(slowest)))
    params = {"volumes": args.volumes, "sizes_mib": sorted({s // MiB for s in sizes})}
    for q in (50, 99):
        value, base = percentile(cairn, q), percentile(baseline, q)
        print(f"CreateVolume-to-Ready p{q}: {value * 1000:.1f} ms; bare lvcreate p{q}: {base * 1000:.1f} ms")
        report(f"create_latency_p{q}", value, base, "s", params)


if __name__ == "__main__":
    main()
