"""A PVC with dataSourceRef kind Dataset binds to a new volume holding the dataset, served read-only.

The claim's node holds no copy when the claim is made: it joins the swarm first, then the volume is
filled from its own verified copy.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cairn.csi.proto import csi_pb2

from tests.testbed.bed import TestBed
from tests.testbed.cluster import Cluster, running_cluster
from tests.testbed.components import mount_capability, start_node_agent
from tests.testbed.controlplane import CAIRN_NAMESPACE
from tests.testbed.datasets import s3_dataset
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
"""The node agent may read S3 Secrets only here; the Dataset and its claim must share a namespace."""
DATASET = "populator-corpus"
SECRET = "dataset-populator-s3"
STORAGE_CLASS = "cairn-dataset-consumers"
PREFIX = "corpus-v1"
# 24 MiB in files whose sizes straddle piece boundaries, in two directories.
FILE_SIZES = {
    "train/shard-0000.bin": 10 * MiB,
    "train/shard-0001.bin": 9 * MiB + 4093,
    "val/shard-0000.bin": 5 * MiB - 4093,
}
CAPABILITY = mount_capability()


@dataclass
class Bed:
    cluster: Cluster
    holder: SimulatedNode
    """The node the Dataset names: the only one with a copy until a claim asks for one elsewhere."""
    holder_agent: ManagedProcess
    bucket: str

    def dataset(self) -> dict:
        result = self.cluster.kubectl("get", "dataset", DATASET, "-n", NAMESPACE, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def diagnosis(self) -> str:
        agents = [self.cluster.driver.agent, self.holder_agent, self.cluster.driver.controller]
        tails = [f"--- {process.name}\n{process.log_tail(15)}" for process in agents]
        return "\n".join([json.dumps(self.dataset().get("status", {}), indent=1), *tails])


@pytest.fixture(scope="module")
def bed_with_holder(bed: TestBed) -> Iterator[Bed]:
    assert bed.s3 is not None
    with running_cluster(bed, "dataset-populator", "dataset-populator") as running:
        # running_cluster makes (and deletes) its own namespace; this test's objects live in `default`.
        cluster = replace(running, namespace=NAMESPACE)
        (holder,) = bed.add_nodes(1, disks=1, disk_size=256 * MiB)
        bucket = bed.s3.create_bucket(f"dataset-populator-{bed.run_id[:8]}")
        agent = None
        try:
            agent, _ = start_node_agent(
                running.driver.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], holder
            )
            cluster.apply(bed.s3.credentials_secret(SECRET, NAMESPACE))
            # Delayed binding, as for a pod's claim: Immediate would let the provisioner spread the
            # volume over every labelled node, the holder included.
            cluster.apply(cluster.storage_class(STORAGE_CLASS, {}, binding="WaitForFirstConsumer"))
            yield Bed(cluster, holder, agent, bucket)
        finally:
            print("\n" + cluster.kubectl("get", "datasets", "-n", NAMESPACE, check=False).stdout)
            # Claims first (their PVs go through DeleteVolume), then the Dataset, whose copies on both
            # nodes need both agents alive to be released.
            cluster.kubectl("delete", "pvc", "-l", "test=dataset-populator", "-n", NAMESPACE, check=False)
            wait_until(lambda: not claimed_volumes(cluster), 90, "the claim's PV to be deleted")
            cluster.kubectl(
                "delete",
                "dataset",
                DATASET,
                "-n",
                NAMESPACE,
                "--ignore-not-found",
                "--timeout=120s",
                check=False,
            )
            cluster.kubectl("delete", "storageclass", STORAGE_CLASS, "--ignore-not-found", check=False)
            cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found", check=False)
            if agent is not None:
                agent.stop()
                print(f"\n{agent.name} log tail:\n{agent.log_tail(10)}")
            bed.remove_nodes([holder])
            s3 = bed.s3.client()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)


def claimed_volumes(cluster: Cluster) -> list[str]:
    """PVs still bound to, or released by, this test's claims."""
    return [
        pv["metadata"]["name"]
        for pv in cluster.get("pv")["items"]
        if (pv["spec"].get("claimRef") or {}).get("namespace") == NAMESPACE
        and pv["spec"]["claimRef"].get("name") == "corpus-reader"
    ]


