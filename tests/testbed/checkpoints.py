"""Checkpoints as a training job writes them, for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


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
