"""Disk discovery on simulated nodes with a zoo of loop disks: only clean disks are ever touched.

Holders cannot be made on this kernel (no device-mapper, no md), so the holder rule is covered
by the unit tests with recorded sysfs facts instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cairn.node_agent.lvm.report import device_filter_config
from tests.testbed.bed import TestBed
from tests.testbed.components import node_agent_args, start_node_agent
from tests.testbed.disks import LoopDisk
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
DISK_SIZE = 64 * MiB
METRICS_PORT = 9464


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def foreign_lvm(device: str, vg: str) -> None:
    """A PV of someone else's VG, made with lvm scoped to that one device."""
    config = device_filter_config([device])
    with tempfile.TemporaryDirectory() as system_dir:
        env = {**os.environ, "LVM_SYSTEM_DIR": system_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        for args in (["pvcreate", device], ["vgcreate", vg, device]):
            subprocess.run(
                ["lvm", args[0], "--driverloaded", "n", "--config", config, *args[1:]],
                check=True,
                capture_output=True,
                env=env,
            )


@dataclass
class Zoo:
    node: SimulatedNode
    disks: dict[str, LoopDisk]
    mount_dir: Path
    hashes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, node: SimulatedNode, workdir: Path) -> Zoo:
        kinds = ["clean", "gpt", "ext4", "foreign-lvm", "mounted", "wipe-me"]
        disks = {kind: node.add_disk(DISK_SIZE) for kind in kinds}
        subprocess.run(
            ["sfdisk", "--quiet", disks["gpt"].path],
            input="label: gpt\n,,L\n",
            text=True,
            check=True,
            capture_output=True,
        )
        for kind in ("ext4", "mounted", "wipe-me"):
            subprocess.run(["mkfs.ext4", "-q", "-F", disks[kind].path], check=True)
        foreign_lvm(disks["foreign-lvm"].path, f"foreign{node.name}")
        mount_dir = workdir / f"{node.name}-mounted"
        mount_dir.mkdir(parents=True)
        subprocess.run(["mount", disks["mounted"].path, str(mount_dir)], check=True)
        (mount_dir / "data").write_text("someone's data")
        zoo = cls(node, disks, mount_dir)
        os.sync()
        zoo.hashes = {kind: sha256_of(disks[kind].backing_file) for kind in ("gpt", "ext4", "foreign-lvm")}
        return zoo

    def device_of(self, kind: str) -> str:
        return self.disks[kind].path


@dataclass
class DiskBed:
    bed: TestBed
    zoos: list[Zoo]
    agents: dict[str, ManagedProcess]
    workdir: Path

    def localdisks(self, node: str) -> dict[str, dict]:
        items = json.loads(
            self.bed.control_plane.kubectl(
                "get", "localdisks", "-l", f"cairn.dev/node={node}", "-o", "json"
            ).stdout
        )["items"]
        return {item["status"].get("device"): item for item in items}

    def wait_for(self, what: str, predicate, timeout: float = 10.0) -> float:
        return wait_until(
            predicate, timeout, what, context=lambda: "\n".join(a.log_tail(15) for a in self.agents.values())
        )

    def start_agent(self, node: SimulatedNode) -> ManagedProcess:
        agent, _ = start_node_agent(
            self.workdir,
            self.bed.run_id,
            self.bed.control_plane.kubeconfigs["cairn-node-agent"],
            node,
            discovery=node_agent_args(node),
            extra_args=(f"--metrics-address={node.ip}:{METRICS_PORT}",),
            name=f"agent-{node.name}-{len(self.agents)}",
        )
        self.agents[node.name] = agent
        return agent


@pytest.fixture(scope="module")
def disk_bed(bed: TestBed) -> Iterator[DiskBed]:
    workdir = bed.workdir / "disks"
    nodes = bed.add_nodes(2)
    zoos = [Zoo.make(node, workdir) for node in nodes]
    env = DiskBed(bed, zoos, {}, workdir)
    try:
        for node in nodes:
            env.start_agent(node)
        yield env
    finally:
        for agent in env.agents.values():
            agent.stop()
        for zoo in zoos:
            subprocess.run(["umount", str(zoo.mount_dir)], check=False)
        bed.control_plane.kubectl(
            "delete", "localdisks", "-l", "cairn.dev/node in (node-a,node-b)", "--ignore-not-found"
        )
        print("\n" + bed.control_plane.kubectl("get", "localdisks,storagenodes").stdout)
        bed.remove_nodes(nodes)


