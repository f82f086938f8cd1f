"""The user's path on real kubelets: the chart installed with helm, pods mounting Cairn's volumes.

Every step here is what a user does with kubectl, and every part is the real one: kubelets and
containerd on the bed's nodes, the chart's controller Deployment and node DaemonSet as pods, the
driver registered through the kubelet's plugin registration, the scheduler placing pods by
CSIStorageCapacity, the kubelet staging, publishing, expanding and applying fsGroup.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from cairn import DRIVER_NAME, TOPOLOGY_KEY
from tests.testbed.chart import NAMESPACE as CAIRN_NAMESPACE
from tests.testbed.checkpoints import dcp_writer_script, s3_checkpoint_policy
from tests.testbed.datasets import s3_dataset
from tests.testbed.user_cluster import UserCluster
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
CLASS = "cairn-nvme"  # the chart's StorageClass: WaitForFirstConsumer, ext4


def pvc_node(cluster: UserCluster, claim: str) -> str:
    """The node a bound claim's volume lives on, from its PV's node affinity."""
    volume = cluster.get("pvc", claim)["spec"]["volumeName"]
    terms = cluster.get("pv", volume)["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    (expression,) = terms[0]["matchExpressions"]
    assert expression["key"] == TOPOLOGY_KEY
    (node,) = expression["values"]
    return node


def test_the_chart_registers_the_driver_with_every_kubelet(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    for node in cluster.nodes:
        csinode = cluster.get("csinode", node.name)
        (driver,) = [d for d in csinode["spec"]["drivers"] if d["name"] == DRIVER_NAME]
        assert driver["nodeID"] == node.name
        assert driver["topologyKeys"] == [TOPOLOGY_KEY]
        # The kubelet labels its Node with the topology the driver reported.
        assert cluster.get("node", node.name)["metadata"]["labels"][TOPOLOGY_KEY] == node.name
        # The agent pod holds exactly its own node's loop disks.
        disks = [
            d
            for d in cluster.get("localdisks")["items"]
            if d["spec"]["nodeName"] == node.name and d["status"].get("state") == "Claimed"
        ]
        assert sorted(d["status"]["device"] for d in disks) == sorted(disk.path for disk in node.disks)
        assert cluster.get("storagenode", node.name)["status"]["ready"] is True

    def capacities() -> dict[str, int]:
        found = cluster.get("csistoragecapacities", "-n", CAIRN_NAMESPACE)["items"]
        return {
            c["nodeTopology"]["matchLabels"][TOPOLOGY_KEY]: c.get("capacity")
            for c in found
            if c["storageClassName"] == CLASS
        }

    wait_until(
        lambda: set(capacities()) == {n.name for n in cluster.nodes}, 60, "CSIStorageCapacity per node"
    )
    assert all(capacities().values())


def test_a_pod_writes_and_the_next_pod_on_its_node_reads_it(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(cluster.claim("notes", CLASS, "64Mi"))
    cluster.apply(
        cluster.pod("writer", "echo written-by-$(hostname) > /data/note && sync && sleep 3600", claim="notes")
    )
    writer = cluster.wait_pod("writer")
    node = writer["spec"]["nodeName"]
    assert pvc_node(cluster, "notes") == node
    assert cluster.exec("writer", "cat", "/data/note") == "written-by-writer\n"
    cluster.delete("pod", "writer")

    # Nothing pins the reader: the scheduler follows the volume's node affinity.
    cluster.apply(cluster.pod("reader", "sleep 3600", claim="notes"))
    reader = cluster.wait_pod("reader")
    assert reader["spec"]["nodeName"] == node
    assert cluster.exec("reader", "cat", "/data/note") == "written-by-writer\n"
    cluster.delete("pod", "reader")
    cluster.delete("pvc", "notes")


def test_fs_group_owns_the_volume_for_a_non_root_pod(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(cluster.claim("shared", CLASS, "64Mi"))
    context = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 4321}
    cluster.apply(
        cluster.pod("grouped", "touch /data/mine && sleep 3600", claim="shared", security_context=context)
    )
    cluster.wait_pod("grouped")
    # The kubelet chowned the volume root to the fsGroup and set the setgid bit, so files the pod
    # creates belong to the group too, and a non-root user could write there at all.
    assert cluster.exec("grouped", "stat", "-c", "%g %A", "/data").split() == ["4321", "drwxrwsr-x"]
    assert cluster.exec("grouped", "stat", "-c", "%u %g", "/data/mine").split() == ["1000", "4321"]
    cluster.delete("pod", "grouped")
    cluster.delete("pvc", "shared")


def test_a_raw_block_volume_reaches_the_pod_as_a_device(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(cluster.claim("raw", CLASS, "32Mi", volumeMode="Block"))
    script = (
        "dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null && "
        "dd if=/tmp/pattern of=/dev/xvda bs=1M count=4 conv=fsync 2>/dev/null && sleep 3600"
    )
    cluster.apply(cluster.pod("block", script, claim="raw", mount_path="/dev/xvda", block=True))
    cluster.wait_pod("block")
    assert cluster.exec("block", "blockdev", "--getsize64", "/dev/xvda").strip() == str(32 * MiB)
    written = cluster.exec("block", "md5sum", "/tmp/pattern").split()[0]
    read_back = cluster.exec("block", "sh", "-c", "dd if=/dev/xvda bs=1M count=4 2>/dev/null | md5sum")
    assert read_back.split()[0] == written
    cluster.delete("pod", "block")
    cluster.delete("pvc", "raw")


@pytest.fixture(scope="module")
def xfs_class(user_cluster: UserCluster):
    # Online growth of ext4 needs CAP_SYS_RESOURCE, which this VM withholds; xfs grows without it.
    user_cluster.apply(user_cluster.storage_class("cairn-xfs", **{"csi.storage.k8s.io/fstype": "xfs"}))
    yield "cairn-xfs"
    user_cluster.delete("storageclass", "cairn-xfs")


def test_resizing_the_claim_grows_the_filesystem_under_a_running_pod(
    user_cluster: UserCluster, xfs_class: str
) -> None:
    cluster = user_cluster
    cluster.apply(cluster.claim("growing", xfs_class, "400Mi"))
    cluster.apply(cluster.pod("grower", "sleep 3600", claim="growing"))
    cluster.wait_pod("grower")

    def filesystem_bytes() -> int:
        return int(cluster.exec("grower", "stat", "-f", "-c", "%b %S", "/data").split()[0]) * int(
            cluster.exec("grower", "stat", "-f", "-c", "%S", "/data").strip()
        )

    before = filesystem_bytes()
    cluster.kubectl(
        "patch",
        "pvc",
        "growing",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"resources": {"requests": {"storage": "800Mi"}}}}),
    )
    wait_until(
        lambda: cluster.get("pvc", "growing")["status"].get("capacity", {}).get("storage") == "800Mi",
        120,
        "the claim to report 800Mi",
    )
    wait_until(lambda: filesystem_bytes() > before + 300 * MiB, 60, "the pod to see the grown filesystem")
    assert cluster.get("pod", "grower")["status"]["containerStatuses"][0]["restartCount"] == 0
    cluster.delete("pod", "grower")
    cluster.delete("pvc", "growing")


STEADY_WRITER = "i=0; while true; do i=$((i+1)); echo $i > /data/counter; sleep 0.2; done"


def counter(cluster: UserCluster, pod: str) -> int:
    return int(cluster.exec(pod, "cat", "/data/counter").strip() or 0)


def test_a_pod_keeps_its_volume_across_a_kubelet_restart(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(cluster.claim("steady", CLASS, "64Mi"))
    cluster.apply(cluster.pod("steady", STEADY_WRITER, claim="steady"))
    pod = cluster.wait_pod("steady")
    kubelet = cluster.bed.kubelets[pod["spec"]["nodeName"]]
    container = pod["status"]["containerStatuses"][0]["containerID"]
    before = counter(cluster, "steady")
    kubelet.stop_kubelet()
    try:
        time.sleep(4)
    finally:
        kubelet.start_kubelet()
    kubelet.wait_serving()

    def counted() -> int:
        # A restarted kubelet answers exec ("pod does not exist") only once it has its pods back.
        try:
            return counter(cluster, "steady")
        except RuntimeError:
            return -1

    wait_until(lambda: counted() > 0, 60, "exec into the pod through the restarted kubelet")
    # The container ran on while its kubelet was away (5 writes a second), writing to its volume.
    assert counted() >= before + 10
    again = cluster.wait_pod("steady")
    assert again["status"]["containerStatuses"][0]["containerID"] == container
    seen = counter(cluster, "steady")
    wait_until(lambda: counter(cluster, "steady") > seen, 10, "the counter to keep growing")
    cluster.delete("pod", "steady")
    cluster.delete("pvc", "steady")


def restart_node_agent(cluster: UserCluster, node: str) -> None:
    """Deletes the node's agent pod and waits for the DaemonSet's new one to be ready."""
    assert cluster.release is not None
    old_agent = cluster.release.agent_pod(node)["metadata"]["name"]
    cluster.kubectl("delete", "pod", "-n", CAIRN_NAMESPACE, old_agent, "--wait=true")

    def new_agent_ready() -> bool:
        assert cluster.release is not None
        pod = cluster.release.agent_pod(node)
        statuses = pod.get("status", {}).get("containerStatuses", [])
        return pod["metadata"]["name"] != old_agent and bool(statuses) and all(s["ready"] for s in statuses)

    wait_until(new_agent_ready, 120, f"a new node agent on {node}")


def test_mounts_survive_a_node_agent_restart_and_the_new_agent_serves_new_pods(
    user_cluster: UserCluster,
) -> None:
    cluster = user_cluster
    assert cluster.release is not None
    cluster.apply(cluster.claim("survivor", CLASS, "64Mi"))
    cluster.apply(cluster.pod("survivor", STEADY_WRITER, claim="survivor"))
    node = cluster.wait_pod("survivor")["spec"]["nodeName"]
    restart_node_agent(cluster, node)
    # The volume stayed mounted in the pod: the agent's mounts live in the node's mount namespace
    # (Bidirectional propagation), not in the agent's container.
    seen = counter(cluster, "survivor")
    wait_until(lambda: counter(cluster, "survivor") > seen, 10, "the survivor to keep writing")
    assert cluster.get("pod", "survivor")["status"]["containerStatuses"][0]["restartCount"] == 0
    # The new agent stages and publishes a new pod's volume on the same node, and unstages the old one.
    cluster.apply(cluster.claim("newcomer", CLASS, "64Mi"))
    cluster.apply(cluster.pod("newcomer", "echo fresh > /data/f && sleep 3600", claim="newcomer", node=node))
    cluster.wait_pod("newcomer")
    assert cluster.exec("newcomer", "cat", "/data/f") == "fresh\n"
    for name in ("survivor", "newcomer"):
        cluster.delete("pod", name)
        cluster.delete("pvc", name)


def test_a_memory_claim_keeps_its_bytes_for_the_next_pod_and_across_an_agent_restart(
    user_cluster: UserCluster,
) -> None:
    """The chart's cairn-memory class: a tmpfs the agent holds under the kubelet's directory, so
    neither the pod going nor the agent's container restarting takes what was written."""
    cluster = user_cluster
    assert cluster.release is not None
    cluster.apply(cluster.claim("scratch", "cairn-memory", "16Mi"))
    script = "head -c 4194304 /dev/urandom > /data/step_1 && md5sum /data/step_1 > /tmp/sum && sleep 3600"
    cluster.apply(cluster.pod("memwriter", script, claim="scratch"))
    node = cluster.wait_pod("memwriter")["spec"]["nodeName"]
    assert cluster.exec("memwriter", "stat", "-f", "-c", "%T", "/data").strip() == "tmpfs"
    wait_until(lambda: cluster.exec("memwriter", "cat", "/tmp/sum").strip(), 30, "the writer's checksum")
    written = cluster.exec("memwriter", "cat", "/tmp/sum").split()[0]
    cluster.delete("pod", "memwriter")

    restart_node_agent(cluster, node)
    cluster.apply(cluster.pod("memreader", "sleep 3600", claim="scratch"))
    assert cluster.wait_pod("memreader")["spec"]["nodeName"] == node
    assert cluster.exec("memreader", "md5sum", "/data/step_1").split()[0] == written
    # The claim's size is the tmpfs's limit: the pod gets ENOSPC, the node keeps its memory.
    full = cluster.exec("memreader", "sh", "-c", "dd if=/dev/zero of=/data/big bs=1M count=32 2>&1; true")
    assert "No space left on device" in full, full
    volume = cluster.get("pvc", "scratch")["spec"]["volumeName"]
    cluster.delete("pod", "memreader")
    cluster.delete("pvc", "scratch")
    # The kubelet unstages it (no mount of it outside the kubelet's own paths but the agent's), and
    # the restarted agent removes the tmpfs it found mounted: the pool gets its share back.
    agent = cluster.release.agent_pod(node)["metadata"]["name"]
    wait_until(
        lambda: volume not in cluster.kubectl("get", "pv", "-o", "name").stdout,
        60,
        f"PersistentVolume {volume} to be deleted",
        context=lambda: cluster.release.logs(agent, "cairn-node-agent", tail=20),
    )


