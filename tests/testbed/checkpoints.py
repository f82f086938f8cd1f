"""Checkpoints as a training job writes them, for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_dcp(directory: Path, shard_bytes: list[int], metadata_bytes: int = 4096) -> dict[str, bytes]:
    """A PyTorch DCP-shaped checkpoint: random shards first, `.metadata` last, as DCP writes them.

    Returns what was written, by file name, for comparing with a restored or uploaded copy.
    """
    directory.mkdir(parents=True)
    written = {}
    for rank, size in enumerate(shard_bytes):
        written[f"__{rank}_0.distcp"] = data = os.urandom(size)
        (directory / f"__{rank}_0.distcp").write_bytes(data)
    written[".metadata"] = metadata = os.urandom(metadata_bytes)
    (directory / ".metadata").write_bytes(metadata)
    return written


def write_sized_dcp(directory: Path, total: int, shards: int, block: bytes) -> None:
    """A DCP-shaped checkpoint of `total` bytes in `shards` files, then `.metadata`, each fsynced as
    DCP's writer does with sync_files. The shards repeat `block` (random bytes): nothing on Cairn's
    path compresses or deduplicates, and gigabytes need not come from /dev/urandom."""
    directory.mkdir(parents=True)
    for rank in range(shards):
        left = total // shards
        with open(directory / f"__{rank}_0.distcp", "wb") as out:
            while left:
                left -= out.write(memoryview(block)[: min(left, len(block))])
            out.flush()
            os.fsync(out.fileno())
    with open(directory / ".metadata", "wb") as out:
        out.write(os.urandom(4096))
        out.flush()
        os.fsync(out.fileno())


def s3_checkpoint_policy(
    name: str,
    namespace: str,
    *,
    endpoint: str,
    bucket: str,
    secret: str,
    prefix: str = "runs",
    retention: dict[str, int] | None = None,
    settle_seconds: int = 1,
) -> dict[str, Any]:
    """A CheckpointPolicy tiering to `bucket` on the bed's S3 server with the keys in Secret `secret`."""
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "commit": {"settleSeconds": settle_seconds},
            "target": {
                "endpoint": endpoint,
                "bucket": bucket,
                "prefix": prefix,
                "credentialsSecretRef": {"name": secret},
            },
            "retention": retention or {"keepLocal": 2},
        },
    }


def dcp_writer_script(directory: str, steps: list[int], *, shards: int, shard_mib: int) -> str:
    """A shell loop for a trainer pod: DCP-shaped checkpoints of `steps` under `directory`, each
    shard of random bytes first and `.metadata` (the commit marker) last, as DCP writes them."""
    return (
        f"for step in {' '.join(map(str, steps))}; do d={directory}/step_$step; mkdir -p $d; "
        f"r=0; while [ $r -lt {shards} ]; do "
        f"dd if=/dev/urandom of=$d/__${{r}}_0.distcp bs=1M count={shard_mib} 2>/dev/null; r=$((r+1)); done; "
        "echo meta-$step > $d/.metadata; sync; echo wrote $d; done"
    )