EXPECTED = {
    "clean": ("Claimed", None),
    "gpt": ("Unavailable", "HasPartitionTable"),
    "ext4": ("Unavailable", "HasFilesystem"),
    "foreign-lvm": ("Unavailable", "ForeignLvmPhysicalVolume"),
    "mounted": ("Unavailable", "Mounted"),
    "wipe-me": ("Unavailable", "HasFilesystem"),
}


def test_only_the_clean_disk_is_claimed_and_every_other_shows_its_reason(disk_bed: DiskBed) -> None:
    for zoo in disk_bed.zoos:

        def settled(zoo: Zoo = zoo) -> bool:
            disks = disk_bed.localdisks(zoo.node.name)
            return (
                all(zoo.device_of(k) in disks for k in EXPECTED)
                and disks[zoo.device_of("clean")]["status"]["state"] == "Claimed"
            )

        disk_bed.wait_for(f"{zoo.node.name}'s disks to be reported", settled)
        disks = disk_bed.localdisks(zoo.node.name)
        # Each agent reports its own node's disks and no one else's.
        other = {z.device_of(k) for z in disk_bed.zoos if z is not zoo for k in z.disks}
        assert not other & set(disks)
        for kind, (state, reason) in EXPECTED.items():
            status = disks[zoo.device_of(kind)]["status"]
            assert (status["state"], status.get("reason")) == (state, reason), kind
            assert status["class"] == "nvme"
        assert disks[zoo.device_of("clean")]["status"]["volumeGroup"] == "cairn-nvme"

    table = disk_bed.bed.control_plane.kubectl("get", "localdisks").stdout
    print("\n" + disk_bed.bed.control_plane.kubectl("get", "localdisks,storagenodes").stdout)
    assert table.splitlines()[0].split() == [
        "NAME",
        "NODE",
        "DEVICE",
        "CLASS",
        "CAPACITY",
        "STATE",
        "REASON",
        "AGE",
    ]
    assert "HasPartitionTable" in table and "ForeignLvmPhysicalVolume" in table


def test_storage_node_reports_the_pool_and_metrics_are_served(disk_bed: DiskBed) -> None:
    zoo = disk_bed.zoos[0]
    node = json.loads(
        disk_bed.bed.control_plane.kubectl("get", "storagenode", zoo.node.name, "-o", "json").stdout
    )
    (pool,) = node["status"]["pools"]
    assert pool["class"] == "nvme" and pool["volumeGroup"] == "cairn-nvme"
    assert pool["disks"] == [zoo.device_of("clean")]
    assert 0 < pool["freeBytes"] <= pool["totalBytes"] < DISK_SIZE
    assert node["status"]["ready"] is True and node["status"]["free"]["nvme"]
    text = urllib.request.urlopen(f"http://{zoo.node.ip}:{METRICS_PORT}/metrics", timeout=5).read().decode()
    assert f'cairn_pool_free_bytes{{node="{zoo.node.name}",pool="nvme"}}' in text
    assert 'cairn_disk_capacity_bytes{class="nvme"' in text
    assert 'state="Claimed"} 1.0' in text and 'state="Unavailable"} 1.0' in text


