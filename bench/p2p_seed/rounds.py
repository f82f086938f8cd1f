"""One round of each kind: Cairn's, the direct pulls and the raw swarms."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.p2p_seed import NAMESPACE, POLL_SECONDS, SECRET
from bench.p2p_seed.bed import Swarm
from bench.p2p_seed.measure import CpuMeter, metric_sum, scrape
from bench.p2p_seed.workers import WorkerRun, run_workers
from bench.profile import HostProfile
from cairn.units import MiB

# -- the Cairn run ------------------------------------------------------------------------------------


def manifest(swarm: Swarm, name: str, piece_size: int) -> dict[str, Any]:
    from tests.testbed.datasets import s3_dataset

    url = f"s3://{swarm.bucket}/{swarm.prefix}/data"
    names = [n.name for n in swarm.nodes]
    return s3_dataset(name, NAMESPACE, url, swarm.origin.endpoint, SECRET, names, piece_size)


class DatasetWatch:
    """Polls the Dataset (and, while the seeder reads the origin, the seeder's byte counter) and keeps
    the first moment each milestone was seen, in seconds since the Dataset was created."""

    def __init__(self, swarm: Swarm, name: str, started: float, origin_counts: dict[str, float]) -> None:
        self.swarm = swarm
        self.name = name
        self.started = started
        self.origin_counts = origin_counts
        self.seen: dict[str, float] = {}
        self.longest_fetch_gap = 0.0
        """Longest wait between two increases of the seeder's origin counter: a stall, not a slow link."""
        self._last_increase: tuple[float, float] = (0.0, 0.0)
        self.status: dict[str, Any] = {}
        self.error: str = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dataset-watch", daemon=True)

    def __enter__(self) -> DatasetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _mark(self, what: str, now: float) -> None:
        self.seen.setdefault(what, now - self.started)

    def _run(self) -> None:
        ips = {n.name: n.ip for n in self.swarm.nodes}
        wanted = len(self.swarm.nodes)
        while not self._stop.wait(POLL_SECONDS):
            with contextlib.suppress(Exception):  # a missed look is made up by the next one
                status = self.swarm.dataset(self.name).get("status") or {}
                now = time.monotonic()
                self.status = status
                seeder = status.get("seeder")
                for key, mark in (
                    ("seeder", "seeder_chosen"),
                    ("totalBytes", "listed"),
                    ("parts", "first_part_published"),
                    ("digest", "all_published"),
                ):
                    if status.get(key):
                        self._mark(mark, now)
                for node, report in (status.get("nodes") or {}).items():
                    self._mark(f"{node}:{report.get('phase')}", now)
                if status.get("phase") == "Ready" and status.get("readyCount") == wanted:
                    self._mark("ready", now)
                if status.get("phase") == "Failed":
                    self.error = json.dumps(status.get("conditions"))
                if seeder and "fetched" not in self.seen:
                    text = scrape(f"http://{ips[seeder]}:9751/metrics", timeout=1.0)
                    now = time.monotonic()
                    got = metric_sum(
                        text, "cairn_dataset_bytes_total", source="origin"
                    ) - self.origin_counts.get(seeder, 0.0)
                    when, before = self._last_increase
                    if got > before:
                        if before > 0:
                            self.longest_fetch_gap = max(self.longest_fetch_gap, now - when)
                        self._last_increase = (now, got)
                    if got >= self.swarm.size:
                        self._mark("fetched", now)

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while "ready" not in self.seen:
            if self.error:
                raise RuntimeError(f"dataset {self.name} failed: {self.error}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dataset {self.name} not Ready in {timeout:.0f} s:\n"
                    f"{json.dumps(self.status, indent=1)}\n{self.swarm.log_tails()}"
                )
            time.sleep(POLL_SECONDS)
        return self.seen["ready"]


def agent_events(swarm: Swarm, name: str, wall_started: float) -> dict[str, float]:
    """When each agent said it joined and when it found its copy verified, from its JSON log lines."""
    found: dict[str, float] = {}
    patterns = {
        "joined": f"dataset {NAMESPACE}/{name}: joined the swarm",
        "verified": f"dataset {NAMESPACE}/{name} ready and verified",
        "seeded": f"dataset {NAMESPACE}/{name} seeded:",
    }
    for node, agent in swarm.agents.items():
        for line in agent.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError):
                entry = json.loads(line)
                for what, text in patterns.items():
                    if entry["msg"].startswith(text):
                        moment = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                        found.setdefault(f"{node}:{what}", moment.timestamp() - wall_started)
    return found


