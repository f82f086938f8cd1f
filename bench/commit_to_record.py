"""Seconds from a checkpoint's commit to its Checkpoint object, against the policy's settle time.

A simulated trainer writes DCP-shaped checkpoints (shards, then `.metadata`, the commit) into a
staged Cairn volume whose CheckpointPolicy settles for `--settle` seconds; the agent looks for new
checkpoints every `--poll` seconds. The clock starts when `.metadata` is closed and fsynced, and
stops when the bench first sees the Checkpoint (a list every 50 ms). What lies between: the first
sighting (up to one poll period), the settle time (the directory must stay unchanged that long),
the manifest (every byte hashed, BLAKE3, at the lowest priority), and two API writes.

Result: commit_to_record, the median over the policy's settle time. Goal: at most settle plus one
poll interval, so a ratio of at most (settle + poll) / settle (1.4 at the defaults, 5 s and 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from typing import Any

from cairn.api.checkpoint import Checkpoint
from cairn.kube import ResourceClient
from tests.testbed.checkpoints import write_sized_dcp
from tests.testbed.components import running_driver
from tests.testbed.kubelet_standin import standin_claim_volume

from .common import bench_bed, report

MiB = 1024 * 1024
NAMESPACE = "default"
PVC = "bench-commit"
POLICY = "bench-commit"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="checkpoint size (1024)")
    parser.add_argument("--shards", type=int, default=4, help="shard files (4)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="the policy's settleSeconds (5, its default)"
    )
    parser.add_argument("--poll", type=float, default=2.0, help="the agent's poll interval (2, its default)")
    parser.add_argument("--checkpoints", type=int, default=6, help="checkpoints written (6)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    block = os.urandom(64 * MiB)
    waits: list[float] = []

    with bench_bed() as bed:
        cp = bed.control_plane
        policy = {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": POLICY, "namespace": NAMESPACE},
            "spec": {"commit": {"settleSeconds": args.settle}},
        }
        cp.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
        checkpoints = ResourceClient(cp.api_client(), Checkpoint)
        agent_args = (f"--checkpoint-poll-interval={args.poll}",)
        with (
            running_driver(
                bed, "bench-commit", disks=1, disk_size=2 * size + 512 * MiB, agent_args=agent_args
            ) as driver,
            standin_claim_volume(
                driver,
                "bench-commit-trainer",
                2 * size + 256 * MiB,
                pvc=PVC,
                namespace=NAMESPACE,
                policy=POLICY,
            ) as (_volume, staging),
        ):
            for number in range(args.checkpoints):
                step = 100 * (number + 1)
                write_sized_dcp(staging / "checkpoints" / f"step_{step}", size, args.shards, block)
                committed = time.monotonic()
                deadline = committed + 10 * (args.settle + args.poll) + 60
                while True:
                    found = [c for c in checkpoints.list(namespace=NAMESPACE) if c.model.spec.step == step]
                    if found:
                        waits.append(time.monotonic() - committed)
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"step {step} was not recorded within {deadline - committed:.0f} s"
                        )
                    time.sleep(0.05)
                print(f"  step {step}: recorded {waits[-1]:.2f} s after its commit", flush=True)
                # The trainer keeps only its newest, so the volume never fills.
                if number:
                    shutil.rmtree(staging / "checkpoints" / f"step_{step - 100}")
            cp.kubectl("delete", "checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={PVC}", check=False)
        cp.kubectl("delete", "ckptpolicy", POLICY, "-n", NAMESPACE, check=False)

    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "shards": args.shards,
        "settle_s": args.settle,
        "poll_s": args.poll,
        "seconds": [round(w, 2) for w in waits],
        "max_s": round(max(waits), 2),
        "goal_ratio": round((args.settle + args.poll) / args.settle, 3),
    }
    report(
        "commit_to_record",
        statistics.median(waits),
        args.settle,
        "s",
        params,
        goal=f"≤{(args.settle + args.poll) / args.settle:.2f} (settle + one poll interval)",
    )


if __name__ == "__main__":
    main()