def test_hot_added_disk_appears_and_removed_disk_goes_missing(disk_bed: DiskBed) -> None:
    zoo = disk_bed.zoos[0]
    node = zoo.node
    added = node.add_disk(DISK_SIZE)
    took = disk_bed.wait_for(
        "the hot-added disk to be claimed",
        lambda: (
            disk_bed.localdisks(node.name).get(added.path, {}).get("status", {}).get("state") == "Claimed"
        ),
    )
    print(f"\nhot-added disk claimed after {took:.1f}s")
    removed_name = disk_bed.localdisks(node.name)[zoo.device_of("ext4")]["metadata"]["name"]
    node.remove_disk(zoo.disks["ext4"])

    def missing() -> bool:
        disk = json.loads(
            disk_bed.bed.control_plane.kubectl("get", "localdisk", removed_name, "-o", "json").stdout
        )
        return disk["status"]["state"] == "Missing"

    took = disk_bed.wait_for("the removed disk to go Missing", missing)
    print(f"removed disk Missing after {took:.1f}s")

    # Pulling a disk out of a pool degrades it; Cairn says so and repairs nothing by itself.
    node.remove_disk(added)

    def degraded() -> bool:
        status = json.loads(
            disk_bed.bed.control_plane.kubectl("get", "storagenode", node.name, "-o", "json").stdout
        )["status"]
        return any(
            c["type"] == "PoolsHealthy" and c["status"] == "False" for c in status.get("conditions", [])
        )

    disk_bed.wait_for("the pool to report a missing disk", degraded, timeout=40)


def test_disks_removed_or_replaced_while_the_agent_was_down_are_noticed_at_start(disk_bed: DiskBed) -> None:
    zoo = disk_bed.zoos[1]
    node = zoo.node
    gpt_name = disk_bed.localdisks(node.name)[zoo.device_of("gpt")]["metadata"]["name"]
    disk_bed.agents[node.name].stop()
    node.remove_disk(zoo.disks["gpt"])
    replacement = node.add_disk(DISK_SIZE)
    disk_bed.start_agent(node)
    state = json.loads(disk_bed.bed.control_plane.kubectl("get", "localdisk", gpt_name, "-o", "json").stdout)
    assert state["status"]["state"] == "Missing"
    disk_bed.wait_for(
        "the replacement to be claimed",
        lambda: (
            disk_bed.localdisks(node.name).get(replacement.path, {}).get("status", {}).get("state")
            == "Claimed"
        ),
    )


def test_wiping_needs_the_disks_own_identity_and_is_recorded(disk_bed: DiskBed) -> None:
    zoo = disk_bed.zoos[1]
    cp = disk_bed.bed.control_plane
    disk = disk_bed.localdisks(zoo.node.name)[zoo.device_of("wipe-me")]
    name = disk["metadata"]["name"]
    before = sha256_of(zoo.disks["wipe-me"].backing_file)
    cp.kubectl("annotate", "localdisk", name, "cairn.dev/wipe=not-this-disk")

    def events(reason: str) -> list[dict]:
        items = json.loads(
            cp.kubectl(
                "get", "events", "-A", "--field-selector", f"involvedObject.name={name}", "-o", "json"
            ).stdout
        )["items"]
        return [e for e in items if e["reason"] == reason]

    disk_bed.wait_for("the wrong wipe to be refused", lambda: bool(events("WipeRefused")))
    assert sha256_of(zoo.disks["wipe-me"].backing_file) == before
    # Opted out first: once wiped the disk is clean, yet it must stay out of the pool.
    cp.kubectl("label", "localdisk", name, "cairn.dev/opt-out=true")
    confirmation = disk["status"].get("serial") or disk["spec"]["diskId"]
    cp.kubectl("annotate", "localdisk", name, f"cairn.dev/wipe={confirmation}", "--overwrite")

    def status() -> dict:
        return disk_bed.localdisks(zoo.node.name)[zoo.device_of("wipe-me")]["status"]

    disk_bed.wait_for("the wiped disk to be held out", lambda: status().get("reason") == "OptedOut")
    assert events("Wiping") and events("Wiped")
    assert status()["state"] == "Unavailable"
    cp.kubectl("label", "localdisk", name, "cairn.dev/opt-out-")
    disk_bed.wait_for("the wiped disk to be claimed once opted in", lambda: status()["state"] == "Claimed")


def test_no_dirty_disk_was_modified(disk_bed: DiskBed) -> None:
    """Byte-level proof, taken last: every dirty disk still holds exactly what it held at the start."""
    os.sync()
    for zoo in disk_bed.zoos:
        for kind, digest in zoo.hashes.items():
            assert sha256_of(zoo.disks[kind].backing_file) == digest, f"{zoo.node.name} {kind} disk changed"
        assert (zoo.mount_dir / "data").read_text() == "someone's data"