@dataclass
class CairnRound:
    seconds: float
    origin_bytes: float
    breakdown: dict[str, Any]
    cpu: dict[str, float]
    status: dict[str, Any]
    profile: dict[str, Any]


def run_cairn_round(
    swarm: Swarm, name: str, piece_size: int, timeout: float, sent_before: float
) -> CairnRound:
    from cairn import API_GROUP, API_VERSION

    # The agents' origin counters are cumulative over rounds: each round counts from here.
    origin_counts = {
        node.name: metric_sum(
            scrape(f"http://{node.ip}:9751/metrics"), "cairn_dataset_bytes_total", source="origin"
        )
        for node in swarm.nodes
    }
    meter = CpuMeter(swarm.pids()).start()
    wall_started, started = time.time(), time.monotonic()
    with HostProfile() as sampled:
        swarm.api.create_namespaced_custom_object(
            API_GROUP, API_VERSION, NAMESPACE, "datasets", manifest(swarm, name, piece_size)
        )
        with DatasetWatch(swarm, name, started, origin_counts) as watch:
            seconds = watch.wait_ready(timeout)
        cpu = meter.stop()
    agents = swarm.pids()["agents"]
    profile: dict[str, Any] = {
        "agents_cpu_s_by_kind": sampled.breakdown.cpu_seconds(agents, cpu["agents_cpu_s"]),
        "host_cpu_s_by_command": sampled.breakdown.by_command(),
        **({"error": sampled.error} if sampled.error else {}),
    }
    seen = {**watch.seen, **agent_events(swarm, name, wall_started)}
    status = watch.status
    seeder = status["seeder"]
    others = [n.name for n in swarm.nodes if n.name != seeder]
    cpu["seeder_agent_cpu_s"] = round(meter.used(swarm.agents[seeder].pid), 1)

    def after(what: str, since: str) -> list[float]:
        """Per non-seeding node, sorted: seconds from milestone `since` to that node's `what`."""
        start = seen.get(since, 0.0)
        return sorted(round(seen[f"{n}:{what}"] - start, 1) for n in others if f"{n}:{what}" in seen)

    # The seeder reports Downloading just before its first GET of the origin.
    fetch_started = seen.get(f"{seeder}:Downloading", 0.0)
    fetch = seen.get("fetched", 0.0) - fetch_started
    last_verified = max((seen.get(f"{n}:verified", seconds) for n in others), default=seconds)
    breakdown: dict[str, Any] = {
        "seeder_chosen_s": round(seen.get("seeder_chosen", 0.0), 1),
        "origin_listed_s": round(seen.get("listed", 0.0), 1),
        "origin_fetch_starts_s": round(fetch_started, 1),
        "origin_fetch_s": round(fetch, 1),
        "origin_fetch_mbit": round(swarm.size * 8 / fetch / 1e6, 1) if fetch > 0 else None,
        "origin_fetch_longest_stall_s": round(watch.longest_fetch_gap, 1),
        "first_part_published_s": round(seen.get("first_part_published", 0.0), 1),
        "last_part_published_after_fetch_s": round(
            seen.get("all_published", 0.0) - seen.get("fetched", 0.0), 1
        ),
        "all_published_s": round(seen.get("all_published", 0.0), 1),
        "joined_after_first_part_s": after("joined", "first_part_published"),
        "verified_after_all_published_s": after("verified", "all_published"),
        "ready_after_last_verified_s": round(seconds - last_verified, 1),
        "ready_s": round(seconds, 1),
        # Every piece has to leave the seeder once; more than that is the seeder's uplink spent on
        # pieces the others could have passed on, and while it reads the origin it has no more.
        "seeder_upload_over_f": round(status["nodes"][seeder].get("bytesUploaded", 0) / swarm.size, 2),
    }
    ended = started + seconds
    swarm.api.delete_namespaced_custom_object(API_GROUP, API_VERSION, NAMESPACE, "datasets", name)
    wait_gone(swarm, name)
    origin_bytes = swarm.origin.sent_bytes_after(ended) - sent_before
    return CairnRound(seconds, origin_bytes, breakdown, cpu, status, profile)


