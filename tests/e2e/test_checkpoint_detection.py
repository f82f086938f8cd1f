"""A training job's checkpoints on a Cairn volume become Checkpoint objects, and only finished ones.

The volume is staged by the kubelet stand-in (tests/testbed/kubelet_standin.py): the tests write into
it behind the agent's back at exact moments, a commit marker before its files finish, a file changed
after its commit, which no pod does on demand. A trainer pod on real kubelets is in test_user_path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.bed import TestBed
from tests.testbed.components import Driver, mount_capability, running_driver
from tests.testbed.kubelet_standin import standin_claim_volume
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
CAPABILITY = mount_capability()


@pytest.fixture(scope="module")
def staged(bed: TestBed) -> Iterator[tuple[Driver, Path]]:
    policy = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": "train-policy", "namespace": NAMESPACE},
        "spec": {"commit": {"settleSeconds": 2}},
    }
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    with (
        running_driver(bed, "checkpoints", disks=1, disk_size=256 * MiB) as driver,
        standin_claim_volume(
            driver, "trainer-ckpt", 64 * MiB, pvc="trainer", namespace=NAMESPACE, policy="train-policy"
        ) as (_volume, staging),
    ):
        try:
            yield driver, staging
        finally:
            print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
    bed.control_plane.kubectl("delete", "checkpoints", "--all", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "ckptpolicy", "train-policy", "-n", NAMESPACE)


def checkpoints(bed: TestBed) -> dict[int, dict]:
    items = json.loads(bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE, "-o", "json").stdout)
    return {item["spec"]["step"]: item for item in items["items"]}


def test_a_dcp_checkpoint_is_recorded_once_its_metadata_lands_and_it_settles(
    bed: TestBed, staged: tuple[Driver, Path]
) -> None:
    _driver, staging = staged
    step = staging / "checkpoints" / "step_100"
    step.mkdir(parents=True)
    for rank in range(2):
        (step / f"__{rank}_0.distcp").write_bytes(os.urandom(3 * MiB))
    # Shards but no .metadata: half written, never recorded however long it waits.
    time.sleep(6)
    assert 100 not in checkpoints(bed)
    (step / ".metadata").write_bytes(os.urandom(8192))
    wait_until(lambda: 100 in checkpoints(bed), 30, "step 100 to be recorded")
    record = checkpoints(bed)[100]
    assert record["spec"]["pvcName"] == "trainer" and record["spec"]["path"] == "checkpoints/step_100"
    assert record["spec"]["sizeBytes"] == 2 * 3 * MiB + 8192 and record["spec"]["fileCount"] == 3
    assert record["status"]["phase"] == "Committed" and record["status"]["tiers"] == "local"
    assert "ownerReferences" not in record["metadata"]
    assert (step / ".cairn-manifest.json").exists()


def test_a_marker_written_before_its_files_finish_does_not_record_early(
    bed: TestBed, staged: tuple[Driver, Path]
) -> None:
    _driver, staging = staged
    step = staging / "checkpoints" / "step_200"
    step.mkdir(parents=True)
    (step / ".metadata").write_bytes(os.urandom(4096))
    shard = step / "__0_0.distcp"
    with shard.open("wb") as growing:
        for _ in range(8):  # still being written for ~4 s after the marker appeared
            growing.write(os.urandom(MiB))
            growing.flush()
            time.sleep(0.5)
            assert 200 not in checkpoints(bed)
    wait_until(lambda: 200 in checkpoints(bed), 30, "step 200 to be recorded")
    assert checkpoints(bed)[200]["spec"]["sizeBytes"] == 8 * MiB + 4096
    table = bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout
    assert table.splitlines()[0].split() == ["NAME", "PVC", "STEP", "SIZE", "NODE", "PHASE", "TIERS", "AGE"]
