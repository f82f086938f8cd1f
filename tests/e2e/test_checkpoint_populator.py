"""A PVC with dataSourceRef kind Checkpoint binds to a new volume that already holds the checkpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cairn.csi.proto import csi_pb2

from tests.testbed.bed import TestBed
from tests.testbed.cluster import Cluster, running_cluster
from tests.testbed.components import mount_capability
from tests.testbed.controlplane import CAIRN_NAMESPACE

MiB = 1024 * 1024
NAMESPACE = "resume"
CAPABILITY = mount_capability()


@pytest.fixture(scope="module")
def cluster(bed: TestBed) -> Iterator[Cluster]:
    with running_cluster(bed, "populator", NAMESPACE) as running:
        running.apply(
            {
                "apiVersion": "cairn.dev/v1alpha1",
                "kind": "CheckpointPolicy",
                "metadata": {"name": "local-only", "namespace": NAMESPACE},
                "spec": {"commit": {"settleSeconds": 1}},
            }
        )
        running.apply(
            running.storage_class("cairn-checkpoints", {"cairn.dev/checkpoint-policy": "local-only"})
        )
        try:
            yield running
        finally:
            running.kubectl("delete", "storageclass", "cairn-checkpoints", "--ignore-not-found")


class KubeletStandIn:
    """Stages claims' volumes on the node the way kubelet would for a pod using them."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.staged: list[tuple[str, Path]] = []

    def stage(self, claim: str) -> Path:
        pvc = self.cluster.get("pvc", claim, "-n", NAMESPACE)
        volume = self.cluster.get("pv", pvc["spec"]["volumeName"])["spec"]["csi"]["volumeHandle"]
        path = self.cluster.driver.workdir / "kubelet" / claim
        path.mkdir(parents=True)
        self.cluster.driver.node_stub().NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume, staging_target_path=str(path), volume_capability=CAPABILITY
            ),
            timeout=60,
        )
        self.staged.append((volume, path))
        return path

    def unstage_all(self) -> None:
        for volume, path in reversed(self.staged):
            self.cluster.driver.node_stub().NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=str(path)), timeout=60
            )


def bound(cluster: Cluster, claim: str) -> bool:
    return cluster.get("pvc", claim, "-n", NAMESPACE)["status"].get("phase") == "Bound"


def test_a_claim_from_a_checkpoint_gets_a_volume_holding_it(cluster: Cluster) -> None:
    kubelet = KubeletStandIn(cluster)
    try:
        cluster.apply(cluster.claim("trainer", "cairn-checkpoints", "64Mi"))
        cluster.wait_for("the trainer's claim to bind", lambda: bound(cluster, "trainer"))
        volume = kubelet.stage("trainer")
        step = volume / "ckpt" / "step_7"
        step.mkdir(parents=True)
        written = {f"__{rank}_0.distcp": os.urandom(3 * MiB + rank) for rank in range(2)}
        written[".metadata"] = os.urandom(1024)
        for name, data in written.items():
            (step / name).write_bytes(data)

        def recorded() -> str | None:
            items = cluster.get("checkpoints", "-n", NAMESPACE, "-l", "cairn.dev/pvc=trainer")["items"]
            return items[0]["metadata"]["name"] if items else None

        cluster.wait_for("the checkpoint to be recorded", lambda: recorded() is not None)
        checkpoint = recorded()
        assert checkpoint is not None

        cluster.apply(
            cluster.claim(
                "resumed",
                "cairn-checkpoints",
                "64Mi",
                dataSourceRef={"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": checkpoint},
            )
        )
        cluster.wait_for("the populated claim to bind", lambda: bound(cluster, "resumed"), timeout=120)
        events = cluster.get("events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=resumed")
        reasons = {event["reason"] for event in events["items"]}
        assert {"Populating", "Populated"} <= reasons, reasons
        cluster.wait_for(
            "the prime claim to be cleaned up",
            lambda: cluster.get("pvc", "-n", CAIRN_NAMESPACE)["items"] == [],
        )

        restored = kubelet.stage("resumed") / "ckpt" / "step_7"
        for name, data in written.items():
            assert (restored / name).read_bytes() == data, name
    finally:
        kubelet.unstage_all()
        cluster.kubectl("delete", "pvc", "--all", "-n", NAMESPACE)


def test_a_claim_from_a_missing_checkpoint_waits_with_an_event(cluster: Cluster) -> None:
    cluster.apply(
        cluster.claim(
            "from-nothing",
            "cairn-checkpoints",
            "16Mi",
            dataSourceRef={"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": "no-such-checkpoint"},
        )
    )

    def warned() -> bool:
        events = cluster.get(
            "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=from-nothing"
        )
        return any(event["reason"] == "CheckpointNotFound" for event in events["items"])

    cluster.wait_for("a CheckpointNotFound event", warned)
    assert not bound(cluster, "from-nothing")
    cluster.kubectl("delete", "pvc", "from-nothing", "-n", NAMESPACE)
