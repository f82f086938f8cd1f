"""`cairn checkpoint restore`: a peer serves only nodes with a reason to hold the copy, S3 serves
the rest, and never a corrupt byte.

The volume is staged by the kubelet stand-in (tests/testbed/kubelet_standin.py): the tests delete the
local copy and a replica under the agents and corrupt objects in S3 between steps.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from cairn.s3 import S3Location
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.components import Driver, mount_capability, running_driver, start_node_agent
from tests.testbed.kubelet_standin import standin_claim_volume
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
PVC = "restorer"
CAPABILITY = mount_capability()
STEP_PATH = "checkpoints/step_100"


@dataclass
class Cluster:
    driver: Driver
    """Node A: the trainer's node, where the checkpoint is written."""
    staging: Path
    other: SimulatedNode
    """Node B: a second node with its own agent, where the checkpoint is restored."""
    other_agent: ManagedProcess
    bucket: str
    written: dict[str, bytes]


def apply(bed: TestBed, manifest: dict) -> None:
    bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def checkpoint(bed: TestBed) -> dict:
    listed = bed.control_plane.kubectl(
        "get", "checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={PVC}", "-o", "json"
    ).stdout
    items = [i for i in json.loads(listed)["items"] if i["spec"]["step"] == 100]
    return items[0] if items else {}


@pytest.fixture(scope="module")
def restore_bucket(bed: TestBed) -> Iterator[str]:
    assert bed.s3 is not None
    name = bed.s3.create_bucket(f"restore-{bed.run_id[:8]}")
    yield name
    client = bed.s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def cluster(bed: TestBed, restore_bucket: str) -> Iterator[Cluster]:
    assert bed.s3 is not None
    apply(
        bed,
        bed.s3.credentials_secret("restore-s3", NAMESPACE),
    )
    apply(
        bed,
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": "restore-policy", "namespace": NAMESPACE},
            "spec": {
                "commit": {"settleSeconds": 1},
                "target": {
                    "endpoint": bed.s3.endpoint,
                    "bucket": restore_bucket,
                    "prefix": "runs",
                    "credentialsSecretRef": {"name": "restore-s3"},
                },
            },
        },
    )
    with (
        running_driver(bed, "restore", disks=1, disk_size=256 * MiB) as driver,
        standin_claim_volume(
            driver, "restore-trainer", 64 * MiB, pvc=PVC, namespace=NAMESPACE, policy="restore-policy"
        ) as (_volume, staging),
    ):
        # Node B joins only now, so the volume above could only land on node A. Its disk holds
        # the replica store, peer replicas' own LV.
        (other,) = bed.add_nodes(1, disks=1, disk_size=128 * MiB)
        other_agent = None
        try:
            other_agent, _ = start_node_agent(
                driver.workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], other
            )
            written = write_dcp(staging / STEP_PATH, [3 * MiB + 11, 2 * MiB])
            yield Cluster(driver, staging, other, other_agent, restore_bucket, written)
        finally:
            print("\n" + bed.control_plane.kubectl("get", "checkpoints", "-n", NAMESPACE).stdout)
            if other_agent is not None:
                other_agent.stop()
                print(f"\n{other_agent.name} log tail:\n{other_agent.log_tail(10)}")
            bed.remove_nodes([other])
    bed.control_plane.kubectl("delete", "checkpoints", "-l", f"cairn.dev/pvc={PVC}", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "ckptpolicy", "restore-policy", "-n", NAMESPACE)
    bed.control_plane.kubectl("delete", "secret", "restore-s3", "-n", NAMESPACE)


def cairn_restore(
    bed: TestBed, cluster: Cluster, name: str, destination: Path, *, as_agent: bool = False
) -> CompletedProcess[str]:
    """The CLI as a user on node B runs it: inside B's network namespace, with a user's kubeconfig;
    `as_agent`: as root on B with B's agent's peer identity."""
    argv = [sys.executable, "-m", "cairn.cli", "checkpoint", "restore", name, "--to", str(destination)]
    argv += ["-n", NAMESPACE, "--node", cluster.other.name]
    argv += ["--kubeconfig", str(bed.control_plane.kubeconfigs["admin"])]
    if as_agent:
        argv += ["--peer-identity", str(peer_identity(cluster, cluster.other.name))]
    result = cluster.other.run(argv, check=False, timeout=180, text=True)
    print(f"\n$ cairn checkpoint restore {name} ...\n{result.stdout}{result.stderr}")
    return result


def peer_identity(cluster: Cluster, node: str) -> Path:
    return cluster.driver.workdir / "state" / node / "peer-identity"