def node_mounts_of(cluster: UserCluster, pod: str, path: str, node: str) -> list[str]:
    """Every mount point on the pod's node of the device mounted at `path` in the pod: the
    kubelet's staging path and the pod's volume directory."""
    (device,) = [
        line.split()[0]
        for line in cluster.exec(pod, "cat", "/proc/mounts").splitlines()
        if line.split()[1] == path
    ]
    table = cluster.bed.kubelets[node].run(["findmnt", "-rn", "-o", "TARGET,SOURCE"]).stdout
    return [target for target, source in (line.split() for line in table.splitlines()) if source == device]


def test_a_pod_on_a_node_without_a_copy_reads_a_dataset_its_node_fetched_from_peers(
    user_cluster: UserCluster,
) -> None:
    cluster = user_cluster
    s3 = cluster.bed.s3
    assert s3 is not None
    holder, consumer = cluster.nodes[0].name, cluster.nodes[1].name
    bucket = s3.create_bucket("corpus-user-path")
    # Sizes that straddle piece boundaries, in two directories.
    files = {
        "train/shard-0000.bin": os.urandom(10 * MiB),
        "train/shard-0001.bin": os.urandom(9 * MiB + 4093),
        "val/shard-0000.bin": os.urandom(5 * MiB - 4093),
    }
    client = s3.client()
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"corpus/{name}", Body=data)
    cluster.apply(s3.credentials_secret("corpus-s3", "default"))
    cluster.apply(
        s3_dataset("corpus", "default", f"s3://{bucket}/corpus", s3.endpoint, "corpus-s3", [holder])
    )

    def dataset() -> dict:
        return cluster.get("dataset", "corpus").get("status", {})

    wait_until(lambda: dataset().get("phase") == "Ready", 180, "the holder to seed the Dataset")
    assert dataset()["targetNodes"] == [holder], "the consumer's node must not hold a copy yet"

    # The reader runs on the node without a copy: its claim makes that node join the swarm.
    claim = cluster.claim(
        "corpus-copy",
        CLASS,
        "64Mi",
        dataSourceRef={"apiGroup": "cairn.dev", "kind": "Dataset", "name": "corpus"},
    )
    cluster.apply(claim, cluster.pod("reader", "sleep 3600", claim="corpus-copy", node=consumer))
    cluster.wait_pod("reader", timeout=240)
    status = dataset()
    assert consumer in status["targetNodes"], status["targetNodes"]
    report = status["nodes"][consumer]
    assert report["phase"] == "Ready" and report["digest"] == status["digest"], report
    assert report.get("bytesFromOrigin", 0) == 0 and report["bytesFromPeers"] >= sum(map(len, files.values()))
    events = cluster.get("events", "--field-selector", "involvedObject.name=corpus-copy")["items"]
    assert {"Populating", "Populated"} <= {e["reason"] for e in events}
    wait_until(
        lambda: not cluster.get("pvc", "-n", CAIRN_NAMESPACE)["items"],
        60,
        "the populator's prime claim to go",
    )

    for name, data in files.items():
        assert cluster.exec("reader", "md5sum", f"/data/{name}").split()[0] == hashlib.md5(data).hexdigest()
    # Read-only in the pod, and on the node: at the kubelet's staging path and the pod's directory.
    refused = cluster.kubectl("exec", "reader", "--", "touch", "/data/train/extra.bin", check=False)
    assert "Read-only file system" in refused.stderr
    mounts = node_mounts_of(cluster, "reader", "/data", consumer)
    assert any("globalmount" in m for m in mounts) and any("/pods/" in m for m in mounts), mounts
    for mount in mounts:
        attempt = cluster.bed.kubelets[consumer].run(["touch", f"{mount}/val/extra.bin"], check=False)
        assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr, (mount, attempt.stderr)
    cluster.delete("pod", "reader")
    cluster.delete("pvc", "corpus-copy")
    cluster.delete("dataset", "corpus")


