"""Checkpoint tier upload throughput against boto3's `upload_file`, same server, same run.

Both upload the same file to the bed's MinIO. Cairn's uploader also hashes every byte for the
manifest check and sends a SHA-256 per part that the server verifies; boto3 runs with its
defaults (8 MiB parts, 10 threads). Rounds alternate so neither side always runs on a warm cache.
Goal: ratio >= 1.0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from boto3.s3.transfer import TransferConfig

from cairn.node_agent.checkpoints.upload import CheckpointUploader
from cairn.node_agent.manifests import build_manifest
from cairn.s3 import S3Location, s3_client

from .common import bench_bed, report

MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=16)
    args = parser.parse_args()
    size = args.size_mib * MiB

    with bench_bed(with_s3=True) as bed:
        assert bed.s3 is not None
        checkpoint = bed.workdir / "bench-tier" / "step_1"
        checkpoint.mkdir(parents=True)
        with (checkpoint / "__0_0.distcp").open("wb") as shard:
            for _ in range(args.size_mib):
                shard.write(os.urandom(MiB))
        manifest = build_manifest(checkpoint)
        bucket = bed.s3.create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        client = s3_client(
            bed.s3.endpoint, bed.s3.access_key, bed.s3.secret_key, concurrency=args.concurrency
        )
        plain = bed.s3.client()
        cairn, baseline = [], []

        def cairn_round(round_: int) -> None:
            uploader = CheckpointUploader(
                client,
                bed.workdir / f"state-{round_}",
                concurrency=args.concurrency,
                part_size=args.part_mib * MiB,
            )
            started = time.perf_counter()
            uploader.upload(checkpoint, manifest, S3Location(bucket, f"cairn/{round_}"))
            cairn.append(size / (time.perf_counter() - started) / MiB)

        def boto3_round(round_: int) -> None:
            started = time.perf_counter()
            plain.upload_file(
                str(checkpoint / "__0_0.distcp"), bucket, f"boto3/{round_}", Config=TransferConfig()
            )
            baseline.append(size / (time.perf_counter() - started) / MiB)

        for round_ in range(args.rounds):
            # Whoever goes second meets the first one's write-back; take turns going first.
            order = (cairn_round, boto3_round) if round_ % 2 == 0 else (boto3_round, cairn_round)
            for run in order:
                run(round_)
            print(
                f"  round {round_}: cairn {cairn[-1]:.0f} MiB/s, boto3 upload_file {baseline[-1]:.0f} MiB/s",
                flush=True,
            )
    report(
        "tier_upload",
        statistics.median(cairn),
        statistics.median(baseline),
        "MiB/s",
        {
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "part_mib": args.part_mib,
        },
        goal=">= 1.0",
    )


if __name__ == "__main__":
    main()