def upload_dataset(bed: Bed) -> dict[str, bytes]:
    assert bed.cluster.bed.s3 is not None
    s3 = bed.cluster.bed.s3.client()
    files = {path: os.urandom(size) for path, size in FILE_SIZES.items()}
    for path, data in files.items():
        s3.put_object(Bucket=bed.bucket, Key=f"{PREFIX}/{path}", Body=data)
    return files


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file below root by relative path; ext4's lost+found holds none."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_claim_from_a_dataset_gets_a_read_only_copy_after_its_node_joins_the_swarm(
    bed_with_holder: Bed,
) -> None:
    bed = bed_with_holder
    cluster = bed.cluster
    consumer = cluster.driver.node.name
    assert cluster.bed.s3 is not None
    written = upload_dataset(bed)
    cluster.apply(
        s3_dataset(
            DATASET,
            NAMESPACE,
            f"s3://{bed.bucket}/{PREFIX}",
            cluster.bed.s3.endpoint,
            SECRET,
            [bed.holder.name],
        )
    )
    wait_until(
        lambda: bed.dataset().get("status", {}).get("phase") == "Ready",
        120,
        "the holder to seed the dataset",
        interval=0.5,
        context=bed.diagnosis,
    )
    status = bed.dataset()["status"]
    assert status["targetNodes"] == [bed.holder.name], "the consumer's node must not hold a copy yet"

    claim = cluster.claim(
        "corpus-reader",
        STORAGE_CLASS,
        "64Mi",
        dataSourceRef={"apiGroup": "cairn.dev", "kind": "Dataset", "name": DATASET},
    )
    claim["metadata"]["labels"] = {"test": "dataset-populator"}
    # The scheduler stand-in: the pod reading the claim was placed on the node without a copy.
    claim["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": consumer}
    cluster.apply(claim)

    def bound() -> bool:
        return cluster.get("pvc", "corpus-reader", "-n", NAMESPACE)["status"].get("phase") == "Bound"

    wait_until(bound, 180, "the claim from the Dataset to bind", interval=0.5, context=bed.diagnosis)

    # The consumer's node joined the swarm: a target now, Ready with the seeder's digest, fed by peers.
    status = bed.dataset()["status"]
    assert consumer in status["targetNodes"], status["targetNodes"]
    report = status["nodes"][consumer]
    assert report["phase"] == "Ready" and report["digest"] == status["digest"], report
    assert report.get("bytesFromOrigin", 0) == 0 and report["bytesFromPeers"] >= sum(FILE_SIZES.values())

    pvc = cluster.get("pvc", "corpus-reader", "-n", NAMESPACE)
    events = cluster.get("events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=corpus-reader")
    reasons = {event["reason"] for event in events["items"]}
    assert {"Populating", "Populated"} <= reasons, reasons
    prime = f"cairn-populate-{pvc['metadata']['uid']}"
    cluster.wait_for(
        "the prime claim to be cleaned up",
        lambda: (
            prime not in {c["metadata"]["name"] for c in cluster.get("pvc", "-n", CAIRN_NAMESPACE)["items"]}
        ),
    )

    # The kubelet stand-in: stage as kubelet would for a pod, then publish asking for read-write.
    volume = cluster.get("pv", pvc["spec"]["volumeName"])["spec"]["csi"]["volumeHandle"]
    staging = cluster.driver.workdir / "kubelet" / "corpus-reader"
    target = cluster.driver.workdir / "pods" / "corpus-reader"
    staging.mkdir(parents=True)
    node = cluster.driver.node_stub()
    node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume, staging_target_path=str(staging), volume_capability=CAPABILITY
        ),
        timeout=60,
    )
    try:
        node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=CAPABILITY,
                readonly=False,
            ),
            timeout=60,
        )
        try:
            assert files_under(target) == written
            for root in (target, staging):
                with pytest.raises(OSError) as refused:
                    (root / "train" / "extra.bin").write_bytes(b"x")
                assert refused.value.errno == errno.EROFS, root
                with pytest.raises(OSError) as refused:
                    (root / "val" / "shard-0000.bin").write_bytes(b"x")
                assert refused.value.errno == errno.EROFS, root
            assert files_under(staging) == written
        finally:
            node.NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume, target_path=str(target)), timeout=60
            )
    finally:
        node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=str(staging)), timeout=60
        )
    print("\n" + cluster.kubectl("get", "datasets", "-n", NAMESPACE).stdout)
