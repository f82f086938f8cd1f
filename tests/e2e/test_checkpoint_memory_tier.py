"""Checkpoints in a memory volume drain through the tiers, are kept per tier, and restore fastest first.

A node agent with a memory pool and a disk; a claim of pool `memory` whose class names a policy
with tiers [memory, local, s3], staged by the kubelet stand-in so the test writes into the tmpfs
from the host. The real S3 server is the bed's MinIO.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cairn.csi.proto import csi_pb2
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import Driver, running_driver
from tests.testbed.kubelet_standin import standin_claim_volume
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
PVC = "mem-llm"
POLICY = "memory-tiers"


@dataclass
class Trainer:
    driver: Driver
    volume: str
    path: Path
    """Where the trainer pod sees the claim (its published mount)."""
    bucket: str

    @property
    def tier_store(self) -> Path:
        return self.driver.workdir / "state" / self.driver.node.name / "tier-store" / NAMESPACE


def apply(bed: TestBed, manifest: dict) -> None:
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


@pytest.fixture(scope="module")
def trainer(bed: TestBed) -> Iterator[Trainer]:
    assert bed.s3 is not None
    bucket = bed.s3.create_bucket(f"memtier-{bed.run_id[:8]}")
    apply(bed, bed.s3.credentials_secret("memtier-s3", NAMESPACE))
    apply(
        bed,
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": POLICY, "namespace": NAMESPACE},
            "spec": {
                "tiers": ["memory", "local", "s3"],
                "commit": {"settleSeconds": 1},
                "target": {
                    "endpoint": bed.s3.endpoint,
                    "bucket": bucket,
                    "prefix": "runs",
                    "credentialsSecretRef": {"name": "memtier-s3"},
                },
                "retention": {"keepMemory": 1, "keepLocal": 2, "keepRemoteLast": 3},
                # Slow enough that a poll sees the upload in flight, and what it waits for.
                "upload": {"bandwidthLimitBytesPerSecond": 4 * MiB},
            },
        },
    )
    agent_args = ("--memory-pool-bytes=134217728", "--local-tier-bytes=201326592")
    with (
        running_driver(bed, "memtier", disks=1, disk_size=512 * MiB, agent_args=agent_args) as driver,
        standin_claim_volume(
            driver, "memtier-trainer", 96 * MiB, pvc=PVC, namespace=NAMESPACE, policy=POLICY, pool="memory"
        ) as (volume, staging),
    ):
        try:
            yield Trainer(driver, volume, staging, bucket)
        finally:
            print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
    bed.control_plane.kubectl("delete", "checkpoints", "-l", f"cairn.dev/pvc={PVC}", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "ckptpolicy", POLICY, "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "secret", "memtier-s3", "-n", NAMESPACE)


def checkpoints(bed: TestBed) -> dict[int, dict]:
    listed = bed.control_plane.get_json("checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={PVC}")
    return {item["spec"]["step"]: item for item in listed["items"]}


def status_of(bed: TestBed, step: int) -> dict:
    return checkpoints(bed).get(step, {}).get("status", {})


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".cairn-manifest.json"
    }


class StatusWatch:
    """Polls one step's status in a thread and keeps every distinct (phase, tiers) it showed."""

    def __init__(self, bed: TestBed, step: int) -> None:
        self.bed, self.step = bed, step
        self.seen: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            status = status_of(self.bed, self.step)
            shown = (status.get("phase", ""), status.get("tiers", ""))
            if status and (not self.seen or self.seen[-1] != shown):
                self.seen.append(shown)


