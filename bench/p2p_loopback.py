"""Raw libtorrent throughput on loopback against `cp` of the same file, same run, same filesystem.

One file (500 MB by default) is written once with random bytes and read once, so both sides read a
page-cached source. `cp` copies it to the same filesystem; the torrent path moves it from a seeding
session on 127.0.0.2 to a downloading session on 127.0.0.3 (both in this process, with the
settings of `lan_settings`), the downloader checking every piece's SHA-256 as it arrives. Both
clocks stop after the copy is fsynced, so both pay for the write to disk. The torrent clock starts
at the first payload byte: joining the swarm waits for libtorrent's once-a-second connection tick
(0-1 s, reported as p2p_join_seconds, with the rate including it alongside). Session start-up and
torrent creation (the hashing a seeder does once) are outside the clock; the hashing time is
reported in params. CPU seconds: cp's own, and this whole process (both sessions) from joining to
the fsync. Rounds alternate which side goes first; medians count.

value = libtorrent MB/s (10^6 bytes), baseline = cp MB/s. Goal: ratio >= 0.5.
`--set name=value` overrides a session setting on both sides (how `lan_settings` was tuned).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from cairn.node_agent.p2p.session import (
    TorrentFinished,
    TorrentNode,
    lan_settings,
    make_torrent,
    piece_size_for,
    setting_names,
)

from .common import report

MB = 1_000_000
MiB = 1024 * 1024
SEEDER, LEECHER = "127.0.0.2", "127.0.0.3"


def write_random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        left = size
        while left:
            chunk = min(8 * MiB, left)
            stream.write(os.urandom(chunk))
            left -= chunk


def warm(path: Path) -> None:
    with path.open("rb", buffering=0) as stream:
        while stream.read(8 * MiB):
            pass


def fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            handle = os.open(path, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)


def rusage_cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_cp(source: Path, target_dir: Path) -> tuple[float, float]:
    """(seconds, CPU seconds of cp) for one copy plus fsync."""
    target_dir.mkdir(parents=True)
    cpu = rusage_cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target_dir / source.name)], check=True)
    fsync_tree(target_dir)
    seconds = time.perf_counter() - started
    return seconds, rusage_cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def run_p2p(
    torrent: bytes, source_dir: Path, target_dir: Path, overrides: dict[str, Any]
) -> tuple[float, int, float, float]:
    """One transfer plus fsync: (seconds, bytes moved in them, join seconds, CPU seconds of both sessions).

    The clock starts at the first payload byte. Before it, the leecher joins the swarm: libtorrent
    makes new peer connections on a once-a-second tick, so joining takes 0 to 1 s whatever the
    settings, which says nothing about throughput; it is reported on its own.
    """
    target_dir.mkdir(parents=True)
    with (
        TorrentNode(SEEDER, overrides=overrides) as seeder,
        TorrentNode(LEECHER, overrides=overrides) as leecher,
    ):
        info_hash = seeder.seed(torrent, source_dir, already_verified=True)
        leecher.download(torrent, target_dir)
        leecher.poll_alerts()
        cpu = rusage_cpu_seconds(resource.RUSAGE_SELF)
        asked = time.perf_counter()
        leecher.add_peers(info_hash, [(SEEDER, seeder.port)])
        while (already := leecher.status(info_hash).total_done) == 0:
            if time.perf_counter() - asked > 30:
                raise SystemExit(f"the leecher never connected: {leecher.status(info_hash)}")
            time.sleep(0.002)
        started = time.perf_counter()
        while not any(isinstance(event, TorrentFinished) for event in leecher.poll_alerts(0.05)):
            if time.perf_counter() - started > 600:
                raise SystemExit(f"transfer stalled: {leecher.status(info_hash)}")
        leecher.flush(info_hash)
        fsync_tree(target_dir)
        finished = time.perf_counter()
        cpu = rusage_cpu_seconds(resource.RUSAGE_SELF) - cpu
        status = leecher.status(info_hash)
        if status.total_done != status.total_wanted or status.total_failed_bytes:
            raise SystemExit(f"transfer incomplete or corrupt: {status}")
    return finished - started, status.total_wanted - already, started - asked, cpu


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    known = lan_settings(SEEDER)
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in known and name not in setting_names():
            raise SystemExit(f"--set {name}: not a libtorrent setting")
        current = known.get(name)
        if isinstance(current, bool):
            overrides[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, str):
            overrides[name] = text
        else:
            overrides[name] = int(text)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="file size in MB of 10^6 bytes (500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--piece-kib", type=int, default=0, help="piece size (default: piece_size_for)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where source and copies live")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="session setting")
    parser.add_argument("--name", default="p2p_loopback", help="result name (tuning runs use another)")
    args = parser.parse_args()
    size = args.size_mb * MB
    overrides = parse_overrides(args.set)

    work = Path(tempfile.mkdtemp(prefix="cairn-p2p-bench-", dir=args.dir))
    try:
        source_dir = work / "source"
        source = source_dir / "blob.bin"
        write_random_file(source, size)
        piece_size = args.piece_kib * 1024 or piece_size_for(size)
        hashed = time.perf_counter()
        meta = make_torrent(source_dir, piece_size)
        hash_seconds = time.perf_counter() - hashed
        warm(source)

        p2p: list[float] = []
        copy: list[float] = []
        p2p_cpu: list[float] = []
        cp_cpu: list[float] = []
        joins: list[float] = []
        end_to_end: list[float] = []
        for round_number in range(args.rounds):
            order = ("cp", "p2p") if round_number % 2 == 0 else ("p2p", "cp")
            for side in order:
                target = work / f"{side}-{round_number}"
                if side == "cp":
                    seconds, cpu = run_cp(source, target)
                    copy.append(size / MB / seconds)
                    cp_cpu.append(cpu)
                    rate, note = size / MB / seconds, ""
                else:
                    seconds, moved, join, cpu = run_p2p(meta.torrent, source_dir, target, overrides)
                    rate, note = moved / MB / seconds, f", joined in {join:.2f} s"
                    p2p.append(rate)
                    p2p_cpu.append(cpu)
                    joins.append(join)
                    end_to_end.append(size / MB / (seconds + join))
                print(f"round {round_number + 1} {side:>3}: {rate:7.1f} MB/s, CPU {cpu:.2f} s{note}")
                shutil.rmtree(target)

        report(
            args.name,
            statistics.median(p2p),
            statistics.median(copy),
            "MB/s",
            {
                "size_mb": args.size_mb,
                "rounds": args.rounds,
                "piece_size": piece_size,
                "pieces": -(-size // piece_size),
                "source": "page-cached; both write to the same filesystem and fsync before the clock stops",
                "p2p_mb_s": [round(value, 1) for value in p2p],
                "cp_mb_s": [round(value, 1) for value in copy],
                "p2p_join_seconds": [round(value, 2) for value in joins],
                "p2p_mb_s_including_join": [round(value, 1) for value in end_to_end],
                "p2p_cpu_seconds_median": round(statistics.median(p2p_cpu), 2),
                "cp_cpu_seconds_median": round(statistics.median(cp_cpu), 2),
                "torrent_hash_seconds": round(hash_seconds, 2),
                "torrent_bytes": len(meta.torrent),
                "overrides": overrides,
                "cores": os.cpu_count(),
            },
            goal="≥0.5",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
