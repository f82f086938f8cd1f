"""Manifest hashing: BLAKE3 (as the agent runs it) against SHA-256 over the same file, same run.

The file is written once with random bytes and read once before timing, so every method reads it
from the page cache and the comparison is the hash, not the disk. A plain read of the file is
timed too: the ceiling any hash could reach here. Methods take turns round by round, so a noisy
neighbour hurts them alike; the median round counts.

value = BLAKE3 on one thread (build_manifest's default), baseline = SHA-256 (hashlib, i.e. OpenSSL).
BLAKE3 on all cores is reported alongside in params.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from cairn.node_agent.manifests import ALL_CORES, CHUNK_BYTES, Hasher

from .common import report

MiB = 1024 * 1024


class _NoHash:
    def update(self, data: bytes | memoryview, /) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


METHODS: dict[str, Callable[[], Hasher]] = {
    "read_only": _NoHash,
    "sha256": hashlib.sha256,
    "blake3_1thread": lambda: blake3.blake3(max_threads=1),
    "blake3_all_cores": lambda: blake3.blake3(max_threads=ALL_CORES),
}


def write_random_file(directory: Path, size: int, chunk: int) -> Path:
    handle, name = tempfile.mkstemp(prefix="cairn-hash-bench-", dir=directory)
    with os.fdopen(handle, "wb") as stream:
        left = size
        while left:
            piece = min(chunk, left)
            stream.write(os.urandom(piece))
            left -= piece
    return Path(name)


def hash_throughput(path: Path, size: int, make: Callable[[], Hasher], chunk: int) -> float:
    """MB/s (10^6 bytes) for one pass: read in `chunk` pieces into one buffer, hash each piece."""
    hasher = make()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as stream:
        while read := stream.readinto(buffer):
            hasher.update(view[:read])
    hasher.hexdigest()
    return size / 1e6 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes hashed per pass (default 1024)")
    parser.add_argument("--chunk-mib", type=int, default=CHUNK_BYTES // MiB, help="read size (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="passes per method (default 5)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the data file lives")
    args = parser.parse_args()
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB

    path = write_random_file(args.dir, size, chunk)
    try:
        hash_throughput(path, size, METHODS["read_only"], chunk)  # into the page cache
        rounds: dict[str, list[float]] = {name: [] for name in METHODS}
        for _ in range(args.rounds):
            for name, make in METHODS.items():
                rounds[name].append(hash_throughput(path, size, make, chunk))
    finally:
        path.unlink()

    medians = {name: statistics.median(values) for name, values in rounds.items()}
    for name, values in rounds.items():
        shown = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:17s} median {medians[name]:8.0f} MB/s   rounds: {shown}", flush=True)
    report(
        "hash_choice",
        value=medians["blake3_1thread"],
        baseline=medians["sha256"],
        unit="MB/s",
        params={
            "size_mib": args.size_mib,
            "chunk_mib": args.chunk_mib,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "median_mb_per_s": {name: round(v, 1) for name, v in medians.items()},
            "all_mb_per_s": {name: [round(v, 1) for v in values] for name, values in rounds.items()},
        },
        goal="ratio > 1 means BLAKE3 hashes manifests faster than SHA-256",
    )


if __name__ == "__main__":
    main()
