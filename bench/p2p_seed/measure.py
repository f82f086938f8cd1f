"""CPU and metrics read during a round."""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.host import cpu_seconds, host_ticks
from cairn.units import GiB, MiB

# -- measuring ----------------------------------------------------------------------------------------


@dataclass
class CpuMeter:
    """CPU seconds of named process groups and the host's busy cores over one phase."""

    groups: dict[str, list[int]]
    started: float = 0.0
    before: dict[int, float] = field(default_factory=dict)
    host_before: tuple[int, int] = (0, 0)

    def start(self) -> CpuMeter:
        self.started = time.monotonic()
        self.before = {pid: _cpu_or_zero(pid) for pids in self.groups.values() for pid in pids}
        self.host_before = host_ticks()
        return self

    def used(self, pid: int) -> float:
        return _cpu_or_zero(pid) - self.before.get(pid, 0.0)

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        used = {f"{name}_cpu_s": round(sum(map(self.used, pids)), 1) for name, pids in self.groups.items()}
        total, idle = host_ticks()
        span = total - self.host_before[0]
        busy = 1 - (idle - self.host_before[1]) / span if span else 0.0
        used["host_busy_cores"] = round(busy * (os.cpu_count() or 1), 2)
        used["wall_s"] = round(wall, 1)
        return used


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):  # gone: what it used is no longer anyone's to count
        return 0.0


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for match in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.MULTILINE):
        if all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
            total += float(match.group(2))
    return total


def floor_cpu_seconds_per_gib(directory: Path, size: int = 512 * MiB, rounds: int = 3) -> float:
    """The least CPU a node could spend per GiB it receives: one SHA-256 pass (libtorrent must check
    every block) and one copy (the bytes crossing from the kernel into a buffer), measured here on a
    page-cached file, median of `rounds`. Everything an agent spends above it is overhead: TCP,
    TLS, the page cache and ext4, its second copy, Python."""
    path = directory / "floor.bin"
    with open(path, "wb") as out:
        for _ in range(size // (16 * MiB)):
            out.write(os.urandom(16 * MiB))
    try:
        spent = []
        for _ in range(rounds):
            before = os.times()
            hasher = hashlib.sha256()
            buffer = bytearray(MiB)
            with open(path, "rb", buffering=0) as stream:
                while got := stream.readinto(buffer):
                    hasher.update(memoryview(buffer)[:got])
            after = os.times()
            spent.append((after.user - before.user) + (after.system - before.system))
        return statistics.median(spent) * GiB / size
    finally:
        path.unlink(missing_ok=True)
