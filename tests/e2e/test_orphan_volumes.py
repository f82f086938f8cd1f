"""Orphan LVs: an LV tagged as Cairn's that no LocalVolume claims is reported at once and removed
only after its grace period, unused, and when the apiserver proves its LocalVolume does not exist.

The agent runs with a 20 s grace period and looks every 2 s (production: 15 minutes, every minute).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cairn.api.names import OWNED_TAG, VOLUME_TAG_PREFIX
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.node_agent.lvm.report import device_filter_config
from tests.testbed.bed import TestBed
from tests.testbed.components import METRICS_PORT, mount_capability, start_controller, start_node_agent
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
GRACE = 20.0
VG = "cairn-nvme"


@dataclass
class Rig:
    bed: TestBed
    workdir: Path
    node: SimulatedNode
    agent: ManagedProcess
    controller: ManagedProcess
    controller_socket: Path
    node_socket: Path

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def get(self, *args: str) -> dict:
        return self.bed.control_plane.get_json(*args)

    def lvm(self, subcommand: str, *args: str) -> str:
        # Scoped to this node's disks as the agent is: other nodes of the session's bed may still
        # hold a VG of the same name, and an unscoped lvm refuses to pick between them.
        env = {**os.environ, "LVM_SYSTEM_DIR": str(self.workdir / "lvm" / self.node.name)}
        scope = device_filter_config([disk.path for disk in self.node.disks])
        return self.node.run(["lvm", subcommand, "--config", scope, *args], env=env, text=True).stdout

    def lvs(self) -> dict[str, str]:
        """LV name to uuid in the pool's VG."""
        listed = self.lvm("lvs", "--driverloaded", "n", "--noheadings", "-o", "lv_name,lv_uuid", VG)
        return dict(line.split() for line in listed.splitlines() if line.strip())

    def carve_behind_the_agents_back(self, name: str) -> None:
        self.lvm(
            "lvcreate", "--driverloaded", "n", "--activate", "n", "--zero", "n", "--size", "16m",
            "--addtag", OWNED_TAG, "--addtag", VOLUME_TAG_PREFIX + name, "--name", name, VG,
        )  # fmt: skip

    def orphan_condition(self) -> dict:
        conditions = self.get("storagenode", self.node.name).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "OrphanVolumes"), {})

    def events(self, reason: str) -> list[str]:
        selector = f"involvedObject.name={self.node.name}"
        listed = self.get("events", "-n", "default", "--field-selector", selector)
        return [e["message"] for e in listed.get("items", []) if e["reason"] == reason]

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://{self.node.ip}:{METRICS_PORT}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        wanted = {"node": self.node.name, **labels}
        for line in text.splitlines():
            found = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
            if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == wanted:
                return float(found.group(2))
        return 0.0


