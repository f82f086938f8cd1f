"""No wedges: a Ready report the apiserver refused is retried until it lands, and a clone of a
volume a pod is writing is a clean, complete filesystem (its source frozen for the copy)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cairn.api.names import volume_name
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from tests.testbed.bed import TestBed
from tests.testbed.components import mount_capability, start_controller, start_node_agent
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
POLICY = "cairn-test-refuse-ready"


@dataclass
class Rig:
    bed: TestBed
    workdir: Path
    node: SimulatedNode
    agent: ManagedProcess
    controller: ManagedProcess
    stub: csi_pb2_grpc.ControllerStub
    kubelet: KubeletStandIn

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def get(self, *args: str) -> dict:
        return self.bed.control_plane.get_json(*args)

    def lvs(self) -> str:
        env = {**os.environ, "LVM_SYSTEM_DIR": str(self.workdir / "lvm" / self.node.name)}
        return self.node.run(["lvs", "--driverloaded", "n", "-o", "lv_name"], env=env, text=True).stdout

    def create(self, name: str, size: int = 64 * MiB, source: str | None = None, timeout: float = 60) -> str:
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[mount_capability()],
        )
        if source:
            request.volume_content_source.volume.volume_id = source
        return self.stub.CreateVolume(request, timeout=timeout).volume.volume_id


@pytest.fixture(scope="module")
def rig(bed: TestBed) -> Iterator[Rig]:
    (node,) = bed.add_nodes(1, disks=1, disk_size=512 * MiB)
    workdir = bed.workdir / "no-wedges"
    agent, node_socket = start_node_agent(
        workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], node
    )
    controller, socket = start_controller(
        workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-controller"], name="controller-wedges"
    )
    stub = csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{socket}"))
    rig = Rig(bed, workdir, node, agent, controller, stub, KubeletStandIn(node_socket, workdir))
    try:
        yield rig
    finally:
        rig.kubectl("delete", "validatingadmissionpolicybinding", POLICY, check=False)
        rig.kubectl("delete", "validatingadmissionpolicy", POLICY, check=False)
        rig.kubelet.release_all()
        for process in (controller, agent):
            process.stop()
            print(f"\n{process.name} log tail:\n{process.log_tail(10)}")
        bed.remove_nodes([node])


def refuse_ready_reports(rig: Rig, csi_prefix: str) -> None:
    """A real admission policy that refuses status writes for volumes whose CSI name has the prefix."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["cairn.dev"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": ["localvolumes/status"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"!object.spec.csiName.startsWith('{csi_prefix}')",
                    "message": "refused by the test, as an apiserver under strain might",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY},
        "spec": {"policyName": POLICY, "validationActions": ["Deny"]},
    }
    for item in (policy, binding):
        rig.kubectl("apply", "-f", "-", input_text=json.dumps(item))
    # The apiserver loads policies asynchronously: wait until one of our status writes is refused.
    probe = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalVolume",
        "metadata": {"name": "lv-" + "0" * 32},
        "spec": {"csiName": f"{csi_prefix}probe", "nodeName": "nowhere", "pool": "nvme", "sizeBytes": MiB},
    }
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(probe))

    def refused() -> bool:
        patched = rig.kubectl(
            "patch", "localvolume", "lv-" + "0" * 32, "--subresource=status", "--type=merge",
            "-p", '{"status":{"message":"probe"}}', check=False,
        )  # fmt: skip
        return patched.returncode != 0 and "refused by the test" in patched.stderr

    wait_until(refused, 30, "the admission policy to refuse status writes")
    rig.kubectl("delete", "localvolume", "lv-" + "0" * 32)


def test_a_refused_ready_report_is_retried_until_it_lands(rig: Rig) -> None:
    refuse_ready_reports(rig, "wedge-")
    outcome: dict[str, object] = {}

    def create() -> None:
        try:
            outcome["volume"] = rig.create("wedge-ready", timeout=90)
        except grpc.RpcError as error:
            outcome["error"] = error

    caller = threading.Thread(target=create)
    caller.start()
    name = volume_name("wedge-ready")
    try:
        wait_until(lambda: name in rig.lvs(), 30, "the agent to carve the volume")
        time.sleep(4)  # its Ready report refused, several times over
        assert rig.get("localvolume", name).get("status", {}).get("phase", "Pending") == "Pending"
    finally:
        rig.kubectl("delete", "validatingadmissionpolicybinding", POLICY)
    caller.join(90)
    assert outcome.get("volume") == name, outcome
    assert "Ready could not be reported" in rig.agent.log_path.read_text(errors="replace")
    assert rig.get("localvolume", name)["status"]["phase"] == "Ready"
    rig.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name), timeout=60)
    rig.kubectl("delete", "validatingadmissionpolicy", POLICY)


def test_a_clone_of_a_volume_being_written_is_clean_and_complete(rig: Rig) -> None:
    source = rig.create("wedge-clone-source")
    staging = rig.kubelet.stage(source)
    payload = os.urandom(8 * MiB)
    # Written and not synced: it is in the page cache, not yet on the device the clone copies.
    (staging / "model.bin").write_bytes(payload)
    clone = rig.create("wedge-clone", source=source)
    assert rig.get("localvolume", clone)["status"]["phase"] == "Ready"
    copy = rig.kubelet.stage(clone)
    assert (copy / "model.bin").read_bytes() == payload, "the clone is missing what was written before it"
    # The source was thawed after the copy: its pod's writes go on.
    writer = subprocess.run(
        ["dd", "if=/dev/zero", f"of={staging / 'after.bin'}", "bs=1M", "count=1", "conv=fsync"],
        capture_output=True,
        timeout=20,
    )
    assert writer.returncode == 0, writer.stderr
    assert "frozen at" in rig.agent.log_path.read_text(errors="replace")
    rig.kubelet.release_all()
    for volume in (clone, source):
        rig.stub.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=60)
