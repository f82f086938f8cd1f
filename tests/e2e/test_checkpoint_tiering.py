"""The node agent tiers recorded checkpoints to the real S3 server, survives kill -9, and keeps retention.

The volume is staged by the kubelet stand-in (tests/testbed/kubelet_standin.py): the agent is killed
with kill -9 while a multipart upload is in flight, and restarted with the same state, which a
kubelet does not do on demand. A trainer pod on real kubelets is in test_user_path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cairn.s3 import S3Location
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import (
    METRICS_PORT,
    Driver,
    mount_capability,
    running_driver,
    start_node_agent,
)
from tests.testbed.kubelet_standin import standin_claim_volume
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
CAPABILITY = mount_capability()
BANDWIDTH = 6 * MiB


@dataclass
class Trainer:
    driver: Driver
    staging: Path
    bucket: str
    prefix: str


def apply(bed: TestBed, manifest: dict) -> None:
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


@pytest.fixture(scope="module")
def tiering_bucket(bed: TestBed) -> Iterator[str]:
    assert bed.s3 is not None
    name = bed.s3.create_bucket(f"tiering-{bed.run_id[:8]}")
    yield name
    client = bed.s3.client()
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def trainer(bed: TestBed, tiering_bucket: str) -> Iterator[Trainer]:
    assert bed.s3 is not None
    secret = bed.s3.credentials_secret("tiering-s3", NAMESPACE)
    apply(bed, secret)
    apply(
        bed,
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": "tiered", "namespace": NAMESPACE},
            "spec": {
                "commit": {"settleSeconds": 1},
                "target": {
                    "endpoint": bed.s3.endpoint,
                    "bucket": tiering_bucket,
                    "prefix": "runs",
                    "credentialsSecretRef": {"name": "tiering-s3"},
                },
                "retention": {"keepLocal": 2, "keepRemoteLast": 3},
                # Slow enough that an upload is still in flight when the test kills the agent.
                "upload": {
                    "concurrency": 2,
                    "partSizeBytes": 5 * MiB,
                    "bandwidthLimitBytesPerSecond": BANDWIDTH,
                },
            },
        },
    )
    with (
        running_driver(bed, "tiering", disks=1, disk_size=512 * MiB) as driver,
        standin_claim_volume(
            driver, "tiered-trainer", 256 * MiB, pvc="llm", namespace=NAMESPACE, policy="tiered"
        ) as (_volume, staging),
    ):
        try:
            yield Trainer(driver, staging, tiering_bucket, f"runs/{NAMESPACE}/llm")
        finally:
            print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
    bed.control_plane.kubectl("delete", "checkpoints", "-l", "cairn.dev/pvc=llm", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "ckptpolicy", "tiered", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "secret", "tiering-s3", "-n", NAMESPACE)


def checkpoints(bed: TestBed) -> dict[int, dict]:
    listed = bed.control_plane.kubectl(
        "get", "checkpoints", "-n", NAMESPACE, "-l", "cairn.dev/pvc=llm", "-o", "json"
    ).stdout
    return {item["spec"]["step"]: item for item in json.loads(listed)["items"]}


def phase(bed: TestBed, step: int) -> str | None:
    return checkpoints(bed).get(step, {}).get("status", {}).get("phase")


def remote_prefix(record: dict) -> str:
    """The key prefix of a Checkpoint's copy: `<prefix>/<ns>/<pvc>/<path>/<its uid>`."""
    return S3Location.from_url(record["status"]["remote"]["url"]).prefix


def remote_keys(bed: TestBed, bucket: str, prefix: str) -> set[str]:
    assert bed.s3 is not None
    pages = bed.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {obj["Key"][len(prefix) + 1 :] for page in pages for obj in page.get("Contents", [])}


def test_a_dcp_checkpoint_becomes_tiered_with_verified_bytes(bed: TestBed, trainer: Trainer) -> None:
    written = write_dcp(trainer.staging / "ckpt" / "step_10", [7 * MiB + 5, 3 * MiB], metadata_bytes=2048)
    wait_until(lambda: phase(bed, 10) == "Tiered", 90, "step 10 to be Tiered")
    record = checkpoints(bed)[10]
    status = record["status"]
    url = f"s3://{trainer.bucket}/{trainer.prefix}/ckpt/step_10/{record['metadata']['uid']}/"
    assert status["remote"]["url"] == url and status["remote"]["verifiedAt"]
    assert status["tiers"] == "local,s3" and status["bytesUploaded"] == record["spec"]["sizeBytes"]
    uploaded = next(c for c in status["conditions"] if c["type"] == "Uploaded")
    assert uploaded["status"] == "True" and uploaded["reason"] == "Verified"
    client = bed.s3.client()
    for name, data in written.items():
        body = client.get_object(Bucket=trainer.bucket, Key=f"{remote_prefix(record)}/{name}")["Body"]
        assert body.read() == data
    assert ".cairn-manifest.json" in remote_keys(bed, trainer.bucket, remote_prefix(record))

    node = trainer.driver.node.name
    scraped = MetricSamples.scrape(f"http://{trainer.driver.node.ip}:{METRICS_PORT}/metrics")
    sent = scraped.value("cairn_checkpoint_bytes_total", node=node, operation="upload", tier="s3")
    assert sent >= record["spec"]["sizeBytes"]
    assert scraped.value("cairn_checkpoints", node=node, phase="Tiered") >= 1
    assert scraped.value("cairn_checkpoint_upload_seconds_count", node=node) >= 1
    lag = scraped.value(
        "cairn_checkpoint_tier_lag_seconds", node=node, namespace=NAMESPACE, pvc="llm", tier="s3"
    )
    assert lag >= 0