def lose_the_peer_copy(cluster: Cluster) -> None:
    """The trainer's node loses its copy; the Checkpoint may still list it, so its agent answers 404."""
    shutil.rmtree(cluster.staging / STEP_PATH, ignore_errors=True)


def restored(destination: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(destination)): p.read_bytes()
        for p in destination.rglob("*")
        if p.is_file() and p.name != ".cairn-manifest.json"
    }


def test_a_node_with_no_reason_to_hold_a_checkpoint_is_refused_the_peer_copy_and_s3_serves(
    bed: TestBed, cluster: Cluster
) -> None:
    wait_until(
        lambda: checkpoint(bed).get("status", {}).get("phase") == "Tiered",
        120,
        "step 100 to be Tiered",
        context=lambda: json.dumps(checkpoint(bed).get("status"), indent=1),
    )
    record = checkpoint(bed)
    assert record["spec"]["nodeName"] == cluster.driver.node.name
    trainer = cluster.driver.node.name
    # Node B's own agent identity gets through TLS, but B neither wrote nor replicates step 100.
    destination = cluster.driver.workdir / "refused-as-node-b"
    result = cairn_restore(bed, cluster, record["metadata"]["name"], destination, as_agent=True)
    assert result.returncode == 0, result.stderr
    assert f"passed over peer {trainer}:" in result.stderr and "answered 403" in result.stderr
    assert f"node {cluster.other.name} neither wrote checkpoint {NAMESPACE}/" in result.stderr
    assert "served by s3: 3 files" in result.stdout and "served by peer" not in result.stdout
    assert restored(destination) == cluster.written
    # A user without any agent's identity is not even let through TLS: told why, S3 serves.
    destination = cluster.driver.workdir / "refused-as-user"
    result = cairn_restore(bed, cluster, record["metadata"]["name"], destination)
    assert result.returncode == 0, result.stderr
    assert "only to Cairn agents over mutual TLS" in result.stderr
    assert "served by s3: 3 files" in result.stdout and restored(destination) == cluster.written