def release(rig: Rig, volume: str) -> None:
    """Let a LocalVolume go without its agent, as the controller does for a node it found lost."""
    rig.kubectl("patch", "localvolume", volume, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')


@pytest.fixture(scope="module")
def rig(bed: TestBed) -> Iterator[Rig]:
    (node, neighbour) = bed.add_nodes(2, disks=1, disk_size=256 * MiB)
    workdir = bed.workdir / "orphans"
    # A neighbour on the same host holding a VG of the same name, as every other node of a bed
    # does: the test's own lvm calls must stay on this node's disks.
    neighbour_lvm = {**os.environ, "LVM_SYSTEM_DIR": str(workdir / "lvm" / neighbour.name)}
    (workdir / "lvm" / neighbour.name).mkdir(parents=True, exist_ok=True)
    neighbour_scope = device_filter_config([disk.path for disk in neighbour.disks])
    neighbour.run(
        ["lvm", "vgcreate", "--config", neighbour_scope, VG, *(d.path for d in neighbour.disks)],
        env=neighbour_lvm,
    )
    agent, node_socket = start_node_agent(
        workdir,
        bed.run_id,
        bed.control_plane.kubeconfigs["cairn-node-agent"],
        node,
        extra_args=(f"--orphan-grace-seconds={GRACE:.0f}", "--orphan-pass-seconds=2"),
    )
    controller, controller_socket = start_controller(
        workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-controller"], name="controller-orphans"
    )
    rig = Rig(bed, workdir, node, agent, controller, controller_socket, node_socket)
    try:
        wait_until(lambda: VG in rig.lvm("vgs", "--noheadings", "-o", "vg_name"), 60, "the agent's pool")
        yield rig
    finally:
        for process in (controller, agent):
            process.stop()
            print(f"\n{process.name} log tail:\n{process.log_tail(10)}")
        neighbour.run(
            ["lvm", "vgremove", "--config", neighbour_scope, "--force", VG], env=neighbour_lvm, check=False
        )
        bed.remove_nodes([node, neighbour])


def test_a_stray_lv_is_reported_then_removed_and_one_whose_volume_appears_late_is_kept(rig: Rig) -> None:
    stray, late = "lv-" + "e" * 32, "lv-" + "f" * 32
    rig.carve_behind_the_agents_back(stray)
    rig.carve_behind_the_agents_back(late)
    carved = time.monotonic()
    late_uuid = rig.lvs()[late]

    def reported() -> bool:
        found = rig.orphan_condition()
        return found.get("status") == "True" and stray in found["message"] and late in found["message"]

    wait_until(reported, 15, "both LVs reported in the StorageNode's OrphanVolumes condition")
    assert rig.metric("cairn_orphan_volumes", state="Waiting") == 2
    wait_until(lambda: len(rig.events("OrphanWaiting")) == 2, 10, "an OrphanWaiting Event for each")

    # The late LV's LocalVolume appears within the grace period, as when the cluster's objects are
    # restored from a backup after its disks. It is written unlabelled, so the agent's volume
    # informer (which selects by node label) does not carve it anew, and its status is set Ready
    # before the label goes on: the agent then adopts the LV as it is.
    volume = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalVolume",
        "metadata": {"name": late},
        "spec": {
            "csiName": "orphan-late",
            "nodeName": rig.node.name,
            "pool": "nvme",
            "sizeBytes": 16 * MiB,
            "access": "mount",
            "fsType": "ext4",
        },
    }
    rig.kubectl("create", "-f", "-", input_text=json.dumps(volume))
    ready = {
        "status": {"phase": "Ready", "volumeGroup": VG, "logicalVolume": late, "capacityBytes": 16 * MiB}
    }
    rig.kubectl("patch", "localvolume", late, "--subresource=status", "--type=merge", "-p", json.dumps(ready))

    wait_until(lambda: stray not in rig.lvs(), GRACE + 20, "the stray LV to be removed")
    assert time.monotonic() - carved >= GRACE, "removed before its grace period ran out"
    [removed] = rig.events("OrphanRemoved")
    assert stray in removed and "no LocalVolume" in removed
    assert rig.metric("cairn_orphan_volumes_removed_total") == 1

    # Past the grace period the late LV was "unclaimed" on the agent's node-labelled list, and
    # only the apiserver's answer for its name kept it: the proof, not the timer, protects it.
    wait_until(lambda: time.monotonic() - carved > GRACE + 6, GRACE + 10, "the late LV to be past its grace")
    assert rig.lvs().get(late) == late_uuid, "the LV whose LocalVolume appeared late was touched"
    rig.kubectl("label", "localvolume", late, f"cairn.dev/node={rig.node.name}", "cairn.dev/pool=nvme")
    wait_until(lambda: rig.orphan_condition().get("status") == "False", 15, "the condition to clear")
    assert rig.orphan_condition()["reason"] == "NoneFound"
    assert rig.lvs().get(late) == late_uuid
    assert rig.get("localvolume", late)["status"]["phase"] == "Ready"


def test_an_orphan_that_is_still_mounted_is_kept_until_it_is_let_go(rig: Rig) -> None:
    # The controller releases a lost node's volumes without its agent; if the node comes back with
    # a pod still using one, that LV is an orphan in use and must stay while it is.
    stub = csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{rig.controller_socket}"))
    volume = stub.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name="orphan-in-use",
            capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
            volume_capabilities=[mount_capability()],
        ),
        timeout=60,
    ).volume.volume_id
    staging = KubeletStandIn(rig.node_socket, rig.workdir).stage(volume)
    (staging / "still-writing").write_text("a pod's data")
    release(rig, volume)
    rig.kubectl("delete", "localvolume", volume)
    released = time.monotonic()

    def held() -> bool:
        found = rig.orphan_condition()
        return found.get("status") == "True" and volume in found["message"] and "in use" in found["message"]

    wait_until(held, 15, "the released volume reported as an orphan in use")
    wait_until(lambda: time.monotonic() - released > GRACE + 6, GRACE + 10, "the grace period to pass")
    assert volume in rig.lvs(), "an orphan still mounted was removed"
    assert (staging / "still-writing").read_text() == "a pod's data"
    assert any(volume in message and "mounted" in message for message in rig.events("OrphanInUse"))

    subprocess.run(["umount", str(staging)], check=True)
    let_go = time.monotonic()
    wait_until(lambda: volume not in rig.lvs(), GRACE + 20, "the orphan to be removed once unmounted")
    assert time.monotonic() - let_go >= GRACE - 2, "the grace period did not start again when it was let go"
