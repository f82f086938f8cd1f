"""Drain before release: the checkpoint a job writes just before it exits still reaches S3.

The volume is staged and published by the kubelet stand-in (tests/testbed/kubelet_standin.py), so
the test can unpublish, unstage and delete the volume the moment the checkpoint is committed, faster
than any kubelet would: the harshest order a real job's end can produce.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cairn.csi.proto import csi_pb2
from cairn.s3 import S3Location
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import Driver, mount_capability, running_driver
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"


@dataclass
class Bed:
    driver: Driver
    bucket: str


def apply(bed: TestBed, manifest: dict) -> None:
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def policy(bed: TestBed, name: str, bucket: str, secret: str, **spec: object) -> dict:
    assert bed.s3 is not None
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "commit": {"settleSeconds": 1},
            "target": {
                "endpoint": bed.s3.endpoint,
                "bucket": bucket,
                "prefix": "drain",
                "credentialsSecretRef": {"name": secret},
            },
            **spec,
        },
    }


@pytest.fixture(scope="module")
def drain_bed(bed: TestBed) -> Iterator[Bed]:
    assert bed.s3 is not None
    bucket = bed.s3.create_bucket(f"drain-{bed.run_id[:8]}")
    apply(bed, bed.s3.credentials_secret("drain-s3", NAMESPACE))
    apply(bed, policy(bed, "drain-policy", bucket, "drain-s3"))
    # Its Secret never exists, so nothing it records can be tiered: the drain can only time out.
    apply(bed, policy(bed, "drain-stuck", bucket, "no-such-secret", drainTimeoutSeconds=3))
    try:
        with running_driver(bed, "drain", disks=1, disk_size=256 * MiB) as driver:
            yield Bed(driver, bucket)
    finally:
        print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
        for pvc in ("finale", "stuck"):
            bed.control_plane.kubectl("delete", "checkpoints", "-l", f"cairn.dev/pvc={pvc}", "-n", NAMESPACE)
        bed.control_plane.kubectl("delete", "ckptpolicy", "drain-policy", "drain-stuck", "-n", NAMESPACE)
        bed.control_plane.kubectl("delete", "secret", "drain-s3", "-n", NAMESPACE)
        client = bed.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


def create_volume(driver: Driver, name: str, pvc: str, policy_name: str) -> str:
    parameters = {
        "csi.storage.k8s.io/pvc/name": pvc,
        "csi.storage.k8s.io/pvc/namespace": NAMESPACE,
        "cairn.dev/checkpoint-policy": policy_name,
    }
    created = driver.controller_stub().CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=48 * MiB),
            volume_capabilities=[mount_capability()],
            parameters=parameters,
        ),
        timeout=60,
    )
    return created.volume.volume_id


def job_writes_its_last_checkpoint_and_goes(driver: Driver, volume: str, step: int) -> dict[str, bytes]:
    """Publish, write a committed checkpoint, then unpublish and unstage at once, as a pod's end."""
    kubelet = KubeletStandIn(driver.node_socket, driver.workdir)
    staging = kubelet.stage(volume)
    target = kubelet.publish(volume, staging)
    written = write_dcp(target / "ckpt" / f"step_{step}", [3 * MiB + 5, MiB], metadata_bytes=2048)
    kubelet.release_all()
    return written


def delete_volume(driver: Driver, volume: str, within: float) -> float:
    """DeleteVolume as external-provisioner does it: retried while it answers DEADLINE_EXCEEDED."""
    started = time.monotonic()
    while True:
        try:
            driver.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)
            return time.monotonic() - started
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() - started > within:
                raise
            print(f"DeleteVolume: {error.code().name}: {error.details()}")


def records(bed: TestBed, pvc: str) -> list[dict]:
    listed = bed.control_plane.kubectl(
        "get", "checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={pvc}", "-o", "json"
    ).stdout
    return json.loads(listed)["items"]


def events_about(bed: TestBed, name: str) -> list[dict]:
    listed = bed.control_plane.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    return json.loads(listed)["items"]


def local_volume_exists(bed: TestBed, name: str) -> bool:
    found = bed.control_plane.kubectl("get", "localvolume", name, "--ignore-not-found", "-o", "name")
    return bool(found.stdout.strip())


def test_a_checkpoint_written_just_before_the_pod_goes_and_the_claim_is_deleted_ends_tiered(
    bed: TestBed, drain_bed: Bed
) -> None:
    driver = drain_bed.driver
    volume = create_volume(driver, "drain-finale", "finale", "drain-policy")
    written = job_writes_its_last_checkpoint_and_goes(driver, volume, 100)
    waited = delete_volume(driver, volume, within=120)

    # Deleting returned only after the drain: the checkpoint is recorded and in S3, and the LV gone.
    assert not local_volume_exists(bed, volume)
    [record] = records(bed, "finale")
    assert record["status"]["phase"] == "Tiered", record["status"]
    assert "s3" in record["status"]["tiers"].split(",")
    reasons = [e["reason"] for e in events_about(bed, volume)]
    assert "Draining" in reasons, reasons
    print(f"DeleteVolume returned after {waited:.1f}s; events on {volume}: {reasons}")

    # Restorable: the CLI fetches it from S3 (the node's copy went with the volume) and verifies it.
    destination = driver.workdir / "restored-finale"
    argv = [sys.executable, "-m", "cairn.cli", "checkpoint", "restore", record["metadata"]["name"]]
    argv += ["--to", str(destination), "-n", NAMESPACE]
    argv += ["--kubeconfig", str(bed.control_plane.kubeconfigs["admin"])]
    result = driver.node.run(argv, check=False, timeout=180, text=True)
    print(f"\n$ cairn checkpoint restore ...\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stderr
    assert "served by s3" in result.stdout
    restored = {
        str(p.relative_to(destination)): p.read_bytes()
        for p in destination.rglob("*")
        if p.is_file() and p.name != ".cairn-manifest.json"
    }
    assert restored == written
    remote = S3Location.from_url(record["status"]["remote"]["url"])
    assert remote.bucket == drain_bed.bucket


def test_a_drain_that_cannot_finish_releases_the_volume_at_its_deadline_naming_the_loss(
    bed: TestBed, drain_bed: Bed
) -> None:
    driver = drain_bed.driver
    volume = create_volume(driver, "drain-stuck", "stuck", "drain-stuck")
    job_writes_its_last_checkpoint_and_goes(driver, volume, 7)
    wait_until(lambda: records(bed, "stuck"), 60, "the last checkpoint to be recorded")
    waited = delete_volume(driver, volume, within=120)
    assert waited >= 2.0, f"released after {waited:.1f}s, before the 3 s drain deadline"
    assert not local_volume_exists(bed, volume)

    [record] = records(bed, "stuck")
    assert record["status"]["phase"] != "Tiered"
    timed_out = [e for e in events_about(bed, volume) if e["reason"] == "DrainTimedOut"]
    assert timed_out and timed_out[0]["type"] == "Warning", events_about(bed, volume)
    assert record["metadata"]["name"] in timed_out[0]["message"], timed_out[0]["message"]
    assert "lost" in timed_out[0]["message"]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"/draining/{volume}" not in mounts