def test_a_memory_checkpoint_drains_to_local_disk_and_s3_at_once_each_copy_verified(
    bed: TestBed, trainer: Trainer
) -> None:
    with StatusWatch(bed, 10) as watch:
        written = write_dcp(trainer.path / "run" / "step_10", [5 * MiB, 3 * MiB], metadata_bytes=2048)
        wait_until(lambda: status_of(bed, 10).get("phase") == "Tiered", 120, "step 10 to be Tiered")
        wait_until(lambda: "local" in status_of(bed, 10).get("tiers", ""), 60, "step 10 on local disk")
        time.sleep(0.3)
    print(f"\nstep 10 went through {watch.seen}")
    assert watch.seen[0] == ("Committed", "memory"), watch.seen
    # Both slower copies come from memory side by side; the memory copy, the newest, stays all along.
    assert ("Uploading", "memory") in watch.seen or ("Uploading", "memory,local") in watch.seen, watch.seen
    assert all(tiers.startswith("memory") for _, tiers in watch.seen), watch.seen
    assert watch.seen[-1] == ("Tiered", "memory,local,s3"), watch.seen
    status = status_of(bed, 10)
    assert status["local"]["pool"] == "memory" and status["local"]["present"]
    name = checkpoints(bed)[10]["metadata"]["name"]
    assert status["disk"]["path"] == f"tier-store/{NAMESPACE}/{name}"
    assert files_of(trainer.tier_store / name) == written
    events = bed.control_plane.get_json(
        "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name},reason=CopiedToLocal"
    )["items"]
    assert len(events) == 1 and "every file verified" in events[0]["message"], events


def test_retention_keeps_one_in_memory_two_on_local_disk_and_three_in_s3(
    bed: TestBed, trainer: Trainer
) -> None:
    steps = [100, 200, 300, 400, 500]
    for step in steps:
        write_dcp(trainer.path / "series" / f"step_{step}", [2 * MiB], metadata_bytes=2048)
        wait_until(lambda step=step: status_of(bed, step).get("phase") == "Tiered", 90, f"step {step} Tiered")
    expected = {500: "memory,local,s3", 400: "local,s3", 300: "s3"}

    def settled() -> bool:
        current = {step: item["status"]["tiers"] for step, item in checkpoints(bed).items() if step >= 100}
        return current == expected

    wait_until(
        settled,
        60,
        "retention to keep memory 1, local 2, s3 3",
        context=lambda: bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout,
    )
    print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
    # What each tier holds, on the node itself.
    assert sorted(p.name for p in (trainer.path / "series").iterdir()) == ["step_500"]
    names = {step: checkpoints(bed)[step]["metadata"]["name"] for step in expected}
    held = {p.name for p in trainer.tier_store.iterdir()}
    assert names[500] in held and names[400] in held and names[300] not in held, held
    # The memory copy of 400 went only once its local copy was verified: it still has it.
    assert status_of(bed, 400)["disk"]["present"] and not status_of(bed, 400)["local"]["present"]


def cairn_restore(bed: TestBed, trainer: Trainer, step: int, destination: Path) -> str:
    """The CLI as root on the trainer's node, with its agent's identity: every tier is open to it."""
    name = checkpoints(bed)[step]["metadata"]["name"]
    node = trainer.driver.node.name
    argv = [sys.executable, "-m", "cairn.cli", "checkpoint", "restore", name, "--to", str(destination)]
    argv += ["-n", NAMESPACE, "--node", node, "--kubeconfig", str(bed.control_plane.kubeconfigs["admin"])]
    argv += ["--peer-identity", str(trainer.driver.workdir / "state" / node / "peer-identity")]
    result = trainer.driver.node.run(argv, check=False, timeout=180, text=True)
    print(f"\n$ cairn checkpoint restore {name} ...\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_restore_takes_memory_then_local_disk_then_s3_even_with_no_pod_on_the_volume(
    bed: TestBed, trainer: Trainer
) -> None:
    wait_until(lambda: status_of(bed, 300).get("tiers") == "s3", 60, "step 300 only in S3")
    # The trainer's pod is gone: the agent still holds the tmpfs, and the checkpoint in it.
    trainer.driver.node_stub().NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=trainer.volume, target_path=str(trainer.path)),
        timeout=60,
    )
    assert not trainer.path.exists()
    memory_copy = trainer.driver.workdir / "state" / trainer.driver.node.name / "memory" / trainer.volume
    expected = files_of(memory_copy / "series" / "step_500")
    for step, tier in ((500, "memory"), (400, "local"), (300, "s3")):
        destination = trainer.driver.workdir / "restored" / str(step)
        out = cairn_restore(bed, trainer, step, destination)
        assert f"served by {tier}:" in out, out
        assert [line for line in out.splitlines() if line.startswith("served by")] == [
            line for line in out.splitlines() if line.startswith(f"served by {tier}:")
        ], out
    assert files_of(trainer.driver.workdir / "restored" / "500") == expected