LOCAL_ONLY_POLICY = {
    "apiVersion": "cairn.dev/v1alpha1",
    "kind": "CheckpointPolicy",
    "metadata": {"name": "local-only", "namespace": "default"},
    "spec": {"commit": {"settleSeconds": 1}},
}


def test_a_pod_resumes_from_a_claim_filled_with_a_checkpoint(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(LOCAL_ONLY_POLICY)
    cluster.apply(
        cluster.storage_class("cairn-local-checkpoints", **{"cairn.dev/checkpoint-policy": "local-only"})
    )
    cluster.apply(cluster.claim("first-run", "cairn-local-checkpoints", "64Mi"))
    script = dcp_writer_script("/data/ckpt", [7], shards=2, shard_mib=3) + "; sleep 3600"
    cluster.apply(cluster.pod("first-run", script, claim="first-run"))
    cluster.wait_pod("first-run")

    def recorded() -> str | None:
        items = cluster.get("checkpoints", "-l", "cairn.dev/pvc=first-run")["items"]
        return items[0]["metadata"]["name"] if items else None

    wait_until(lambda: recorded() is not None, 60, "the checkpoint to be recorded")
    checkpoint = recorded()
    shards = ("__0_0.distcp", "__1_0.distcp", ".metadata")
    written = {n: cluster.exec("first-run", "md5sum", f"/data/ckpt/step_7/{n}").split()[0] for n in shards}

    claim = cluster.claim(
        "resumed",
        "cairn-local-checkpoints",
        "64Mi",
        dataSourceRef={"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": checkpoint},
    )
    cluster.apply(claim, cluster.pod("resumed", "sleep 3600", claim="resumed"))
    cluster.wait_pod("resumed", timeout=180)
    events = cluster.get("events", "--field-selector", "involvedObject.name=resumed")["items"]
    assert {"Populating", "Populated"} <= {e["reason"] for e in events}
    wait_until(
        lambda: not cluster.get("pvc", "-n", CAIRN_NAMESPACE)["items"],
        60,
        "the populator's prime claim to go",
    )
    restored = {n: cluster.exec("resumed", "md5sum", f"/data/ckpt/step_7/{n}").split()[0] for n in shards}
    assert restored == written
    for name in ("first-run", "resumed"):
        cluster.delete("pod", name)
        cluster.delete("pvc", name)


def test_a_claim_from_a_missing_checkpoint_waits_with_an_event(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    cluster.apply(LOCAL_ONLY_POLICY)
    cluster.apply(
        cluster.storage_class("cairn-local-checkpoints", **{"cairn.dev/checkpoint-policy": "local-only"})
    )
    claim = cluster.claim(
        "from-nothing",
        "cairn-local-checkpoints",
        "16Mi",
        dataSourceRef={"apiGroup": "cairn.dev", "kind": "Checkpoint", "name": "no-such-checkpoint"},
    )
    cluster.apply(claim, cluster.pod("waiting", "sleep 3600", claim="from-nothing"))

    def warned() -> bool:
        events = cluster.get("events", "--field-selector", "involvedObject.name=from-nothing")["items"]
        return any(event["reason"] == "CheckpointNotFound" for event in events)

    wait_until(warned, 60, "a CheckpointNotFound event on the claim")
    assert cluster.get("pvc", "from-nothing")["status"].get("phase") != "Bound"
    assert cluster.get("pod", "waiting")["status"].get("phase") == "Pending"
    cluster.delete("pod", "waiting")
    cluster.delete("pvc", "from-nothing")


def test_a_trainer_pod_writes_checkpoints_that_get_tiered_to_s3(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    s3 = cluster.bed.s3
    assert s3 is not None
    bucket = s3.create_bucket("checkpoints-user-path")
    cluster.apply(s3.credentials_secret("ckpt-s3", "default"))
    cluster.apply(
        s3_checkpoint_policy("tiered", "default", endpoint=s3.endpoint, bucket=bucket, secret="ckpt-s3")
    )
    cluster.apply(cluster.storage_class("cairn-checkpoints", **{"cairn.dev/checkpoint-policy": "tiered"}))
    cluster.apply(cluster.claim("trainer", "cairn-checkpoints", "128Mi"))
    script = dcp_writer_script("/data/ckpt", [100, 200], shards=2, shard_mib=3) + "; sleep 3600"
    cluster.apply(cluster.pod("trainer", script, claim="trainer"))
    cluster.wait_pod("trainer")

    def tiered() -> dict[int, dict]:
        items = cluster.get("checkpoints", "-l", "cairn.dev/pvc=trainer")["items"]
        return {i["spec"]["step"]: i for i in items if i.get("status", {}).get("phase") == "Tiered"}

    wait_until(lambda: set(tiered()) == {100, 200}, 180, "both checkpoints Tiered")
    client = s3.client()
    for step, record in tiered().items():
        prefix = record["status"]["remote"]["url"].removeprefix(f"s3://{bucket}/")
        for shard in ("__0_0.distcp", "__1_0.distcp", ".metadata"):
            body = client.get_object(Bucket=bucket, Key=prefix + shard)["Body"].read()
            in_pod = cluster.exec("trainer", "md5sum", f"/data/ckpt/step_{step}/{shard}").split()[0]
            assert hashlib.md5(body).hexdigest() == in_pod
    cluster.delete("pod", "trainer")
    cluster.delete("pvc", "trainer")
