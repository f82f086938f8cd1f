"""What the swarm's TLS costs: an SSL torrent against the same plaintext torrent, same run.

One file (500 MB by default) of random bytes, page-cached, moves from a seeding session on
127.0.0.2 to a downloading session on 127.0.0.3 (both in this process, `lan_settings`), once as
the agent moves it (an SSL torrent rooted in a dataset CA, each side with a certificate that CA
signed, from the controller's real `SwarmAuthority`) and once as a plaintext torrent. Rounds
alternate which goes first; medians count. The clock runs from the downloader's first payload byte
(joining waits for libtorrent's once-a-second tick) until it holds every piece; CPU seconds are this
whole process's (both sessions) over the same span, per GB moved.

value = TLS MB/s, baseline = plaintext MB/s. No goal of its own: the swarm must be authenticated,
so this is the price, reported so that the CPU-per-byte work (issue 16) starts from it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cairn.controller.datasets.swarm_authority import SEED_BYTES, SwarmAuthority
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.session import DISK_IO, DISK_IO_BACKENDS, TorrentNode, make_torrent

from .common import report
from .p2p_loopback import warm, write_random_file
from .profile import HostProfile

MB = 1_000_000
SEEDER, LEECHER = "127.0.0.2", "127.0.0.3"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def transfer(
    work: Path, origin: Path, tls: bool, authority: SwarmAuthority, disk_io: str = DISK_IO
) -> tuple[float, float]:
    """(seconds, CPU seconds) to move `origin`'s directory from one session to another."""
    ca = authority.ca_certificate("bench", "bench", "swarm-tls") if tls else None
    meta = make_torrent(
        origin, files=[(p.name, p.stat().st_size) for p in origin.iterdir()], root_certificate=ca
    )
    target = work / "target"
    shutil.rmtree(target, ignore_errors=True)
    with (
        TorrentNode(SEEDER, tls=tls, disk_io=disk_io) as seeder,
        TorrentNode(LEECHER, tls=tls, disk_io=disk_io) as leecher,
    ):
        info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
        leecher.download(meta.torrent, target)
        if ca is not None:
            for node, name in ((seeder, "seeder"), (leecher, "leecher")):
                identity = PeerIdentity.create(name, work / "identities" / name)
                certificate = authority.node_certificate("bench", ca, name, identity.certificate_pem)
                node.set_certificate(info_hash, certificate, identity.key_path.read_text())
        leecher.add_peers(info_hash, [(SEEDER, seeder.port)])
        joined = time.perf_counter()
        # From the first payload byte: joining waits for libtorrent's once-a-second connection tick.
        while leecher.status(info_hash).total_payload_download == 0:
            if time.perf_counter() - joined > 60:
                raise SystemExit(f"{'TLS' if tls else 'plaintext'} peers never exchanged a byte")
            time.sleep(0.005)
        cpu, started = cpu_seconds(), time.perf_counter()
        while not leecher.status(info_hash).is_seeding:
            if time.perf_counter() - started > 600:
                raise SystemExit(f"{'TLS' if tls else 'plaintext'} transfer did not finish in 600 s")
            time.sleep(0.01)
        return time.perf_counter() - started, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--disk-io", default=DISK_IO, choices=DISK_IO_BACKENDS, help="libtorrent's disk back end"
    )
    parser.add_argument("--profile", action="store_true", help="where both sessions' CPU goes (perf)")
    parser.add_argument("--name", default="swarm_tls", help="result name (tuning runs use another)")
    args = parser.parse_args()
    authority = SwarmAuthority(secrets.token_bytes(SEED_BYTES))
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-swarm-tls-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        origin = work / "origin" / "corpus"
        write_random_file(origin / "shard.bin", args.megabytes * MB)
        warm(origin / "shard.bin")
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        profiles: dict[bool, dict[str, float]] = {}
        for round_index in range(args.rounds):
            for tls in (True, False) if round_index % 2 == 0 else (False, True):
                with (
                    HostProfile()
                    if args.profile and round_index == 0
                    else contextlib.nullcontext() as sampled
                ):
                    runs[tls].append(transfer(work, origin, tls, authority, args.disk_io))
                if sampled is not None:
                    profiles[tls] = sampled.breakdown.cpu_seconds([os.getpid()], runs[tls][-1][1])
        rate = {tls: statistics.median(args.megabytes / s for s, _ in runs[tls]) for tls in runs}
        cpu_per_gb = {
            tls: statistics.median(c / (args.megabytes / 1000) for _, c in runs[tls]) for tls in runs
        }
        for tls, profile in profiles.items():
            print(f"  {'TLS' if tls else 'plaintext'} CPU by kind (s): {profile}", flush=True)
        report(
            args.name,
            rate[True],
            rate[False],
            "MB/s",
            {
                "megabytes": args.megabytes,
                "rounds": args.rounds,
                "tls_cpu_seconds_per_gb": round(cpu_per_gb[True], 3),
                "plaintext_cpu_seconds_per_gb": round(cpu_per_gb[False], 3),
                "tls_seconds": [round(s, 3) for s, _ in runs[True]],
                "plaintext_seconds": [round(s, 3) for s, _ in runs[False]],
                "disk_io": args.disk_io,
                "cpu_s_by_kind": {
                    "tls" if tls else "plaintext": profile for tls, profile in profiles.items()
                },
            },
        )
        print(
            f"CPU-s per GB (both sessions): TLS {cpu_per_gb[True]:.2f}, plaintext {cpu_per_gb[False]:.2f}",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
