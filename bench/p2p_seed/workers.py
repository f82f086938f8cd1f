"""Worker processes, one per node namespace: direct pulls and raw libtorrent swarms."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.p2p_seed import REPO, SWARM_PORT
from bench.p2p_seed.measure import CpuMeter
from cairn.units import MiB

# -- workers: one process per node namespace ----------------------------------------------------------
#
# Direct pulls and raw swarm sessions must run inside the node namespaces to cross the shaped links,
# and a process lives in one network namespace, so each node gets a worker: `python -m bench.p2p_seed
# --worker`, fed a JSON spec on stdin. It answers "ready" once its imports and session are up, starts
# on "go" (so interpreter start-up stays off the clock), reports "done" with monotonic timestamps
# (CLOCK_MONOTONIC is one clock for the whole host), keeps serving its peers until stdin closes, then
# reports "bye" with its totals.


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _wait_for_go() -> None:
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("the bench went away before the start")


def _s3_origin(spec: dict[str, Any]) -> Any:
    from cairn.node_agent.datasets.origin import S3Origin
    from cairn.s3 import s3_client

    return S3Origin(
        lambda: s3_client(spec["endpoint"], spec["access_key"], spec["secret_key"]),
        spec["bucket"],
        spec["prefix"],
    )


def _fetch(origin: Any, files: list[Any], data: Path) -> int:
    """Each file once, in order, written and fsynced: the seeder's read of the origin minus its digest."""
    from cairn.node_agent.datasets.origin import CHUNK

    fetched = 0
    for file in files:
        target = data / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with origin.open(file) as stream, open(target, "wb") as out:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                fetched += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    return fetched


def pull_worker(spec: dict[str, Any]) -> None:
    origin = _s3_origin(spec)
    _emit(event="ready")
    _wait_for_go()
    started = time.monotonic()
    fetched = _fetch(origin, origin.list_files(), Path(spec["dir"]))
    _emit(event="done", started=started, finished=time.monotonic(), bytes=fetched)
    sys.stdin.read()
    _emit(event="bye")


def swarm_worker(spec: dict[str, Any]) -> None:
    from cairn.node_agent.p2p.session import TorrentFinished, TorrentNode, make_torrent

    from ..p2p_loopback import fsync_tree

    data = Path(spec["dir"]) / "data"
    torrent_path = Path(spec["torrent"])
    peers = [(ip, SWARM_PORT) for ip in spec["peers"]]
    with TorrentNode(spec["ip"], SWARM_PORT, overrides=spec["overrides"]) as node:
        node.set_allowed_peers(spec["allowed"])
        _emit(event="ready")
        _wait_for_go()
        started = time.monotonic()
        if spec["seed"]:
            origin = _s3_origin(spec)
            files = origin.list_files()
            fetched_bytes = _fetch(origin, files, data)
            fetched = time.monotonic()
            meta = make_torrent(data, files=[(f.path, f.size) for f in files], web_seeds=spec["web_seeds"])
            temporary = torrent_path.with_suffix(".tmp")
            temporary.write_bytes(meta.torrent)
            os.replace(temporary, torrent_path)
            info_hash = node.seed(meta.torrent, data, already_verified=True)
            node.add_peers(info_hash, peers)
            _emit(
                event="done", started=started, fetched=fetched, finished=time.monotonic(), bytes=fetched_bytes
            )
        else:
            deadline = started + spec["timeout"]
            while not torrent_path.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the seeder never published the torrent")
                time.sleep(0.01)
            info_hash = node.download(torrent_path.read_bytes(), data)
            node.add_peers(info_hash, peers)
            joined = time.monotonic()
            added = joined
            peer_counts: list[int] = []
            sources: dict[str, int] = {}
            while not any(isinstance(event, TorrentFinished) for event in node.poll_alerts(0.05)):
                now = time.monotonic()
                if now > deadline:
                    raise SystemExit(f"no copy in time: {node.status(info_hash)}")
                if now - added > 1.0:
                    # As the agent does on every pass: a peer that refused us before it had added the
                    # torrent is asked again.
                    node.add_peers(info_hash, peers)
                    added = now
                    peer_counts.append(node.status(info_hash).num_peers)
                    # Counters live per connection: keep each address's highest, a lower bound.
                    for ip, got in node.peer_bytes(info_hash).items():
                        sources[ip] = max(sources.get(ip, 0), got.downloaded)
            node.flush(info_hash)
            fsync_tree(data)
            status = node.status(info_hash)
            if status.total_done != status.total_wanted:
                raise SystemExit(f"finished but incomplete: {status}")
            _emit(
                event="done",
                started=started,
                joined=joined,
                finished=time.monotonic(),
                failed_bytes=status.total_failed_bytes,
                wanted=status.total_wanted,
                peers_mean=round(statistics.mean(peer_counts), 1) if peer_counts else 0,
                from_mib={ip: round(got / MiB) for ip, got in sorted(sources.items())},
            )
        sys.stdin.read()  # keep serving the others until the bench has seen every copy
        status = node.status(info_hash)
        _emit(event="bye", uploaded=status.total_payload_upload, downloaded=status.total_payload_download)


def worker_main() -> None:
    spec = json.loads(sys.stdin.readline())
    {"pull": pull_worker, "swarm": swarm_worker}[spec["kind"]](spec)


class Worker:
    """The bench's end of one worker process in a node namespace."""

    def __init__(self, node: Any, spec: dict[str, Any], log_dir: Path) -> None:
        self.node = node
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec['kind']}-{node.name}.log"
        with self.log_path.open("ab") as log:
            self.proc: subprocess.Popen[str] = node.popen(
                [sys.executable, "-m", "bench.p2p_seed", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                text=True,
                bufsize=1,
            )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send(json.dumps(spec))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exit", "code": self.proc.wait()})

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.log_path.name}: no {event} within {timeout:.0f} s") from None
            if got["event"] == event:
                return got
            if got["event"] == "exit":
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{self.log_path.name} exited ({got['code']}) before {event}:\n{tail}")

    def go(self) -> None:
        self._send("go")

    def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        bye = self.expect("bye", timeout)
        self.proc.wait(timeout)
        return bye

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class WorkerRun:
    started: float
    done: dict[str, dict[str, Any]]
    """Each node's "done" event."""
    byes: dict[str, dict[str, Any]]
    cpu: dict[str, float]

    @property
    def seconds(self) -> float:
        return max(event["finished"] for event in self.done.values()) - self.started


def run_workers(specs: list[tuple[Any, dict[str, Any]]], log_dir: Path, timeout: float) -> WorkerRun:
    """Start one worker per (node, spec), start them all at once, return when every one is done."""
    workers: list[Worker] = []
    try:
        workers = [Worker(node, spec, log_dir) for node, spec in specs]
        for worker in workers:
            worker.expect("ready", 120)
        meter = CpuMeter({"workers": [w.proc.pid for w in workers]}).start()
        started = time.monotonic()
        for worker in workers:
            worker.go()
        done = {w.node.name: w.expect("done", timeout) for w in workers}
        cpu = meter.stop()
        byes = {w.node.name: w.finish() for w in workers}
        return WorkerRun(started, done, byes, cpu)
    finally:
        for worker in workers:
            worker.kill()
            with contextlib.suppress(ValueError):
                worker.node.processes.remove(worker.proc)
