"""The memory pool end to end: a node agent with `--memory-pool-bytes`, the controller, CSI calls.

Volumes of pool `memory` are real tmpfs mounts the agent holds; they are staged by the kubelet
stand-in, so the tests can write into them from the host and restart the agent under them.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cairn import TOPOLOGY_KEY
from cairn.csi.proto import csi_pb2
from tests.testbed.bed import TestBed
from tests.testbed.components import (
    Driver,
    block_capability,
    mount_capability,
    running_driver,
    start_node_agent,
)
from tests.testbed.kubelet_standin import standin_pod_mount
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
POOL_BYTES = 64 * MiB
MEMORY = {"cairn.dev/pool": "memory"}


@pytest.fixture(scope="module")
def driver(bed: TestBed) -> Iterator[Driver]:
    with running_driver(
        bed, "memory", disks=1, disk_size=256 * MiB, agent_args=(f"--memory-pool-bytes={POOL_BYTES}",)
    ) as running:
        yield running


def create(driver: Driver, name: str, size: int, **kwargs) -> csi_pb2.CreateVolumeResponse:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=size),
        volume_capabilities=[kwargs.pop("capability", mount_capability(""))],
        parameters=kwargs.pop("parameters", MEMORY),
        **kwargs,
    )
    return driver.controller_stub().CreateVolume(request, timeout=60)


def delete(driver: Driver, volume_id: str) -> None:
    driver.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)


def capacity(driver: Driver) -> int:
    topology = csi_pb2.Topology(segments={TOPOLOGY_KEY: driver.node.name})
    request = csi_pb2.GetCapacityRequest(parameters=MEMORY, accessible_topology=topology)
    return driver.controller_stub().GetCapacity(request, timeout=10).available_capacity


def memory_pool_status(bed: TestBed, driver: Driver) -> dict | None:
    node = bed.control_plane.get_json("storagenode", driver.node.name)
    return next((p for p in node.get("status", {}).get("pools", []) if p["class"] == "memory"), None)


def events_of(bed: TestBed, volume_id: str, reason: str) -> list[dict]:
    events = bed.control_plane.get_json(
        "events", "-n", "default", "--field-selector", f"involvedObject.name={volume_id}"
    )
    return [e for e in events["items"] if e["reason"] == reason]


def filesystem_type(path: Path) -> str:
    return subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(path)], capture_output=True, text=True
    ).stdout.strip()


def test_the_pool_is_published_and_counted_by_get_capacity(bed: TestBed, driver: Driver) -> None:
    wait_until(lambda: memory_pool_status(bed, driver) is not None, 30, "the memory pool on the StorageNode")
    pool = memory_pool_status(bed, driver)
    assert pool is not None
    assert pool["totalBytes"] == POOL_BYTES and pool["freeBytes"] == POOL_BYTES, pool
    node = bed.control_plane.get_json("storagenode", driver.node.name)
    assert node["status"]["free"]["memory"] == "64Mi", node["status"]["free"]
    assert capacity(driver) == POOL_BYTES

    volume_id = create(driver, "mem-capacity", 16 * MiB).volume.volume_id
    try:
        wait_until(lambda: capacity(driver) == POOL_BYTES - 16 * MiB, 30, "GetCapacity to count the volume")
    finally:
        delete(driver, volume_id)
    wait_until(lambda: capacity(driver) == POOL_BYTES, 30, "the pool's share back after DeleteVolume")


def mounts_of_filesystem(path: Path) -> list[str]:
    """Every mount point of the filesystem shown at `path` (its device number in mountinfo)."""
    device = os.stat(path).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return sorted(fields[4] for fields in (line.split() for line in lines) if fields[2] == wanted)


def held_at(driver: Driver, volume_id: str) -> Path:
    return driver.workdir / "state" / driver.node.name / "memory" / volume_id


def test_a_memory_volume_is_a_size_limited_tmpfs_that_fills_with_enospc(bed: TestBed, driver: Driver) -> None:
    volume = create(driver, "mem-fill", 8 * MiB).volume
    try:
        assert volume.capacity_bytes == 8 * MiB
        with standin_pod_mount(driver, volume.volume_id, mount_capability("")) as pod:
            assert filesystem_type(pod) == "tmpfs"
            # Mounted only where the agent holds it and in the pod. A third mount, at the staging path,
            # is one the kubelet counts as a user of the device: it would then never unstage it.
            assert mounts_of_filesystem(pod) == sorted([str(held_at(driver, volume.volume_id)), str(pod)])
            usage = os.statvfs(pod)
            assert usage.f_blocks * usage.f_frsize == 8 * MiB
            with pytest.raises(OSError) as full, open(pod / "checkpoint.bin", "wb") as out:
                for _ in range(9):
                    out.write(os.urandom(MiB))
                    out.flush()
            assert full.value.errno == errno.ENOSPC
            wait_until(
                lambda: events_of(bed, volume.volume_id, "MemoryVolumeFull"), 30, "a MemoryVolumeFull Event"
            )
            (event,) = events_of(bed, volume.volume_id, "MemoryVolumeFull")
            assert event["type"] == "Warning" and "new writes fail with ENOSPC" in event["message"], event
            (pod / "checkpoint.bin").unlink()
            (pod / "kept.bin").write_bytes(b"still here")
        # Unpublished and unstaged, as when its pod went away: the agent still holds the tmpfs, so a
        # pod restarted on the node finds what was written.
        assert mounts_of_filesystem(held_at(driver, volume.volume_id)) == [
            str(held_at(driver, volume.volume_id))
        ]
        with standin_pod_mount(driver, volume.volume_id, mount_capability("")) as pod:
            assert (pod / "kept.bin").read_bytes() == b"still here"
    finally:
        delete(driver, volume.volume_id)


def test_a_memory_volume_outlives_a_restart_of_its_agent(bed: TestBed, driver: Driver) -> None:
    volume = create(driver, "mem-restart", 4 * MiB).volume
    try:
        with standin_pod_mount(driver, volume.volume_id, mount_capability("")) as pod:
            (pod / "step_10.bin").write_bytes(b"x" * 4096)
        driver.agent.stop()
        driver.agent, _ = start_node_agent(
            driver.workdir,
            bed.run_id,
            bed.control_plane.kubeconfigs["cairn-node-agent"],
            driver.node,
            extra_args=(f"--memory-pool-bytes={POOL_BYTES}",),
        )
        with standin_pod_mount(driver, volume.volume_id, mount_capability("")) as pod:
            assert (pod / "step_10.bin").read_bytes() == b"x" * 4096
            assert "MemoryContentsLost" not in driver.agent.log_path.read_text()
            pool = memory_pool_status(bed, driver)
            assert pool is not None and pool["freeBytes"] == POOL_BYTES - 4 * MiB, pool
    finally:
        delete(driver, volume.volume_id)


def test_an_exhausted_pool_answers_resource_exhausted_with_numbers(bed: TestBed, driver: Driver) -> None:
    held = create(driver, "mem-held", 40 * MiB).volume.volume_id
    try:
        with pytest.raises(grpc.RpcError) as refused:
            create(driver, "mem-too-big", 32 * MiB)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = refused.value.details()
        assert "memory" in message and "24Mi" in message and "32Mi" in message, message
    finally:
        delete(driver, held)
    # Refused, not failed for good: with the share back, the same request is carved.
    volume = create(driver, "mem-too-big", 32 * MiB).volume
    assert volume.capacity_bytes == 32 * MiB
    delete(driver, volume.volume_id)


def test_a_memory_volume_cannot_be_a_block_device_or_a_clone(bed: TestBed, driver: Driver) -> None:
    with pytest.raises(grpc.RpcError) as block:
        create(driver, "mem-block", MiB, capability=block_capability())
    assert block.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block" in block.value.details()
    source = create(driver, "mem-source", MiB).volume.volume_id
    try:
        with pytest.raises(grpc.RpcError) as clone:
            create(
                driver,
                "mem-clone",
                MiB,
                volume_content_source=csi_pb2.VolumeContentSource(
                    volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source)
                ),
            )
        assert clone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot be cloned" in clone.value.details()
    finally:
        delete(driver, source)


def test_a_memory_volume_found_empty_after_a_host_restart_is_reported_lost(
    bed: TestBed, driver: Driver
) -> None:
    """A host reboot takes the tmpfs with it; the agent stands in the volume again, empty, and says so."""
    volume = create(driver, "mem-lost", 4 * MiB).volume
    driver.agent.stop()
    # What a reboot leaves behind: the pool's record of the volume, and no tmpfs.
    held = held_at(driver, volume.volume_id)
    subprocess.run(["umount", str(held)], check=True)
    driver.agent, _ = start_node_agent(
        driver.workdir,
        bed.run_id,
        bed.control_plane.kubeconfigs["cairn-node-agent"],
        driver.node,
        extra_args=(f"--memory-pool-bytes={POOL_BYTES}",),
    )

    try:
        lost = "MemoryContentsLost"
        wait_until(lambda: events_of(bed, volume.volume_id, lost), 30, "a MemoryContentsLost Event")
        (event,) = events_of(bed, volume.volume_id, lost)
        assert event["type"] == "Warning" and "came back empty" in event["message"], event
        assert filesystem_type(held) == "tmpfs"
        usage = os.statvfs(held)
        assert usage.f_blocks * usage.f_frsize == 4 * MiB
    finally:
        delete(driver, volume.volume_id)
