"""What a pod's reads and writes through a published Cairn volume get, against the disk beneath.

One simulated node with two loop disks of the same size on the same host filesystem: one is the
agent's nvme pool, the other is left raw. A Cairn volume is created, staged and published as a
kubelet would, once as ext4 (a file in the mount) and once as a raw block volume (the published
device node). fio (Debian's, libaio, O_DIRECT) runs each pattern against the raw disk and both
volumes in turn, the order rotating every round, after every target was written through once so no
read meets a hole:

- seq_write, seq_read: 1 MiB blocks, 16 in flight;
- rand_write, rand_read: 4 KiB blocks, 32 in flight.

Results: data_path_<pattern> (the ext4 volume) and data_path_block_<pattern> (the block volume),
each the volume's throughput over the raw disk's, median of the rounds. Goal >= 0.98.

In the loop activation mode (kernels without device-mapper, like this one) a volume is a loop
device with direct I/O over its byte range of the pool disk; with device-mapper it is a linear
table, and the same bench measures that path where the kernel has it. `--bed-direct-io` attaches
the bed's own disks with direct I/O too (as a real NVMe has no host page cache beneath it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from cairn.csi.proto import csi_pb2
from tests.testbed.components import block_capability, mount_capability, running_driver
from tests.testbed.kubelet_standin import KubeletStandIn

from .common import bench_bed, report

MiB = 1024 * 1024
GiB = 1024 * MiB

PATTERNS: dict[str, list[str]] = {
    "seq_write": ["--rw=write", "--bs=1M", "--iodepth=16"],
    "seq_read": ["--rw=read", "--bs=1M", "--iodepth=16"],
    "rand_write": ["--rw=randwrite", "--bs=4k", "--iodepth=32"],
    "rand_read": ["--rw=randread", "--bs=4k", "--iodepth=32"],
}


def fio(target: str, size: int, pattern: list[str], seconds: float) -> dict[str, float]:
    """Bytes and operations per second of one fio job on `target`."""
    argv = [
        "fio",
        "--name=bench",
        f"--filename={target}",
        f"--size={size}",
        "--ioengine=libaio",
        "--direct=1",
        "--time_based",
        f"--runtime={seconds}",
        "--ramp_time=1",
        "--output-format=json",
        *pattern,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] else job["read"]
    return {"bytes_per_s": float(side["bw_bytes"]), "iops": float(side["iops"])}


def fill(target: str, size: int) -> None:
    """Write every byte once, so reads meet data (a raw loop disk's holes would read for free)."""
    subprocess.run(
        [
            *("fio", "--name=fill", f"--filename={target}", f"--size={size}", "--rw=write", "--bs=4M"),
            *("--ioengine=libaio", "--direct=1", "--iodepth=4", "--output-format=terse"),
        ],
        capture_output=True,
        check=True,
        timeout=600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes each job spans (1024)")
    parser.add_argument("--seconds", type=float, default=6.0, help="each fio job's measured time (6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each in another order (3)")
    parser.add_argument("--bed-direct-io", action="store_true", help="attach the bed's disks with direct I/O")
    args = parser.parse_args()
    if shutil.which("fio") is None:
        raise SystemExit("fio is not installed: make system-deps installs it")
    size = args.size_mib * MiB
    volume_bytes = size + 256 * MiB  # ext4's journal, inode tables and reserve beside fio's file
    disk_size = 2 * volume_bytes + 256 * MiB  # both volumes, plus LVM's metadata and the replica store

    with bench_bed() as bed:
        bed.cluster.disks.direct_io = args.bed_direct_io
        with running_driver(bed, "bench-data-path", disks=1, disk_size=disk_size) as driver:
            raw = bed.cluster.disks.attach(disk_size, "bench-data-path-raw")
            standin = KubeletStandIn(driver.node_socket, driver.workdir)
            controller = driver.controller_stub()
            created = []
            try:

                def create(name: str, capability: csi_pb2.VolumeCapability) -> str:
                    request = csi_pb2.CreateVolumeRequest(
                        name=name,
                        capacity_range=csi_pb2.CapacityRange(required_bytes=volume_bytes),
                        volume_capabilities=[capability],
                        parameters={"cairn.dev/pool": "nvme"},
                    )
                    volume_id = controller.CreateVolume(request, timeout=120).volume.volume_id
                    created.append(volume_id)
                    return volume_id

                fs_volume = create("bench-data-path-fs", mount_capability())
                mount = standin.publish(fs_volume, standin.stage(fs_volume))
                block_volume = create("bench-data-path-block", block_capability())
                block_target = driver.workdir / "bench-data-path-device"
                standin.node().NodePublishVolume(
                    csi_pb2.NodePublishVolumeRequest(
                        volume_id=block_volume,
                        target_path=str(block_target),
                        volume_capability=block_capability(),
                    ),
                    timeout=60,
                )
                standin.published.append((block_volume, block_target))
                targets = {"raw": raw.path, "fs": str(Path(mount) / "fio.dat"), "block": str(block_target)}
                for target in targets.values():
                    fill(target, size)
                samples: dict[str, dict[str, list[dict[str, float]]]] = {
                    pattern: {name: [] for name in targets} for pattern in PATTERNS
                }
                names = list(targets)
                for round_ in range(args.rounds):
                    order = names[round_ % len(names) :] + names[: round_ % len(names)]
                    for pattern, options in PATTERNS.items():
                        for name in order:
                            samples[pattern][name].append(fio(targets[name], size, options, args.seconds))
                        line = ", ".join(
                            f"{name} {samples[pattern][name][-1]['bytes_per_s'] / MiB:.0f} MiB/s"
                            for name in names
                        )
                        print(f"  round {round_} {pattern}: {line}", flush=True)
            finally:
                standin.release_all()
                for volume_id in created:
                    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=120)
                bed.cluster.disks.detach(raw, delete_file=True)

    def medians(pattern: str, name: str) -> dict[str, float]:
        runs = samples[pattern][name]
        return {key: statistics.median(run[key] for run in runs) for key in ("bytes_per_s", "iops")}

    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "seconds_per_job": args.seconds,
        "rounds": args.rounds,
        "bed_direct_io": args.bed_direct_io,
        "fio": {p: {n: medians(p, n) for n in targets} for p in PATTERNS},
        "patterns": {p: " ".join(o) for p, o in PATTERNS.items()},
    }
    for pattern in PATTERNS:
        raw_rate = medians(pattern, "raw")["bytes_per_s"]
        report(
            f"data_path_{pattern}",
            medians(pattern, "fs")["bytes_per_s"],
            raw_rate,
            "B/s",
            params,
            goal="≥0.98",
        )
        report(
            f"data_path_block_{pattern}",
            medians(pattern, "block")["bytes_per_s"],
            raw_rate,
            "B/s",
            params,
            goal="≥0.98",
        )


if __name__ == "__main__":
    main()