def wait_gone(swarm: Swarm, name: str, timeout: float = 180.0) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            swarm.dataset(name)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(0.5)
    raise RuntimeError(f"dataset {name} still there {timeout:.0f} s after its deletion:\n{swarm.log_tails()}")


# -- the baselines: direct pulls and raw swarms -------------------------------------------------------


def run_direct_pulls(swarm: Swarm, timeout: float) -> WorkerRun:
    directory = swarm.workdir / "direct"
    specs = [
        (node, {"kind": "pull", "dir": str(directory / node.name), **swarm.s3_spec()}) for node in swarm.nodes
    ]
    try:
        return run_workers(specs, swarm.workdir / "logs", timeout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_raw_swarm(swarm: Swarm, web_seed: bool, overrides: dict[str, Any], timeout: float) -> WorkerRun:
    """Node 0 reads the origin and seeds, the others download; with `web_seed` the torrent also names
    the origin's bucket URL, and every session's IP filter admits the origin's address."""
    directory = swarm.workdir / ("swarm-web-seed" if web_seed else "swarm")
    directory.mkdir(parents=True)
    ips = [n.ip for n in swarm.nodes]
    allowed = [*ips, swarm.origin.node.ip] if web_seed else ips
    base = f"{swarm.origin.endpoint}/{swarm.bucket}/{swarm.prefix}/"  # libtorrent appends data/<path>
    specs = []
    for index, node in enumerate(swarm.nodes):
        spec = {
            "kind": "swarm",
            "seed": index == 0,
            "ip": node.ip,
            "peers": [ip for ip in ips if ip != node.ip],
            "allowed": allowed,
            "web_seeds": [base] if web_seed else [],
            "torrent": str(directory / "dataset.torrent"),
            "dir": str(directory / node.name),
            "timeout": timeout,
            "overrides": overrides,
            **swarm.s3_spec(),
        }
        specs.append((node, spec))
    try:
        return run_workers(specs, swarm.workdir / "logs", timeout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def swarm_summary(run: WorkerRun, seeder: str) -> dict[str, Any]:
    seed = run.done[seeder]
    others = [event for name, event in run.done.items() if name != seeder]
    return {
        "seconds": round(run.seconds, 1),
        "origin_fetch_s": round(seed["fetched"] - seed["started"], 1),
        "hash_and_publish_s": round(seed["finished"] - seed["fetched"], 1),
        "done_after_publish_s": sorted(round(e["finished"] - seed["finished"], 1) for e in others),
        "seeder_uploaded_mib": round(run.byes[seeder]["uploaded"] / MiB),
        # Above 1.0: bytes received twice (end game, timed-out requests) or failed.
        "leecher_received_over_wanted": max(
            round(bye["downloaded"] / run.done[name]["wanted"], 3)
            for name, bye in run.byes.items()
            if name != seeder
        ),
        "failed_bytes": sum(e.get("failed_bytes", 0) for e in others),
        "leecher_peers_mean": [e.get("peers_mean") for e in others],
        "leecher_from_mib": [e.get("from_mib") for e in others],
        **run.cpu,
    }
