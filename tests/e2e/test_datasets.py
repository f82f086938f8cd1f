"""Datasets over P2P on the test bed: 4 nodes load 256 MiB from the real S3 server over libtorrent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.testbed.bed import TestBed
from tests.testbed.components import METRICS_PORT, start_controller, start_node_agent
from tests.testbed.datasets import s3_dataset
from tests.testbed.network import Shaping
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
DATASET_BYTES = 256 * MiB
FILES = 8
LINK = Shaping(rate="240mbit")
"""About 30 MB/s per node link: slow enough to catch a transfer in flight, fast enough for CI."""
EVICTION_WATERMARKS = ("--dataset-eviction-high-watermark=0.7", "--dataset-eviction-low-watermark=0.55")
"""Low enough for three small copies to fill a 640 MiB pool; the 256 MiB corpus alone fills 52%."""


@dataclass
class Swarm:
    bed: TestBed
    workdir: Path
    nodes: list[SimulatedNode]
    agents: dict[str, ManagedProcess] = field(default_factory=dict)
    controller: ManagedProcess | None = None
    bucket: str = ""

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.bed.control_plane.kubectl(*args, check=check)

    def start_agent(self, node: SimulatedNode) -> None:
        self.agents[node.name], _ = start_node_agent(
            self.workdir, self.bed.run_id, self.bed.control_plane.kubeconfigs["cairn-node-agent"], node
        )

    def dataset(self, name: str) -> dict:
        result = self.kubectl("get", "dataset", name, "-n", NAMESPACE, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def node_report(self, name: str, node: str) -> dict:
        return self.dataset(name).get("status", {}).get("nodes", {}).get(node, {})

    def diagnosis(self, name: str) -> str:
        """Status and the agents' dataset log lines, for a failure message."""
        lines = [json.dumps(self.dataset(name).get("status", {}), indent=1)]
        for node, agent in self.agents.items():
            text = agent.log_path.read_text(errors="replace") if agent.log_path.exists() else ""
            wanted = [
                line
                for line in text.splitlines()
                if "dataset" in line or "Traceback" in line or "Error" in line
            ]
            lines += [f"--- {node}", *wanted[-12:]]
        return "\n".join(lines)

    def apply(self, manifest: dict) -> None:
        self.bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def dataset_manifest(name: str, bucket: str, prefix: str, nodes: list[str], endpoint: str) -> dict:
    return s3_dataset(name, NAMESPACE, f"s3://{bucket}/{prefix}", endpoint, "dataset-s3", nodes)


@pytest.fixture(scope="module")
def swarm(bed: TestBed) -> Iterator[Swarm]:
    assert bed.s3 is not None
    workdir = bed.workdir / "datasets"
    nodes = bed.add_nodes(5, disks=1, disk_size=640 * MiB)
    swarm = Swarm(bed, workdir, nodes)
    swarm.bucket = bed.s3.create_bucket(f"datasets-{bed.run_id[:8]}")
    swarm.apply(bed.s3.credentials_secret("dataset-s3", NAMESPACE))
    try:
        for node in nodes:
            node.shape(LINK)
            swarm.start_agent(node)
        swarm.controller, _ = start_controller(
            workdir,
            bed.run_id,
            bed.control_plane.kubeconfigs["cairn-controller"],
            name="controller-datasets",
            extra_args=EVICTION_WATERMARKS,
        )
        yield swarm
    finally:
        print("\n" + swarm.kubectl("get", "datasets", "-n", NAMESPACE, check=False).stdout)
        swarm.kubectl("delete", "datasets", "--all", "-n", NAMESPACE, "--timeout=120s", check=False)
        for process in [*swarm.agents.values(), swarm.controller]:
            if process is not None:
                process.stop()
                print(f"\n{process.name} log tail:\n{process.log_tail(8)}")
        bed.remove_nodes(nodes)
        swarm.kubectl("delete", "secret", "dataset-s3", "-n", NAMESPACE, check=False)
        client = bed.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=swarm.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=swarm.bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=swarm.bucket)


