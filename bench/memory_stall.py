"""How long a trainer waits for a checkpoint on a memory volume, against the same on an NVMe volume.

A simulated trainer writes a DCP-shaped checkpoint of F bytes (`__<rank>_0.distcp` shards, then
`.metadata`), fsyncing each file before closing it as DCP's FileSystemWriter does with
sync_files=True, into two Cairn volumes of the same node staged side by side: one of pool
`memory` (a tmpfs from the agent's `--memory-pool-bytes`) and one of pool `nvme` (an LV on the
bed's loop disk). The time until it may continue is the stall.

- memory_stall_vs_nvme: the median stall on the memory volume over the median on the NVMe volume,
  each round writing to both in alternating order, each write starting once the host has flushed
  what the one before it left dirty. Goal <= 0.3.

The NVMe volume is filled once and emptied first, so no round pays for the loop disk's sparse file
growing under it. A loop disk on this VM's virtual disk is slower than a real NVMe drive, which
flatters the ratio; the memory side's absolute rate is in params to judge it by.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from cairn.csi.proto import csi_pb2
from tests.testbed.components import Driver, mount_capability, running_driver

from .checkpoint_stall import Layout, WriteTiming, prefill, quiet_host, trainer_write
from .common import bench_bed, report

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@contextlib.contextmanager
def staged(driver: Driver, name: str, size: int, pool: str) -> Iterator[Path]:
    capability = mount_capability("" if pool == "memory" else "ext4")
    controller, node = driver.controller_stub(), driver.node_stub()
    volume = controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[capability],
            parameters={"cairn.dev/pool": pool},
        ),
        timeout=120,
    ).volume.volume_id
    staging = driver.workdir / "staging" / volume
    staging.mkdir(parents=True)
    node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume, staging_target_path=str(staging), volume_capability=capability
        ),
        timeout=120,
    )
    # A memory volume shows only where it is published (nothing is mounted at its staging path).
    target = driver.workdir / "pods" / volume
    node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=capability,
        ),
        timeout=120,
    )
    try:
        yield target
    finally:
        with contextlib.suppress(grpc.RpcError):
            node.NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=str(target)), timeout=120
            )
        with contextlib.suppress(grpc.RpcError):
            node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=str(staging)),
                timeout=120,
            )
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mib",
        type=int,
        default=int(os.environ.get("CAIRN_BENCH_CKPT_MIB", 2048)),
        help="checkpoint size F (default 2048, or $CAIRN_BENCH_CKPT_MIB)",
    )
    parser.add_argument("--shards", type=int, default=4, help="__<rank>_0.distcp files per checkpoint")
    parser.add_argument("--metadata-kib", type=int, default=256, help="size of .metadata")
    parser.add_argument("--block-mib", type=int, default=16, help="the trainer's write size")
    parser.add_argument("--rounds", type=int, default=6, help="writes to each volume")
    args = parser.parse_args()

    layout = Layout.dcp(args.size_mib * MiB, args.shards, args.metadata_kib * KiB)
    chunk = memoryview(os.urandom(args.block_mib * MiB))
    volume_size = layout.total + 256 * MiB
    memory_stalls: list[WriteTiming] = []
    nvme_stalls: list[WriteTiming] = []
    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "files": [name for name, _ in layout.files],
        "block_mib": args.block_mib,
        "rounds": args.rounds,
        "trainer_sync": "fsync each file before closing it (DCP sync_files=True)",
        "memory_volume": "tmpfs of the agent's memory pool, size limit F + 256 MiB",
        "nvme_volume": "ext4 on an LV of the node's loop-disk pool, prefilled once",
    }
    with bench_bed() as bed:
        pool_bytes = volume_size + 64 * MiB
        with (
            running_driver(
                bed,
                "bench-memory-stall",
                disks=1,
                disk_size=volume_size + 512 * MiB,
                agent_args=(f"--memory-pool-bytes={pool_bytes}",),
            ) as driver,
            staged(driver, "bench-memory-stall-memory", volume_size, "memory") as memory,
            staged(driver, "bench-memory-stall-nvme", volume_size, "nvme") as nvme,
        ):
            filled, seconds = prefill(nvme, args.block_mib * MiB)
            params["nvme_prefill"] = f"{filled / GiB:.1f} GiB in {seconds:.1f}s"

            def write(root: Path, round_: int, into: list[WriteTiming]) -> None:
                quiet_host()
                directory = root / "checkpoints" / f"step_{round_}"
                into.append(trainer_write(directory, layout, chunk))
                shutil.rmtree(directory)

            for round_ in range(args.rounds):
                # Alternating order: neither volume always writes right after the other.
                pair = [(memory, memory_stalls), (nvme, nvme_stalls)]
                for root, into in pair if round_ % 2 == 0 else reversed(pair):
                    write(root, round_, into)
                print(
                    f"  round {round_}: memory {memory_stalls[-1].seconds:.2f}s, "
                    f"nvme {nvme_stalls[-1].seconds:.2f}s "
                    f"(fsync {nvme_stalls[-1].fsync_seconds:.2f}s)",
                    flush=True,
                )

    median = statistics.median
    memory_stall = median([t.seconds for t in memory_stalls])
    nvme_stall = median([t.seconds for t in nvme_stalls])
    params.update(
        {
            "memory_stall_s": [round(t.seconds, 3) for t in memory_stalls],
            "nvme_stall_s": [round(t.seconds, 3) for t in nvme_stalls],
            "nvme_fsync_share": round(median([t.fsync_seconds / t.seconds for t in nvme_stalls]), 3),
            "memory_mib_per_s": round(layout.total / memory_stall / MiB),
            "nvme_mib_per_s": round(layout.total / nvme_stall / MiB),
        }
    )
    report("memory_stall_vs_nvme", memory_stall, nvme_stall, "s", params, goal="<= 0.3")


if __name__ == "__main__":
    main()
