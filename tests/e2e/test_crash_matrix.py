"""The crash matrix: kill -9 the agent, then the controller, at each step of create, delete, upload,
restore and seed; restart it; nothing is lost, orphaned or stuck.

A crash aimed at "after the LV exists, before its status says so" cannot be produced from outside,
so each process is started with `CAIRN_FAULT_CRASH_AT` (cairn/fault_injection.py) and SIGKILLs
itself on reaching that step; it is then restarted without it. After every cell the same checks
run: every LV in the pool belongs to a LocalVolume, every LocalVolume on the node is Ready (none
left Pending or half-deleted), and every Checkpoint recorded so far is still there and Tiered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.fault_injection import CRASH_AT_ENV
from cairn.node_agent.lvm.report import device_filter_config
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import mount_capability, start_controller, start_node_agent
from tests.testbed.datasets import s3_dataset
from tests.testbed.kubelet_standin import KubeletStandIn
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
PVC = "crash-trainer"
OUTCOMES: dict[str, str] = {}


@dataclass
class Rig:
    bed: TestBed
    workdir: Path
    node: SimulatedNode
    agent: ManagedProcess | None = None
    controller: ManagedProcess | None = None
    controller_socket: Path | None = None
    node_socket: Path | None = None
    bucket: str = ""
    staging: Path | None = None
    trainer_volume: str = ""
    checkpoints_seen: set[str] = field(default_factory=set)

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def get(self, *args: str) -> dict:
        return self.bed.control_plane.get_json(*args)

    def start_agent(self, crash_at: str | None = None) -> None:
        env = {**os.environ, CRASH_AT_ENV: crash_at} if crash_at else None
        self.agent, self.node_socket = start_node_agent(
            self.workdir,
            self.bed.run_id,
            self.bed.control_plane.kubeconfigs["cairn-node-agent"],
            self.node,
            env=env,
        )

    def start_controller(self, crash_at: str | None = None) -> None:
        env = {**os.environ, CRASH_AT_ENV: crash_at} if crash_at else None
        self.controller, self.controller_socket = start_controller(
            self.workdir,
            self.bed.run_id,
            self.bed.control_plane.kubeconfigs["cairn-controller"],
            name="controller-crash",
            env=env,
        )

    def restart(self, which: str, crash_at: str | None = None) -> None:
        process = self.agent if which == "agent" else self.controller
        assert process is not None
        process.stop()
        (self.start_agent if which == "agent" else self.start_controller)(crash_at)

    def died(self, which: str, within: float = 60) -> None:
        process = self.agent if which == "agent" else self.controller
        assert process is not None
        wait_until(
            lambda: not process.alive(),
            within,
            f"the {which} to reach its crash point",
            context=lambda: process.log_tail(40),
        )
        assert process.proc.returncode in (-9, 137), (
            f"{which} exited {process.proc.returncode}, not by SIGKILL"
        )
        process.stop()

    def stub(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{self.controller_socket}"))

    def lvs(self) -> set[str]:
        # Scoped to this node's disks as its agent is: a node another module left on the session's
        # bed may hold LVs in a VG of the same name, and they are not this pool's orphans.
        env = {**os.environ, "LVM_SYSTEM_DIR": str(self.workdir / "lvm" / self.node.name)}
        scope = device_filter_config([disk.path for disk in self.node.disks])
        listed = self.node.run(
            ["lvs", "--config", scope, "--noheadings", "-o", "lv_name,vg_name"], env=env, text=True
        )
        rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
        return {lv for lv, vg in rows if vg.startswith("cairn-")}


def create(rig: Rig, name: str, timeout: float = 60) -> str:
    response = rig.stub().CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
            volume_capabilities=[mount_capability()],
        ),
        timeout=timeout,
    )
    return response.volume.volume_id


def call_in_background(call: Callable[[], object]) -> threading.Thread:
    """An RPC whose server dies under it: its error is the crash, not the test's outcome."""

    def run() -> None:
        with contextlib.suppress(grpc.RpcError):
            call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def retry(call: Callable[[], str], within: float = 120) -> str:
    """As external-provisioner retries a CSI call that failed or timed out."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                raise
            print(f"retrying after {error.code().name}: {error.details()}")
            time.sleep(1)


def check_invariants(rig: Rig, cell: str) -> None:
    def volumes() -> list[dict]:
        items = rig.get("localvolumes").get("items", [])
        return [v for v in items if v["spec"]["nodeName"] == rig.node.name]

    def settled() -> bool:
        return all(
            v.get("status", {}).get("phase") == "Ready" and not v["metadata"].get("deletionTimestamp")
            for v in volumes()
        )

    wait_until(settled, 60, f"{cell}: every LocalVolume on the node Ready, none stuck")
    names = {v["metadata"]["name"] for v in volumes()}
    orphans = rig.lvs() - names
    assert not orphans, f"{cell}: LVs no LocalVolume claims: {sorted(orphans)}"
    assert rig.lvs() == names, f"{cell}: LocalVolumes without their LV: {sorted(names - rig.lvs())}"
    recorded = {c["metadata"]["name"]: c for c in rig.get("checkpoints", "-n", NAMESPACE).get("items", [])}
    lost = rig.checkpoints_seen - set(recorded)
    assert not lost, f"{cell}: Checkpoints lost: {sorted(lost)}"
    for name in rig.checkpoints_seen:
        assert recorded[name]["status"].get("phase") == "Tiered", f"{cell}: {name} is not Tiered"


@pytest.fixture(scope="module")
def rig(bed: TestBed) -> Iterator[Rig]:
    assert bed.s3 is not None
    (node,) = bed.add_nodes(1, disks=1, disk_size=512 * MiB)
    rig = Rig(bed, bed.workdir / "crash-matrix", node)
    rig.bucket = bed.s3.create_bucket(f"crash-{bed.run_id[:8]}")
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(bed.s3.credentials_secret("crash-s3", NAMESPACE)))
    policy = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": "crash-policy", "namespace": NAMESPACE},
        "spec": {
            "commit": {"settleSeconds": 1},
            "target": {
                "endpoint": bed.s3.endpoint,
                "bucket": rig.bucket,
                "prefix": "crash",
                "credentialsSecretRef": {"name": "crash-s3"},
            },
            "upload": {"concurrency": 2, "partSizeBytes": 5 * MiB},
        },
    }
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    try:
        rig.start_agent()
        rig.start_controller()
        yield rig
    finally:
        print(
            "\ncrash matrix:\n" + "\n".join(f"  {cell:<44} {outcome}" for cell, outcome in OUTCOMES.items())
        )
        print(rig.kubectl("get", "localvolumes,checkpoints", "-A", check=False).stdout)
        rig.kubectl("delete", "dataset", "crash-seed", "-n", NAMESPACE, "--timeout=60s", check=False)
        for process in (rig.controller, rig.agent):
            if process is not None:
                process.stop()
                print(f"\n{process.name} log tail:\n{process.log_tail(6)}")
        bed.remove_nodes([node])
        rig.kubectl("delete", "checkpoints", "-l", f"cairn.dev/pvc={PVC}", "-n", NAMESPACE, check=False)
        rig.kubectl("delete", "ckptpolicy", "crash-policy", "-n", NAMESPACE, check=False)
        rig.kubectl("delete", "secret", "crash-s3", "-n", NAMESPACE, check=False)
        client = bed.s3.client()
        for upload in client.list_multipart_uploads(Bucket=rig.bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=rig.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=rig.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=rig.bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=rig.bucket)


def test_agent_killed_on_create_after_the_lv_exists(rig: Rig) -> None:
    rig.restart("agent", crash_at="agent.create.lv-carved")
    call_in_background(lambda: create(rig, "crash-create-agent", timeout=30))
    rig.died("agent")
    rig.start_agent()
    volume = retry(lambda: create(rig, "crash-create-agent"))
    assert rig.get("localvolume", volume)["status"]["phase"] == "Ready"
    check_invariants(rig, "agent / create / LV exists")
    OUTCOMES["agent / create / after the LV exists"] = "recovered: Ready, no orphan LV"


def test_agent_killed_on_delete_after_the_lv_is_removed(rig: Rig) -> None:
    volume = create(rig, "crash-delete-agent")
    rig.restart("agent", crash_at="agent.delete.lv-removed")
    call_in_background(
        lambda: rig.stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)
    )
    rig.died("agent")
    rig.start_agent()
    retry(lambda: str(rig.stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)))
    assert not rig.get("localvolume", volume)
    check_invariants(rig, "agent / delete / LV removed")
    OUTCOMES["agent / delete / after the LV is removed"] = "recovered: gone, finalizer released"


def test_controller_killed_on_create_after_the_object_is_written(rig: Rig) -> None:
    rig.restart("controller", crash_at="controller.create.object-written")
    call_in_background(lambda: create(rig, "crash-create-controller", timeout=30))
    rig.died("controller")
    rig.start_controller()
    volume = retry(lambda: create(rig, "crash-create-controller"))
    same = [
        v
        for v in rig.get("localvolumes").get("items", [])
        if v["spec"]["csiName"] == "crash-create-controller"
    ]
    assert [v["metadata"]["name"] for v in same] == [volume], "the retried CreateVolume made a second volume"
    check_invariants(rig, "controller / create / object written")
    OUTCOMES["controller / create / after the object is written"] = "recovered: one volume, Ready"


def test_controller_killed_on_delete_after_the_object_is_deleted(rig: Rig) -> None:
    volume = create(rig, "crash-delete-controller")
    rig.restart("controller", crash_at="controller.delete.object-deleted")
    call_in_background(
        lambda: rig.stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)
    )
    rig.died("controller")
    rig.start_controller()
    retry(lambda: str(rig.stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=30)))
    assert not rig.get("localvolume", volume)
    check_invariants(rig, "controller / delete / object deleted")
    OUTCOMES["controller / delete / after the object is deleted"] = "recovered: gone"


def test_agent_killed_mid_upload_resumes_without_resending_kept_parts(rig: Rig) -> None:
    parameters = {
        "csi.storage.k8s.io/pvc/name": PVC,
        "csi.storage.k8s.io/pvc/namespace": NAMESPACE,
        "cairn.dev/checkpoint-policy": "crash-policy",
    }
    rig.trainer_volume = (
        rig.stub()
        .CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name="crash-trainer",
                capacity_range=csi_pb2.CapacityRange(required_bytes=96 * MiB),
                volume_capabilities=[mount_capability()],
                parameters=parameters,
            ),
            timeout=60,
        )
        .volume.volume_id
    )
    assert rig.node_socket is not None
    rig.staging = KubeletStandIn(rig.node_socket, rig.workdir).stage(rig.trainer_volume)
    rig.restart("agent", crash_at="agent.upload.part-sent:3")
    write_dcp(rig.staging / "ckpt" / "step_1", [40 * MiB], metadata_bytes=2048)
    rig.died("agent", within=120)
    rig.start_agent()

    def tiered() -> dict:
        items = rig.get("checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={PVC}").get("items", [])
        done = [i for i in items if i.get("status", {}).get("phase") == "Tiered"]
        return done[0] if done else {}

    wait_until(tiered, 120, "the checkpoint to be Tiered after the restart")
    record = tiered()
    rig.checkpoints_seen.add(record["metadata"]["name"])
    uploaded = next(c for c in record["status"]["conditions"] if c["type"] == "Uploaded")
    kept = int(uploaded["message"].split("keeping ")[1].split(" part")[0])
    assert kept >= 3, uploaded["message"]
    check_invariants(rig, "agent / upload / mid-upload")
    OUTCOMES["agent / upload / mid-upload (3 of 8 parts sent)"] = (
        f"recovered: Tiered, {kept} part(s) kept, not resent"
    )


def test_agent_killed_mid_restore_fills_the_volume_again_and_verified(rig: Rig) -> None:
    [record] = [
        c for c in rig.get("checkpoints", "-n", NAMESPACE).get("items", []) if c["spec"]["pvcName"] == PVC
    ]
    rig.restart("agent", crash_at="agent.restore.file-restored")
    restored = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalVolume",
        "metadata": {
            "name": "lv-" + "c" * 32,
            "labels": {"cairn.dev/node": rig.node.name, "cairn.dev/pool": "nvme"},
        },
        "spec": {
            "csiName": "crash-restore",
            "nodeName": rig.node.name,
            "pool": "nvme",
            "sizeBytes": 96 * MiB,
            "access": "mount",
            "fsType": "ext4",
            "pvcName": "crash-restored",
            "pvcNamespace": NAMESPACE,
            "populateFrom": {
                "kind": "Checkpoint",
                "namespace": NAMESPACE,
                "name": record["metadata"]["name"],
            },
        },
    }
    rig.kubectl("create", "-f", "-", input_text=json.dumps(restored))
    rig.died("agent", within=120)
    assert rig.get("localvolume", "lv-" + "c" * 32).get("status", {}).get("phase") != "Ready"
    rig.start_agent()
    wait_until(
        lambda: rig.get("localvolume", "lv-" + "c" * 32).get("status", {}).get("phase") == "Ready",
        120,
        "the restored volume to be Ready after the restart",
        context=lambda: (
            json.dumps(rig.get("localvolume", "lv-" + "c" * 32).get("status"))
            + "\n"
            + (rig.agent.log_tail(30) if rig.agent else "")
        ),
    )
    assert rig.node_socket is not None and rig.staging is not None
    kubelet = KubeletStandIn(rig.node_socket, rig.workdir / "restore-reader")
    staged = kubelet.stage("lv-" + "c" * 32)
    try:
        original = rig.staging / "ckpt" / "step_1"
        copy = staged / "ckpt" / "step_1"
        for path in original.iterdir():
            assert (copy / path.name).read_bytes() == path.read_bytes(), path.name
    finally:
        kubelet.release_all()
    check_invariants(rig, "agent / restore / mid-download")
    OUTCOMES["agent / restore / mid-download (1 file restored)"] = (
        "recovered: refilled from scratch, verified"
    )


def test_agent_and_controller_killed_mid_seed_and_the_dataset_completes(rig: Rig) -> None:
    assert rig.bed.s3 is not None
    client = rig.bed.s3.client()
    for index in range(4):
        client.put_object(Bucket=rig.bucket, Key=f"corpus/part-{index}.bin", Body=os.urandom(8 * MiB))
    rig.restart("controller", crash_at="controller.seed.copy-volume-written")
    rig.restart("agent", crash_at="agent.seed.part-published")
    dataset = s3_dataset(
        "crash-seed", NAMESPACE, f"s3://{rig.bucket}/corpus", rig.bed.s3.endpoint, "crash-s3", [rig.node.name]
    )
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(dataset))
    rig.died("controller")
    rig.start_controller()
    rig.died("agent", within=120)
    parts_before = len(rig.get("dataset", "crash-seed", "-n", NAMESPACE).get("status", {}).get("parts", []))
    assert parts_before >= 1, "the seeder died before it published a part"
    rig.start_agent()
    wait_until(
        lambda: rig.get("dataset", "crash-seed", "-n", NAMESPACE).get("status", {}).get("phase") == "Ready",
        180,
        "the dataset to be Ready after both restarts",
    )
    status = rig.get("dataset", "crash-seed", "-n", NAMESPACE)["status"]
    assert status["ready"] == "1/1" and status["fileCount"] == 4 and status["totalBytes"] == 32 * MiB
    check_invariants(rig, "seed")
    OUTCOMES["controller / seed / copy volume written"] = "recovered: one copy volume"
    OUTCOMES["agent / seed / a part published"] = (
        f"recovered: Ready; {parts_before} part(s) were out at the kill"
    )


def test_agent_killed_after_seed_rechecks_a_damaged_copy_before_handing_it_out(rig: Rig) -> None:
    """A copy that was Ready before an unclean stop may lack writes its report predates: it is
    checked again, and not offered as a copy, before it is Ready again."""

    def phase() -> str | None:
        status = rig.get("dataset", "crash-seed", "-n", NAMESPACE).get("status", {})
        return status.get("nodes", {}).get(rig.node.name, {}).get("phase")

    assert phase() == "Ready"
    copy = rig.workdir / "state" / rig.node.name / "datasets" / NAMESPACE / "crash-seed" / "data"
    damaged = copy / "part-2.bin"
    assert damaged.stat().st_size == 8 * MiB
    assert rig.agent is not None
    os.killpg(rig.agent.pid, signal.SIGKILL)
    rig.agent.stop()
    with damaged.open("r+b") as file:  # what a lost write looks like: a stretch of zeros
        file.seek(3 * MiB)
        file.write(bytes(MiB))
        os.fsync(file.fileno())
    rig.start_agent()
    wait_until(lambda: phase() == "Verifying", 60, "the copy to be checked again after the unclean stop")
    time.sleep(10)
    assert phase() == "Verifying", "a damaged copy became Ready again with no peer to repair it from"
    check_invariants(rig, "seed / unclean restart")
    OUTCOMES["agent / after seed / unclean stop, copy damaged"] = "re-verified: Verifying, not handed out"