def upload_dataset(swarm: Swarm, prefix: str) -> None:
    assert swarm.bed.s3 is not None
    client = swarm.bed.s3.client()
    for index in range(FILES):
        key = f"{prefix}/shards/{index // 4}/part-{index:04d}.bin"
        client.put_object(Bucket=swarm.bucket, Key=key, Body=os.urandom(DATASET_BYTES // FILES))


def origin_bytes_sent(swarm: Swarm) -> float:
    """What the S3 server itself counts as sent: the origin's side of the ledger."""
    assert swarm.bed.s3 is not None
    with urllib.request.urlopen(f"{swarm.bed.s3.endpoint}/minio/v2/metrics/cluster", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^minio_s3_traffic_sent_bytes\S* (\S+)$", text, re.MULTILINE))


def agent_metric(node: SimulatedNode, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{node.ip}:{METRICS_PORT}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def allocated_bytes(directory: Path) -> int:
    """Bytes actually on disk under a directory (sparse files count only what was written)."""
    result = subprocess.run(["du", "-s", "--block-size=1", str(directory)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def test_four_nodes_load_a_dataset_reading_the_origin_once_despite_a_killed_peer(swarm: Swarm) -> None:
    nodes = [n.name for n in swarm.nodes[:4]]
    upload_dataset(swarm, "corpus-v1")
    assert swarm.bed.s3 is not None
    sent_before = origin_bytes_sent(swarm)
    swarm.apply(dataset_manifest("corpus", swarm.bucket, "corpus-v1", nodes, swarm.bed.s3.endpoint))

    wait_until(
        lambda: swarm.dataset("corpus").get("status", {}).get("parts"),
        180,
        "the seeder to publish a part",
        context=lambda: swarm.diagnosis("corpus"),
    )
    seeder = swarm.dataset("corpus")["status"]["seeder"]
    victim = next(n for n in swarm.nodes[:4] if n.name != seeder)

    def victim_progress() -> float:
        return float(swarm.node_report("corpus", victim.name).get("progress", 0.0))

    wait_until(lambda: victim_progress() >= 0.15, 180, f"{victim.name} to be part way through")
    assert victim_progress() < 0.9, "the transfer finished before the kill; it was not mid-transfer"
    agent = swarm.agents[victim.name]
    os.killpg(agent.pid, signal.SIGKILL)
    agent.proc.wait(10)
    agent.stop()
    mount = swarm.workdir / "state" / victim.name / "datasets" / NAMESPACE / "corpus" / "data"
    had = allocated_bytes(mount)
    assert had > 0.1 * DATASET_BYTES, f"only {had} bytes on disk at the kill"
    swarm.start_agent(victim)

    def all_ready() -> bool:
        return swarm.dataset("corpus").get("status", {}).get("phase") == "Ready"

    wait_until(
        all_ready,
        300,
        "every node to hold a verified copy",
        context=lambda: swarm.diagnosis("corpus"),
    )
    status = swarm.dataset("corpus")["status"]
    assert status["ready"] == "4/4" and status["totalBytes"] == DATASET_BYTES and status["fileCount"] == FILES
    digests = {node: report["digest"] for node, report in status["nodes"].items()}
    assert (
        set(digests) == set(nodes)
        and len(set(digests.values())) == 1
        and status["digest"] in digests.values()
    )

    origin = origin_bytes_sent(swarm) - sent_before
    assert origin <= 1.1 * DATASET_BYTES, f"the origin sent {origin / MiB:.0f} MiB for a 256 MiB dataset"
    assert status["bytesFromOrigin"] <= 1.1 * DATASET_BYTES

    # Fetched again: what came from peers after the restart beyond what was missing, not counting
    # blocks received twice (two peers answering one request near the end of each part's torrent),
    # which are duplicates of missing bytes, not of bytes the node had.
    from_peers = agent_metric(victim, "cairn_dataset_bytes_total", source="peer")
    redundant = agent_metric(victim, "cairn_p2p_redundant_bytes_total")
    refetched = from_peers - redundant - (DATASET_BYTES - had)
    print(
        f"\n{victim.name}: {had / MiB:.0f} MiB on disk at the kill, "
        f"{max(0, refetched) / MiB:.1f} MiB fetched again, {redundant / MiB:.1f} MiB received twice"
    )
    assert refetched <= 0.1 * had
    table = swarm.kubectl("get", "datasets", "-n", NAMESPACE).stdout
    print("\n" + table)
    assert table.splitlines()[0].split() == ["NAME", "SOURCE", "SIZE", "READY", "PHASE", "WAITING", "AGE"]


def test_a_peer_serving_corrupt_data_is_caught_and_the_download_completes(swarm: Swarm) -> None:
    status = swarm.dataset("corpus").get("status", {})
    assert status.get("phase") == "Ready", "needs the dataset from the first test"
    # One node's copy goes bad on disk; it keeps serving it, as a faulty disk or a hostile peer would.
    corrupt = next(n for n in swarm.nodes[:4] if n.name != status["seeder"])
    data = swarm.workdir / "state" / corrupt.name / "datasets" / NAMESPACE / "corpus" / "data"
    for path in data.rglob("*.bin"):
        with open(path, "r+b") as file:
            for offset in range(0, path.stat().st_size, 64 * 1024):
                file.seek(offset)
                file.write(b"\xff" * 16)
    newcomer = swarm.nodes[4]
    nodes = [n.name for n in swarm.nodes]
    swarm.kubectl(
        "patch",
        "dataset",
        "corpus",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"nodes": {"names": nodes}}}),
    )
    wait_until(
        lambda: swarm.node_report("corpus", newcomer.name).get("phase") == "Ready",
        300,
        f"{newcomer.name} to hold a verified copy",
        context=lambda: (
            json.dumps(swarm.node_report("corpus", newcomer.name), indent=1)
            + "\n"
            + swarm.agents[newcomer.name].log_tail()
        ),
    )
    report = swarm.node_report("corpus", newcomer.name)
    assert report["digest"] == status["digest"]
    assert agent_metric(newcomer, "cairn_p2p_hash_failures_total") >= 1, "no corrupt piece was ever received"
    assert agent_metric(newcomer, "cairn_p2p_banned_peers_total") >= 1
    banned = swarm.agents[newcomer.name].log_path.read_text()
    assert f"banned peer {corrupt.ip}" in banned


def copy_volumes(swarm: Swarm, name: str) -> list[dict]:
    selector = f"cairn.dev/dataset={NAMESPACE}.{name}"
    listed = swarm.kubectl("get", "localvolumes", "-l", selector, "-o", "json").stdout
    return json.loads(listed)["items"]


def test_a_second_dataset_of_the_same_objects_is_ready_from_the_copies_without_an_origin_byte(
    swarm: Swarm,
) -> None:
    lender = swarm.dataset("corpus").get("status", {})
    assert lender.get("phase") == "Ready", "needs the dataset from the first tests"
    assert lender.get("listing"), "an S3 listing carries every object's ETag, so it can be shared"
    nodes = lender["targetNodes"]
    assert swarm.bed.s3 is not None
    sent_before = origin_bytes_sent(swarm)
    swarm.apply(dataset_manifest("corpus-again", swarm.bucket, "corpus-v1", nodes, swarm.bed.s3.endpoint))
    wait_until(
        lambda: swarm.dataset("corpus-again").get("status", {}).get("phase") == "Ready",
        120,
        "the second Dataset to be Ready from the copies already on its nodes",
        context=lambda: swarm.diagnosis("corpus-again"),
    )
    status = swarm.dataset("corpus-again")["status"]
    print(f"\n{swarm.kubectl('get', 'datasets', '-n', NAMESPACE).stdout}")
    assert status["listing"] == lender["listing"] and status["digest"] == lender["digest"]
    assert status["sharedCopies"] == {node: "corpus" for node in nodes}
    assert status["bytesFromOrigin"] == 0 and status["bytesFromPeers"] == 0
    assert {node: r["digest"] for node, r in status["nodes"].items()} == {
        node: lender["digest"] for node in nodes
    }
    sent = origin_bytes_sent(swarm) - sent_before
    assert sent < MiB, f"the origin sent {sent / MiB:.1f} MiB for a listing"
    assert copy_volumes(swarm, "corpus-again") == [], "a shared copy needs no volume of its own"

    # The lender is deleted first: its copies stay while the other Dataset uses them.
    swarm.kubectl("delete", "dataset", "corpus", "-n", NAMESPACE, "--wait=false")

    def kept_in_use() -> bool:
        conditions = swarm.dataset("corpus").get("status", {}).get("conditions", [])
        return any(c["type"] == "CopiesInUse" and c["status"] == "True" for c in conditions)

    wait_until(kept_in_use, 60, "the deleted lender to say its copies are in use")
    time.sleep(5)  # a few controller rounds: none may release a copy in use
    kept = copy_volumes(swarm, "corpus")
    assert len(kept) == len(nodes) and not any(v["metadata"].get("deletionTimestamp") for v in kept)
    assert swarm.dataset("corpus-again")["status"]["phase"] == "Ready"

    swarm.kubectl("delete", "dataset", "corpus-again", "-n", NAMESPACE, "--timeout=60s")
    wait_until(
        lambda: not swarm.dataset("corpus") and not copy_volumes(swarm, "corpus"),
        120,
        "the lender and its copies to go once nothing uses them",
        context=lambda: swarm.diagnosis("corpus"),
    )


class OriginFiles(BaseHTTPRequestHandler):
    """An HTTP origin that answers every path: the names are what the test is about."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "8")
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        self.wfile.write(b"contents")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_source_listing_an_unsafe_name_fails_before_any_byte_is_written(swarm: Swarm) -> None:
    server = ThreadingHTTPServer((swarm.bed.cluster.gateway, 0), OriginFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://{swarm.bed.cluster.gateway}:{server.server_address[1]}"
        nodes = [swarm.nodes[0].name]
        swarm.apply(
            {
                "apiVersion": "cairn.dev/v1alpha1",
                "kind": "Dataset",
                "metadata": {"name": "hostile", "namespace": NAMESPACE},
                "spec": {
                    # The last path segment names the file: this one decodes to ../../etc/cron.d/x.
                    "source": {
                        "http": {"urls": [f"{base}/ok.bin", f"{base}/files/..%2F..%2Fetc%2Fcron.d%2Fx"]}
                    },
                    "nodes": {"names": nodes},
                },
            }
        )

        def failed() -> dict:
            conditions = swarm.dataset("hostile").get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Failed" and c["status"] == "True"), {})

        wait_until(
            failed, 60, "the dataset to fail on the unsafe name", context=lambda: swarm.diagnosis("hostile")
        )
        assert failed()["reason"] == "UnsafeName" and "../../etc/cron.d/x" in failed()["message"]
        wait_until(lambda: swarm.dataset("hostile")["status"].get("phase") == "Failed", 30, "phase Failed")
        assert "totalBytes" not in swarm.dataset("hostile")["status"]
        assert not list((swarm.workdir / "state" / nodes[0] / "datasets").glob("*/hostile/data"))
        print("\n" + swarm.kubectl("get", "datasets", "-n", NAMESPACE).stdout)
    finally:
        server.shutdown()
        server.server_close()
        swarm.kubectl("delete", "dataset", "hostile", "-n", NAMESPACE, check=False)


def test_an_origin_pointing_at_cloud_metadata_or_a_node_fails_without_a_request(swarm: Swarm) -> None:
    nodes = [swarm.nodes[0].name]
    sources = {
        "metadata": {"http": {"urls": ["http://169.254.169.254/latest/meta-data/iam/credentials"]}},
        # The agent's own loopback: its metrics, the kubelet, anything bound to 127.0.0.1.
        "loopback": {"http": {"urls": ["http://localhost:10250/pods"]}},
    }
    try:
        for name, source in sources.items():
            swarm.apply(
                {
                    "apiVersion": "cairn.dev/v1alpha1",
                    "kind": "Dataset",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"source": source, "nodes": {"names": nodes}},
                }
            )
        for name, refused in (("metadata", "169.254.0.0/16"), ("loopback", "127.0.0.0/8")):

            def failed(name: str = name) -> dict:
                conditions = swarm.dataset(name).get("status", {}).get("conditions", [])
                return next((c for c in conditions if c["type"] == "Failed" and c["status"] == "True"), {})

            wait_until(failed, 60, f"dataset {name} to fail", context=lambda name=name: swarm.diagnosis(name))
            assert failed()["reason"] == "OriginRefused"
            assert refused in failed()["message"] and "allow it in the chart" in failed()["message"]
    finally:
        for name in sources:
            swarm.kubectl("delete", "dataset", name, "-n", NAMESPACE, check=False)


BACKGROUND_CAP = 2 * MiB
BACKGROUND_BYTES = 24 * MiB


def test_a_background_dataset_keeps_to_its_cap_from_the_origin_and_through_the_swarm(swarm: Swarm) -> None:
    """Two nodes, links of 30 MB/s: unthrottled this dataset is Ready in about a second of transfer."""
    assert swarm.bed.s3 is not None
    client = swarm.bed.s3.client()
    for index in range(6):
        client.put_object(
            Bucket=swarm.bucket, Key=f"later/part-{index}.bin", Body=os.urandom(BACKGROUND_BYTES // 6)
        )
    seeder, leecher = swarm.nodes[3], swarm.nodes[4]
    manifest = s3_dataset(
        "next-job",
        NAMESPACE,
        f"s3://{swarm.bucket}/later",
        swarm.bed.s3.endpoint,
        "dataset-s3",
        [seeder.name, leecher.name],
        priority="Background",
        backgroundBytesPerSecond=BACKGROUND_CAP,
    )
    swarm.apply(manifest)
    created = time.monotonic()
    ready_at: dict[str, float] = {}

    def both_ready() -> bool:
        for node in (seeder, leecher):
            if node.name not in ready_at and swarm.node_report("next-job", node.name).get("phase") == "Ready":
                ready_at[node.name] = time.monotonic() - created
        return len(ready_at) == 2

    wait_until(
        both_ready, 180, "both copies of the Background dataset", context=lambda: swarm.diagnosis("next-job")
    )
    status = swarm.dataset("next-job")["status"]
    first = status["seeder"]
    other = leecher.name if first == seeder.name else seeder.name
    floor = BACKGROUND_BYTES / BACKGROUND_CAP  # 12 s; the token bucket's burst takes at most 0.5 s off
    print(
        f"\nBackground dataset: seeder Ready at {ready_at[first]:.1f} s, "
        f"peer at {ready_at[other]:.1f} s, floor {floor:.0f} s"
    )
    assert ready_at[first] >= 0.85 * floor, "the seeder read the origin faster than its cap"
    assert ready_at[other] >= 0.85 * floor, "the peer copy arrived faster than the cap allows"
    assert status["nodes"][other]["bytesFromPeers"] >= BACKGROUND_BYTES
    assert status["nodes"][first]["digest"] == status["nodes"][other]["digest"] == status["digest"]
    seeder_log = swarm.agents[first].log_path.read_text(errors="replace")
    assert "seeding in the background at 2Mi/s" in seeder_log
    wide = swarm.kubectl("get", "dataset", "next-job", "-n", NAMESPACE, "-o", "wide").stdout
    print(wide)
    assert wide.splitlines()[0].split()[-2:] == ["PRIORITY", "AGE"] and "Background" in wide
    swarm.kubectl("delete", "dataset", "next-job", "-n", NAMESPACE, "--timeout=120s")


def test_a_full_pool_evicts_the_least_recently_used_copy_no_one_uses(swarm: Swarm) -> None:
    """Three copies of 96 MiB fill 77% of one node's pool: the oldest free one goes, down to 55%.

    The oldest copy of all is shared with another Dataset, so it is in use and stays; the next
    oldest is evicted, and the newest, still arriving, is in use too.
    """
    assert swarm.bed.s3 is not None
    client = swarm.bed.s3.client()
    node = swarm.nodes[2]
    for prefix in ("evict-a", "evict-b", "evict-c"):
        for index in range(2):
            client.put_object(Bucket=swarm.bucket, Key=f"{prefix}/{index}.bin", Body=os.urandom(48 * MiB))

    def create(name: str, prefix: str) -> None:
        swarm.apply(dataset_manifest(name, swarm.bucket, prefix, [node.name], swarm.bed.s3.endpoint))

    def ready(name: str) -> bool:
        return swarm.dataset(name).get("status", {}).get("phase") == "Ready"

    names = ["oldest", "oldest-shared", "older", "newest"]
    try:
        for name, prefix in zip(names[:3], ("evict-a", "evict-a", "evict-b"), strict=True):
            create(name, prefix)
            wait_until(
                lambda name=name: ready(name),
                120,
                f"{name} Ready",
                context=lambda name=name: swarm.diagnosis(name),
            )
        assert swarm.dataset("oldest-shared")["status"]["sharedCopies"] == {node.name: "oldest"}
        create("newest", "evict-c")

        def evicted() -> dict:
            report = swarm.node_report("older", node.name)
            return report if report.get("phase") == "Evicted" else {}

        wait_until(evicted, 120, "the older copy to be evicted", context=lambda: swarm.diagnosis("older"))
        wait_until(lambda: ready("newest"), 120, "the newest copy", context=lambda: swarm.diagnosis("newest"))
        report = evicted()
        print(f"\n{swarm.kubectl('get', 'datasets', '-n', NAMESPACE).stdout}\n{report['message']}")
        assert report["reason"] == "PoolHighWatermark"
        assert re.match(
            rf"pool nvme on node {node.name} is 7\d% full \(high watermark 70%\)", report["message"]
        )
        older = swarm.dataset("older")["status"]
        assert older["phase"] == "Evicted" and older["targetNodes"] == [] and older["ready"] == "0/0"
        wait_until(lambda: not copy_volumes(swarm, "older"), 60, "the evicted copy's volume to go")
        assert len(copy_volumes(swarm, "oldest")) == 1 and ready("oldest") and ready("oldest-shared")
        events = swarm.kubectl(
            "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=older,reason=Evicted"
        ).stdout
        assert f"copy on node {node.name}: pool nvme" in events, swarm.kubectl(
            "get", "events", "-n", NAMESPACE
        ).stdout
    finally:
        for name in reversed(names):  # the sharer before its lender, which waits for it
            swarm.kubectl("delete", "dataset", name, "-n", NAMESPACE, "--timeout=120s", check=False)
