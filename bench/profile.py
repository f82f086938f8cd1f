"""Where the CPU goes during a benchmark phase: `perf` samples of the whole host, sorted into the
kinds of work that cost a storage agent CPU per byte.

`perf record -a -e cpu-clock` samples every core at a fixed rate whatever runs there, so a sample's
weight is CPU time: the share of a process's samples in each kind, times the CPU-seconds /proc says
that process used, is what that kind of work cost it. Kernel work done for a process (TCP, ext4,
copies in and out of the page cache) lands on that process, as /proc counts it; softirq work the
kernel did on behalf of other sockets can land on whoever was running, so small shares are noise.

`python -m bench.profile -- <command>` profiles one command on its own (handy for the raw
libtorrent and upload paths); the benches call `HostProfile` around their phases.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# First match wins; a symbol is tested before its library, so libtorrent's bundled OpenSSL sorts by
# what it computes. Patterns are lower-case.
KINDS: list[tuple[str, str]] = [
    ("kernel_random", r"chacha_permute|chacha_block|get_random|crng"),  # /dev/urandom, not TLS
    ("sha256", r"sha256|sha2_|sha_ni|sha512"),
    ("blake3", r"blake3"),
    ("crc", r"crc32|crc64|crc_pcl|aws_checksums"),
    ("tls_cipher", r"aes|gcm|ghash|chacha|poly1305|^ssl|_ssl|tls|evp_"),
    (
        "copy",
        r"copy_user|memcpy|memmove|rep_movs|copy_page|_copy_to_iter|_copy_from_iter|copyout|copyin"
        r"|clear_page|memset",
    ),
    (
        "tcp_ip",
        r"tcp|^ip_|^ipv|inet|^sk_|skb|netif|^net_|^__net|^dev_|__dev_|veth|tbf|qdisc|napi|^nf_|^eth"
        r"|sock|csum|__sys_send|__sys_recv|xmit|^neigh|br_|fib_",
    ),
    (
        "filesystem",
        r"ext4|jbd2|filemap|folio|page_cache|^xas_|iomap|mpage|writeback|^bio|blk_|^loop|lru|mem_cgroup"
        r"|^mark_buffer|buffer_head|__block|generic_perform_write|submit_bh|^xfs|fsync|pagevec|shmem"
        r"|readahead|^mpol",
    ),
    ("python", r"^_py|^py[a-z_]*_|^_pyeval|pyobject|^method_|^dict_|^list_|^unicode|^long_"),
]
DSO_KINDS: list[tuple[str, str]] = [
    ("libtorrent_other", r"/libtorrent/|libtorrent"),  # its wheel's path holds "python3" too
    ("sha256_or_tls", r"libcrypto|libssl"),  # the system OpenSSL hashlib uses carries no symbols
    ("python", r"libpython|/bin/python|cpython-3"),
    ("kernel_other", r"kernel\.kallsyms|\[kernel|vmlinux"),
]


def kind_of(symbol: str, dso: str) -> str:
    name = symbol.lower()
    if name in ("", "[unknown]") and re.search(r"/libtorrent/", dso):
        # The wheel's bundled OpenSSL assembly carries no symbol sizes; profiling make_torrent alone
        # (nothing but SHA-256) put 30 of its 31 libtorrent samples here, so here is SHA-256.
        return "sha256"
    if name and name != "[unknown]":
        for kind, pattern in KINDS:
            if re.search(pattern, name):
                return kind
    for kind, pattern in DSO_KINDS:
        if re.search(pattern, dso.lower()):
            return kind
    return "other"


@dataclass
class Breakdown:
    """Samples per process and kind of work, from one `perf record`."""

    samples: dict[int, collections.Counter[str]] = field(default_factory=dict)
    commands: dict[int, str] = field(default_factory=dict)
    frequency: int = 0
    symbols: dict[int, collections.Counter[tuple[str, str, str]]] = field(default_factory=dict)
    """(kind, symbol, library) samples per process: what a kind's share is made of."""

    def top_symbols(self, pids: list[int], count: int = 25) -> list[tuple[int, str, str, str]]:
        total: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for pid in pids:
            total.update(self.symbols.get(pid, {}))
        return [(n, kind, symbol, dso) for (kind, symbol, dso), n in total.most_common(count)]

    def shares(self, pids: list[int]) -> dict[str, float]:
        """Each kind's share of the samples of `pids` (their threads included), largest first."""
        total: collections.Counter[str] = collections.Counter()
        for pid in pids:
            total.update(self.samples.get(pid, {}))
        count = sum(total.values())
        return {kind: round(n / count, 3) for kind, n in total.most_common()} if count else {}

    def cpu_seconds(self, pids: list[int], measured_cpu_s: float) -> dict[str, float]:
        """`measured_cpu_s` (what /proc counted for `pids`) split by the kinds' shares."""
        return {kind: round(share * measured_cpu_s, 2) for kind, share in self.shares(pids).items()}

    def by_command(self, top: int = 8) -> dict[str, float]:
        """Seconds of CPU per command name across the host, from the sample count and rate."""
        seconds: collections.Counter[str] = collections.Counter()
        for pid, counter in self.samples.items():
            seconds[self.commands.get(pid, str(pid))] += sum(counter.values()) / max(self.frequency, 1)
        return {name: round(s, 1) for name, s in seconds.most_common(top)}