def test_with_the_peer_copy_gone_the_restore_comes_from_s3(bed: TestBed, cluster: Cluster) -> None:
    wait_until(
        lambda: checkpoint(bed).get("status", {}).get("phase") == "Tiered",
        120,
        "step 100 to be Tiered",
        context=lambda: json.dumps(checkpoint(bed).get("status"), indent=1),
    )
    assert checkpoint(bed)["status"]["remote"]["verifiedAt"]
    kubeconfig = str(bed.control_plane.kubeconfigs["admin"])
    listing = cluster.other.run(
        [sys.executable, "-m", "cairn.cli", "checkpoint", "list", "--kubeconfig", kubeconfig], text=True
    ).stdout
    name = checkpoint(bed)["metadata"]["name"]
    rows = [line.split() for line in listing.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, listing
    row = rows[0]
    assert row[1:] == [PVC, "100", "5Mi", "Tiered", "local,s3", checkpoint(bed)["status"]["remote"]["url"]]
    lose_the_peer_copy(cluster)
    destination = cluster.driver.workdir / "restored-from-s3"
    result = cairn_restore(bed, cluster, checkpoint(bed)["metadata"]["name"], destination)
    assert result.returncode == 0, result.stderr
    assert "served by s3: 3 files" in result.stdout and "served by peer" not in result.stdout
    assert restored(destination) == cluster.written


def test_a_flipped_byte_in_s3_fails_the_restore_naming_the_file(bed: TestBed, cluster: Cluster) -> None:
    assert bed.s3 is not None
    record = checkpoint(bed)
    key = f"{S3Location.from_url(record['status']['remote']['url']).prefix}/__0_0.distcp"
    client = bed.s3.client()
    data = bytearray(client.get_object(Bucket=cluster.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=cluster.bucket, Key=key, Body=bytes(data))
    lose_the_peer_copy(cluster)  # already gone unless this test runs alone
    destination = cluster.driver.workdir / "restored-corrupt"
    result = cairn_restore(bed, cluster, record["metadata"]["name"], destination)
    assert result.returncode != 0
    assert "cairn: error: no source gave a verified copy of __0_0.distcp" in result.stderr
    assert "s3: __0_0.distcp digest mismatch" in result.stderr
    left = {p.name for p in destination.rglob("*")}
    assert "__0_0.distcp" not in left and ".cairn-manifest.json" not in left
    assert not [name for name in left if ".cairn-partial-" in name]


def test_a_peer_replica_serves_the_restore_when_the_trainer_node_lost_its_copy(
    bed: TestBed, cluster: Cluster
) -> None:
    bed.control_plane.kubectl(
        "patch",
        "ckptpolicy",
        "restore-policy",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec":{"peerReplicas":1}}',
    )
    written = write_dcp(cluster.staging / "checkpoints" / "step_200", [2 * MiB + 7])

    def replicated() -> dict:
        listed = bed.control_plane.kubectl(
            "get",
            "checkpoints",
            "-n",
            NAMESPACE,
            "-l",
            f"cairn.dev/replica-node={cluster.other.name}",
            "-o",
            "json",
        ).stdout
        items = [i for i in json.loads(listed)["items"] if i["spec"]["step"] == 200]
        peer = items[0]["status"].get("peer") if items else None
        return items[0] if peer and peer["nodeName"] == cluster.other.name else {}

    wait_until(lambda: replicated(), 90, "step 200 to be replicated to node B")
    record = replicated()
    assert "peer" in record["status"]["tiers"].split(",")
    # Node B keeps it on its replica store, an LV of its pool, not on the root disk.
    store = cluster.driver.workdir / "state" / cluster.other.name / "replicas"
    assert os.path.ismount(store), "the replica is not on the replica store"
    assert (store / NAMESPACE / record["metadata"]["name"]).is_dir()
    lvm_env = {**os.environ, "LVM_SYSTEM_DIR": str(cluster.driver.workdir / "lvm" / cluster.other.name)}
    lvs = cluster.other.run(
        ["lvs", "--noheadings", "-o", "lv_name,lv_tags"], env=lvm_env, text=True, check=False
    )
    rows = dict(line.split(None, 1) for line in lvs.stdout.splitlines() if len(line.split()) == 2)
    assert "cairn.dev/replica-store" in rows.get("replicas", ""), lvs.stdout + lvs.stderr
    shutil.rmtree(cluster.staging / "checkpoints" / "step_200")

    # The trainer's own node restores it as its agent: its copy is gone, so the replica on node B
    # (which pulled it from the trainer's node over mutual TLS) serves it.
    destination = cluster.driver.workdir / "restored-from-replica"
    argv = [sys.executable, "-m", "cairn.cli", "checkpoint", "restore", record["metadata"]["name"]]
    argv += ["--to", str(destination), "-n", NAMESPACE, "--node", cluster.driver.node.name]
    argv += ["--kubeconfig", str(bed.control_plane.kubeconfigs["admin"])]
    argv += ["--peer-identity", str(peer_identity(cluster, cluster.driver.node.name))]
    result = cluster.driver.node.run(argv, check=False, timeout=180, text=True)
    print(f"\n$ cairn checkpoint restore {record['metadata']['name']} ...\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stderr
    assert f"served by peer (peer {cluster.other.name}): 2 files" in result.stdout
    assert restored(destination) == written


def test_a_claim_deleted_and_made_again_under_its_name_keeps_both_runs_restorable(
    bed: TestBed, cluster: Cluster
) -> None:
    """Same namespace, claim name and step path, two runs: the second must not land on the first."""
    pvc = "rerun"

    def records() -> list[dict]:
        listed = bed.control_plane.kubectl(
            "get", "checkpoints", "-n", NAMESPACE, "-l", f"cairn.dev/pvc={pvc}", "-o", "json"
        ).stdout
        return json.loads(listed)["items"]

    def tiered_on(volume: str) -> dict:
        mine = [r for r in records() if r["spec"]["volume"] == volume]
        return mine[0] if mine and mine[0].get("status", {}).get("phase") == "Tiered" else {}

    written: dict[str, dict[str, bytes]] = {}
    try:
        for run, name in enumerate(("rerun-first", "rerun-second")):
            with standin_claim_volume(
                cluster.driver, name, 32 * MiB, pvc=pvc, namespace=NAMESPACE, policy="restore-policy"
            ) as (volume, staging):
                data = write_dcp(staging / STEP_PATH, [MiB + 1 + run, 2 * MiB])
                wait_until(lambda volume=volume: tiered_on(volume), 90, f"{name}'s checkpoint to be Tiered")
                written[tiered_on(volume)["metadata"]["name"]] = data
            # Leaving the block unstages and deletes the volume, as deleting the claim does.
        for name, data in written.items():
            destination = cluster.driver.workdir / f"restored-{name}"
            result = cairn_restore(bed, cluster, name, destination)
            assert result.returncode == 0, result.stderr
            assert "served by s3" in result.stdout
            assert restored(destination) == data
        urls = {r["metadata"]["name"]: r["status"]["remote"]["url"] for r in records()}
        assert len(urls) == 2 and len(set(urls.values())) == 2, urls
    finally:
        bed.control_plane.kubectl("delete", "checkpoints", "-l", f"cairn.dev/pvc={pvc}", "-n", NAMESPACE)
