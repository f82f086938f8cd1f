"""What the host's processes and cores spent, from /proc; light enough for the benches' worker processes."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, and of the children it has reaped (mkfs, lvm)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def host_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of every core since boot, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values), values[3] + values[4]  # idle + iowait: a core waiting on disk is not busy
