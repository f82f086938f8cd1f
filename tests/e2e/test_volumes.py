"""The volume path end to end: the controller and a node agent on the bed, through their CSI sockets.

Volumes are staged by the kubelet stand-in (tests/testbed/kubelet_standin.py): the tests unmount
them behind the agent's back, put a foreign filesystem on a device, and force stale watch events,
faults no kubelet produces on demand. Pods on real kubelets are in test_user_path.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cairn import TOPOLOGY_KEY
from cairn.csi.proto import csi_pb2
from tests.testbed.bed import TestBed
from tests.testbed.components import Driver, block_capability, mount_capability, running_driver
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def driver(bed: TestBed) -> Iterator[Driver]:
    # One small disk: 256 MiB holds 63 extents of 4 MiB after LVM's metadata.
    with running_driver(bed, "volumes", disks=1, disk_size=256 * MiB) as running:
        yield running


def create(driver: Driver, name: str, size: int, **kwargs) -> csi_pb2.CreateVolumeResponse:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=size),
        volume_capabilities=[kwargs.pop("capability", mount_capability())],
        **kwargs,
    )
    return driver.controller_stub().CreateVolume(request, timeout=60)


def delete(driver: Driver, volume_id: str) -> None:
    driver.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)


def stage(driver: Driver, volume_id: str, path: Path, fs_type: str = "ext4") -> None:
    # The kubelet stand-in: these tests write to staged volumes, unmount them and put foreign
    # filesystems on their devices behind the agent's back.
    KubeletStandIn(driver.node_socket, driver.workdir).stage(
        volume_id, path=path, capability=mount_capability(fs_type)
    )


def unstage(driver: Driver, volume_id: str, path: Path) -> None:
    KubeletStandIn(driver.node_socket, driver.workdir, staged=[(volume_id, path)]).unstage(volume_id, path)


def test_a_carved_volume_keeps_its_data_through_later_updates(bed: TestBed, driver: Driver) -> None:
    """Updates of the LocalVolume (finalizer, labels, re-lists) must never carve it again."""
    volume_id = create(driver, "keeps-data", 16 * MiB).volume.volume_id
    staging = driver.workdir / "staging" / volume_id
    stage(driver, volume_id, staging)
    payload = os.urandom(1 * MiB)
    (staging / "weights.bin").write_bytes(payload)
    os.sync()
    for i in range(3):
        bed.control_plane.kubectl("label", "localvolume", volume_id, f"touch=n{i}", "--overwrite")
    time.sleep(2)
    assert (staging / "weights.bin").read_bytes() == payload
    carved = re.findall(rf'"volume {volume_id} ready', driver.agent.log_path.read_text())
    assert len(carved) == 1
    unstage(driver, volume_id, staging)
    delete(driver, volume_id)


def test_concurrent_creates_never_overcommit_the_pool(bed: TestBed, driver: Driver) -> None:
    size = 48 * MiB  # 12 extents: five fit in 63, the sixth does not

    def attempt(i: int) -> csi_pb2.CreateVolumeResponse | grpc.RpcError:
        try:
            return create(driver, f"crowd-{i}", size)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    created = [r for r in results if isinstance(r, csi_pb2.CreateVolumeResponse)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    try:
        assert len(created) == 5
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("free" in e.details() for e in refused)
        volumes = json.loads(bed.control_plane.kubectl("get", "localvolumes", "-o", "json").stdout)["items"]
        ready = [
            v
            for v in volumes
            if v["status"].get("phase") == "Ready" and v["spec"]["nodeName"] == driver.node.name
        ]
        assert sum(v["status"]["capacityBytes"] for v in ready) <= 63 * 4 * MiB
    finally:
        for response in created:
            delete(driver, response.volume.volume_id)


def test_unknown_storageclass_parameter_is_refused_with_the_valid_keys(driver: Driver) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        create(driver, "typo", 16 * MiB, parameters={"cairn.dev/pol": "nvme"})
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cairn.dev/pol" in excinfo.value.details() and "cairn.dev/pool" in excinfo.value.details()


def test_stage_never_reformats_a_volume_that_holds_a_filesystem(driver: Driver) -> None:
    volume_id = create(driver, "no-reformat", 16 * MiB).volume.volume_id
    staging = driver.workdir / "staging" / volume_id
    stage(driver, volume_id, staging, "ext4")
    (staging / "precious").write_text("do not lose me")
    unstage(driver, volume_id, staging)
    try:
        with pytest.raises(grpc.RpcError) as excinfo:
            stage(driver, volume_id, staging, "xfs")
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already holds a ext4 filesystem" in excinfo.value.details()
        stage(driver, volume_id, staging, "ext4")
        assert (staging / "precious").read_text() == "do not lose me"
        unstage(driver, volume_id, staging)
    finally:
        delete(driver, volume_id)


def test_stats_report_an_abnormal_condition_when_the_mount_is_gone(driver: Driver) -> None:
    volume_id = create(driver, "health", 16 * MiB).volume.volume_id
    staging = driver.workdir / "staging" / volume_id
    stage(driver, volume_id, staging)
    request = csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(staging))
    try:
        healthy = driver.node_stub().NodeGetVolumeStats(request, timeout=30)
        assert not healthy.volume_condition.abnormal
        byte_usage = next(u for u in healthy.usage if u.unit == csi_pb2.VolumeUsage.BYTES)
        assert 0 < byte_usage.total <= 16 * MiB
        subprocess.run(["umount", str(staging)], check=True)  # pulled out from under the agent
        broken = driver.node_stub().NodeGetVolumeStats(request, timeout=30)
        assert broken.volume_condition.abnormal
        assert "no longer a mount point" in broken.volume_condition.message
    finally:
        unstage(driver, volume_id, staging)
        delete(driver, volume_id)


def test_deleted_volume_frees_its_space_and_delete_is_idempotent(bed: TestBed, driver: Driver) -> None:
    def free_bytes() -> int:
        node = json.loads(
            bed.control_plane.kubectl("get", "storagenode", driver.node.name, "-o", "json").stdout
        )
        return node["status"]["pools"][0]["freeBytes"]

    def wait_for_free(expected: int) -> None:
        wait_until(
            lambda: free_bytes() == expected,
            10,
            f"{expected} bytes free in the pool",
            context=lambda: f"free now: {free_bytes()}",
        )

    # The agent publishes pool changes shortly after they happen; let earlier tests' changes land.
    before = free_bytes()
    time.sleep(1.5)
    while (now := free_bytes()) != before:
        before = now
        time.sleep(1.5)
    volume_id = create(driver, "short-lived", 32 * MiB).volume.volume_id
    wait_for_free(before - 32 * MiB)
    delete(driver, volume_id)
    delete(driver, volume_id)
    wait_for_free(before)
    assert bed.control_plane.kubectl("get", "localvolume", volume_id, check=False).returncode != 0


def test_a_new_block_volume_never_shows_what_a_deleted_one_held(bed: TestBed) -> None:
    """Tenant a writes through a raw block volume and deletes it; tenant b's new one reads zeros."""
    pattern = b"TENANT-A-SECRET!" * 65536  # 1 MiB
    # 64 MiB holds 15 extents: two 48 MiB volumes one after the other share at least 9 of them.
    with running_driver(bed, "zeroing", disks=1, disk_size=64 * MiB) as driver:
        standin = KubeletStandIn(driver.node_socket, driver.workdir)

        def publish(volume_id: str, name: str) -> Path:
            target = driver.workdir / name
            standin.node().NodePublishVolume(
                csi_pb2.NodePublishVolumeRequest(
                    volume_id=volume_id, target_path=str(target), volume_capability=block_capability()
                ),
                timeout=60,
            )
            return target

        def unpublish(volume_id: str, target: Path) -> None:
            standin.node().NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)), timeout=60
            )

        # Other modules' nodes may still be reporting: both volumes go to this node's one disk.
        here = csi_pb2.Topology(segments={TOPOLOGY_KEY: driver.node.name})
        on_this_node = csi_pb2.TopologyRequirement(requisite=[here], preferred=[here])

        def create_block(name: str) -> str:
            capability = block_capability()
            response = create(
                driver, name, 48 * MiB, capability=capability, accessibility_requirements=on_this_node
            )
            return response.volume.volume_id

        first = create_block("tenant-a-block")
        device = publish(first, "a-device")
        descriptor = os.open(device, os.O_WRONLY)
        try:
            for offset in range(0, 48 * MiB, len(pattern)):
                os.pwrite(descriptor, pattern, offset)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        with open(device, "rb") as check:
            assert check.read(len(pattern)) == pattern
        unpublish(first, device)
        delete(driver, first)

        second = create_block("tenant-b-block")
        device = publish(second, "b-device")
        descriptor = os.open(device, os.O_RDONLY | os.O_DIRECT)
        try:  # the finally releases the device even when an assertion fails
            buffer = mmap.mmap(-1, 4 * MiB)
            seen = 0
            for offset in range(0, 48 * MiB, 4 * MiB):
                read = os.preadv(descriptor, [buffer], offset)
                chunk = bytes(buffer[:read])
                assert b"TENANT-A" not in chunk, f"tenant a's bytes at offset {offset} of tenant b's volume"
                assert chunk.count(0) == read, f"non-zero bytes at offset {offset} of a new volume"
                seen += read
            assert seen == 48 * MiB
        finally:
            os.close(descriptor)
            unpublish(second, device)
            delete(driver, second)
