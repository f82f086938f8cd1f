"""Seconds from a checkpoint's commit to its verified S3 copy, through memory→local→S3, against local→S3.

One node with a disk pool and a memory pool, two claims staged side by side, each named by a
CheckpointPolicy with the same S3 target on the bed's MinIO:
- a memory volume whose policy lists tiers [memory, local, s3]: the agent copies each checkpoint,
  verified, to its tier store on the node's disks and uploads it, both at once from memory;
- an NVMe (loop-disk) volume whose policy is the default, the volume's copy then S3.

A simulated trainer writes a DCP-shaped checkpoint of F bytes (shards, then `.metadata`, each
fsynced) into each in turn, alternating which goes first. The clock starts when `.metadata` is
closed and stops when the bench first sees the Checkpoint Tiered (S3 verified; a list every 50 ms).
Both paths share the settle time, the manifest's hashing and the upload; the memory path adds the
copy to the node's disks, beside its upload, on the same two cores.

MinIO runs on this machine, where a real node's S3 is remote: it writes to no disk of the node, and
the node's background work cannot slow it. So MinIO keeps its objects in a tmpfs of its own, and
runs at normal priority, above the agent's copies and uploads (which run at background priority).
A first checkpoint to each, unmeasured, pays for carving the tier store (made on first need).

Result: drain_lag_memory_vs_local, the median over the local path's median. Goal <= 1.2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cairn.api.checkpoint import Checkpoint
from cairn.kube import ResourceClient
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_sized_dcp
from tests.testbed.components import running_driver
from tests.testbed.kubelet_standin import standin_claim_volume

from .checkpoint_stall import quiet_host
from .common import bench_bed, report

MiB = 1024 * 1024
NAMESPACE = "default"
SECRET = "bench-drain-s3"


def policy(bed: TestBed, name: str, bucket: str, settle: float, tiers: list[str] | None) -> dict[str, Any]:
    assert bed.s3 is not None
    spec: dict[str, Any] = {
        "commit": {"settleSeconds": settle},
        "target": {
            "endpoint": bed.s3.endpoint,
            "bucket": bucket,
            "prefix": name,
            "credentialsSecretRef": {"name": SECRET},
        },
        # Only the newest stays anywhere: the volumes, the tier store and the bucket never fill.
        "retention": {"keepMemory": 1, "keepLocal": 1, "keepRemoteLast": 1},
    }
    if tiers is not None:
        spec["tiers"] = tiers
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


@contextlib.contextmanager
def s3_off_the_node(bed: TestBed) -> Iterator[None]:
    """MinIO restarted with its objects in memory: a remote S3 writes to no disk of the node."""
    assert bed.s3 is not None
    data = bed.s3.workdir / "data"
    bed.s3.stop()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0700", "tmpfs", str(data)], check=True)
    try:
        bed.s3.start()
        yield
    finally:
        bed.s3.stop()
        subprocess.run(["umount", str(data)], check=True)


@contextlib.contextmanager
def policies(bed: TestBed, settle: float) -> Iterator[None]:
    assert bed.s3 is not None
    bucket = bed.s3.create_bucket(f"bench-drain-{uuid.uuid4().hex[:8]}")
    cp = bed.control_plane
    cp.kubectl("apply", "-f", "-", input_text=json.dumps(bed.s3.credentials_secret(SECRET, NAMESPACE)))
    for body in (
        policy(bed, "drain-memory", bucket, settle, ["memory", "local", "s3"]),
        policy(bed, "drain-local", bucket, settle, None),
    ):
        cp.kubectl("apply", "-f", "-", input_text=json.dumps(body))
    try:
        yield
    finally:
        for pvc in ("drain-memory", "drain-local"):
            cp.kubectl("delete", "checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={pvc}", check=False)
        cp.kubectl("delete", "ckptpolicy", "drain-memory", "drain-local", "-n", NAMESPACE, check=False)
        cp.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512, help="checkpoint size F (512)")
    parser.add_argument("--shards", type=int, default=4, help="shard files (4)")
    parser.add_argument("--settle", type=float, default=1.0, help="the policies' settleSeconds (1)")
    parser.add_argument("--rounds", type=int, default=5, help="checkpoints written to each volume (5)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one, seconds")
    args = parser.parse_args()
    size = args.size_mib * MiB
    block = os.urandom(64 * MiB)
    # Room for two checkpoints everywhere: the newest, and the one retention has not removed yet.
    volume_size = 2 * size + 256 * MiB
    lags: dict[str, list[float]] = {"drain-memory": [], "drain-local": []}
    agent_args = (
        f"--memory-pool-bytes={volume_size + 64 * MiB}",
        f"--local-tier-bytes={volume_size}",
        "--checkpoint-poll-interval=0.5",
    )

    with (
        bench_bed(with_s3=True) as bed,
        s3_off_the_node(bed),
        policies(bed, args.settle),
    ):
        checkpoints = ResourceClient(bed.control_plane.api_client(), Checkpoint)
        with (
            running_driver(
                bed, "bench-drain", disks=1, disk_size=2 * volume_size + 512 * MiB, agent_args=agent_args
            ) as driver,
            standin_claim_volume(
                driver,
                "bench-drain-memory",
                volume_size,
                pvc="drain-memory",
                namespace=NAMESPACE,
                policy="drain-memory",
                pool="memory",
            ) as (_m, memory),
            standin_claim_volume(
                driver,
                "bench-drain-local",
                volume_size,
                pvc="drain-local",
                namespace=NAMESPACE,
                policy="drain-local",
            ) as (_l, local),
        ):

            def tiered_after(pvc: str, staging: Path, step: int) -> float:
                quiet_host()
                write_sized_dcp(staging / "checkpoints" / f"step_{step}", size, args.shards, block)
                committed = time.monotonic()
                while time.monotonic() - committed < args.timeout:
                    for item in checkpoints.list(namespace=NAMESPACE, label_selector=f"cairn.dev/pvc={pvc}"):
                        status = item.model.status
                        if item.model.spec.step != step:
                            continue
                        if status.phase.value == "Failed":
                            raise RuntimeError(f"{pvc} step {step} failed: {status.reason}: {status.message}")
                        if status.phase.value == "Tiered":
                            return time.monotonic() - committed
                    time.sleep(0.05)
                raise RuntimeError(f"{pvc} step {step} was not Tiered within {args.timeout:.0f} s")

            # Unmeasured: the tier store is carved (lvcreate, mkfs) when the first copy needs it.
            for pvc, staging in (("drain-memory", memory), ("drain-local", local)):
                tiered_after(pvc, staging, 50)
            for number in range(args.rounds):
                step = 100 * (number + 1)
                pair = [("drain-memory", memory), ("drain-local", local)]
                for pvc, staging in pair if number % 2 == 0 else reversed(pair):
                    lags[pvc].append(tiered_after(pvc, staging, step))
                print(
                    f"  step {step}: memory→local→s3 {lags['drain-memory'][-1]:.2f} s, "
                    f"local→s3 {lags['drain-local'][-1]:.2f} s",
                    flush=True,
                )

    median = statistics.median
    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "shards": args.shards,
        "settle_s": args.settle,
        "rounds": args.rounds,
        "memory_path_s": [round(s, 2) for s in lags["drain-memory"]],
        "local_path_s": [round(s, 2) for s in lags["drain-local"]],
        "memory_path": "tmpfs, tiers [memory, local, s3]: verified copy to the tier store, then upload",
        "local_path": "ext4 volume on a loop-disk LV, default tiers: upload from the volume",
        "s3": "MinIO with its objects in a tmpfs, at normal priority (remote S3 stand-in)",
    }
    report(
        "drain_lag_memory_vs_local",
        median(lags["drain-memory"]),
        median(lags["drain-local"]),
        "s",
        params,
        goal="<= 1.2",
    )


if __name__ == "__main__":
    main()