class HostProfile:
    """`with HostProfile() as profile: ...` then `profile.breakdown`; empty where perf cannot run."""

    def __init__(self, frequency: int = 199) -> None:
        self.frequency = frequency
        self.breakdown = Breakdown(frequency=frequency)
        self.error = ""
        self._dir = Path(tempfile.mkdtemp(prefix="cairn-perf-"))
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostProfile:
        perf = shutil.which("perf")
        if perf is None:
            self.error = "perf is not installed"
            return self
        self._process = subprocess.Popen(
            [
                perf,
                "record",
                "-e",
                "cpu-clock",
                "-F",
                str(self.frequency),
                "-a",
                "-q",
                "-o",
                str(self._dir / "perf.data"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._process is not None:
                self._process.send_signal(signal.SIGINT)
                _, stderr = self._process.communicate(timeout=60)
                if self._process.returncode not in (0, -signal.SIGINT):
                    self.error = stderr.decode(errors="replace")[-500:]
                else:
                    self.breakdown = self._read()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _read(self) -> Breakdown:
        script = subprocess.run(
            ["perf", "script", "-i", str(self._dir / "perf.data"), "-F", "comm,pid,ip,sym,dso"],
            capture_output=True,
            text=True,
            check=False,
        )
        breakdown = Breakdown(frequency=self.frequency)
        # "  <comm> <pid>  <ip> <symbol> (<dso>)"; the command may hold spaces, the pid never does.
        line_format = re.compile(r"^\s*(.*?)\s+(\d+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")
        for line in script.stdout.splitlines():
            match = line_format.match(line)
            if not match:
                continue
            command, pid, symbol, dso = match.groups()
            symbol = symbol.split("+0x", 1)[0]
            kind = kind_of(symbol, dso)
            breakdown.samples.setdefault(int(pid), collections.Counter())[kind] += 1
            breakdown.symbols.setdefault(int(pid), collections.Counter())[(kind, symbol, Path(dso).name)] += 1
            breakdown.commands.setdefault(int(pid), command)
        return breakdown


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (mkfs, lvm, the uploader's children), from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children[parent].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--top", type=int, default=0, help="also list the N busiest symbols")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to profile")
    args = parser.parse_args()
    command = [part for part in args.command if part != "--"]
    if not command:
        parser.error("name a command after --")
    with HostProfile() as profile:
        child = subprocess.Popen(command)
        child.wait()
    if profile.error:
        raise SystemExit(f"perf: {profile.error}")
    used = os.times()
    children_cpu = used.children_user + used.children_system
    print(f"{' '.join(command)}: {children_cpu:.2f} CPU-s (exit {child.returncode})")
    for kind, seconds in profile.breakdown.cpu_seconds([child.pid], children_cpu).items():
        print(f"  {kind:18} {seconds:7.2f} s")
    tree = [child.pid, *profile.breakdown.samples.keys()] if args.top else []
    for samples, kind, symbol, dso in profile.breakdown.top_symbols(tree[:1], args.top):
        print(f"  {samples:6} {kind:16} {symbol[:60]:60} {dso}")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
