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


def test_mounts_survive_a_node_agent_restart_and_the_new_agent_serves_new_pods(
    user_cluster: UserCluster,
) -> None:
    cluster = user_cluster
    assert cluster.release is not None
    cluster.apply(cluster.claim("survivor", CLASS, "64Mi"))
    cluster.apply(cluster.pod("survivor", STEADY_WRITER, claim="survivor"))
    node = cluster.wait_pod("survivor")["spec"]["nodeName"]
    old_agent = cluster.release.agent_pod(node)["metadata"]["name"]
    cluster.kubectl("delete", "pod", "-n", CAIRN_NAMESPACE, old_agent, "--wait=true")

    def new_agent_ready() -> bool:
        pod = cluster.release.agent_pod(node)
        statuses = pod.get("status", {}).get("containerStatuses", [])
        return pod["metadata"]["name"] != old_agent and bool(statuses) and all(s["ready"] for s in statuses)

    wait_until(new_agent_ready, 120, f"a new node agent on {node}")
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


def test_a_pod_reads_a_dataset_seeded_onto_its_node(user_cluster: UserCluster) -> None:
    cluster = user_cluster
    s3 = cluster.bed.s3
    assert s3 is not None
    bucket = s3.create_bucket("corpus-user-path")
    files = {f"shard-{i:02d}.bin": os.urandom(3 * MiB + i) for i in range(4)}
    client = s3.client()
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"corpus/{name}", Body=data)
    cluster.apply(s3.credentials_secret("corpus-s3", "default"))
    node = cluster.nodes[0].name
    names = [n.name for n in cluster.nodes]
    cluster.apply(s3_dataset("corpus", "default", f"s3://{bucket}/corpus", s3.endpoint, "corpus-s3", names))
    wait_until(
        lambda: cluster.get("dataset", "corpus").get("status", {}).get("phase") == "Ready",
        180,
        "the Dataset Ready",
    )
    claim = cluster.claim(
        "corpus-copy",
        CLASS,
        "64Mi",
        dataSourceRef={"apiGroup": "cairn.dev", "kind": "Dataset", "name": "corpus"},
    )
    cluster.apply(claim)
    cluster.apply(cluster.pod("reader", "sleep 3600", claim="corpus-copy", node=node))
    cluster.wait_pod("reader", timeout=180)
    for name, data in files.items():
        assert cluster.exec("reader", "md5sum", f"/data/{name}").split()[0] == hashlib.md5(data).hexdigest()
    # A dataset copy is read-only in the pod.
    assert (
        "Read-only file system"
        in cluster.kubectl("exec", "reader", "--", "touch", "/data/new", check=False).stderr
    )
    cluster.delete("pod", "reader")
    cluster.delete("pvc", "corpus-copy")
    cluster.delete("dataset", "corpus")


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