@dataclass
class MetricSamples:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def scrape(cls, url: str) -> MetricSamples:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
            if match:
                labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
                samples[(match.group(1), labels)] = float(match.group(3))
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}"
        return self.samples[key]


def test_an_agent_killed_mid_upload_resumes_without_resending_finished_parts(
    bed: TestBed, trainer: Trainer
) -> None:
    driver = trainer.driver
    write_dcp(trainer.staging / "ckpt" / "step_20", [40 * MiB], metadata_bytes=2048)
    client = bed.s3.client()
    wait_until(lambda: phase(bed, 20) == "Uploading", 60, "step 20 to start uploading")
    key = f"{remote_prefix(checkpoints(bed)[20])}/__0_0.distcp"

    def parts_in_flight() -> int:
        uploads = client.list_multipart_uploads(Bucket=trainer.bucket, Prefix=key).get("Uploads", [])
        if not uploads:
            return 0
        upload = uploads[0]
        parts = client.list_parts(Bucket=trainer.bucket, Key=key, UploadId=upload["UploadId"])
        return len(parts.get("Parts", []))

    wait_until(lambda: parts_in_flight() >= 2, 60, "a multipart upload with finished parts")
    assert phase(bed, 20) == "Uploading"
    os.killpg(driver.agent.pid, signal.SIGKILL)
    driver.agent.proc.wait(10)
    held = parts_in_flight()
    assert 2 <= held < 8, f"{held} of 8 parts uploaded when the agent died: not mid-upload"
    driver.agent.stop()

    driver.agent, _ = start_node_agent(
        driver.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], driver.node
    )
    wait_until(lambda: phase(bed, 20) == "Tiered", 120, "step 20 to be Tiered after the restart")
    uploaded = next(c for c in checkpoints(bed)[20]["status"]["conditions"] if c["type"] == "Uploaded")
    assert f"keeping {held} part(s) already in S3" in uploaded["message"], uploaded["message"]
    assert client.list_multipart_uploads(Bucket=trainer.bucket, Prefix=key).get("Uploads", []) == []
    head = client.head_object(Bucket=trainer.bucket, Key=key)
    assert head["ContentLength"] == 40 * MiB and head["ETag"].strip('"').endswith("-8")


def test_retention_keeps_two_local_and_three_remote_of_five(bed: TestBed, trainer: Trainer) -> None:
    steps = [100, 200, 300, 400, 500]
    prefixes = {}
    for step in steps:
        write_dcp(trainer.staging / "series" / f"step_{step}", [MiB], metadata_bytes=2048)
        wait_until(lambda step=step: phase(bed, step) == "Tiered", 60, f"step {step} to be Tiered")
        prefixes[step] = remote_prefix(checkpoints(bed)[step])

    def settled() -> bool:
        current = checkpoints(bed)
        return sorted(s for s in current if s >= 100) == [300, 400, 500] and all(
            current[s]["status"]["tiers"] == expected
            for s, expected in ((300, "s3"), (400, "local,s3"), (500, "local,s3"))
        )

    wait_until(settled, 60, "retention to leave steps 300-500")
    local = sorted(p.name for p in (trainer.staging / "series").iterdir())
    assert local == ["step_400", "step_500"]
    for step in steps:
        keys = remote_keys(bed, trainer.bucket, prefixes[step])
        assert bool(keys) == (step >= 300), f"step {step}: remote objects {sorted(keys)}"
    assert checkpoints(bed)[300]["status"]["local"]["present"] is False
    # Retention is per series (one directory of checkpoints): the two in ckpt/ are untouched.
    assert sorted(p.name for p in (trainer.staging / "ckpt").iterdir()) == ["step_10", "step_20"]
    assert checkpoints(bed)[20]["status"]["tiers"] == "local,s3"
