"""`make demo`: Cairn's whole story on one machine, left running; `make demo-down` removes it all.

The cluster is the test bed's user-path cluster, every part real: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler; three nodes, each a real kubelet, containerd and
kube-proxy in its own network, mount and PID namespaces with its own loop disks; MinIO as the S3
tier; and Cairn installed with `helm install` from its chart, with the image built here from the
project's Dockerfile. The trainer and the dataset reader are ordinary pods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.testbed import leaks  # noqa: E402
from tests.testbed.checkpoints import dcp_writer_script, s3_checkpoint_policy  # noqa: E402
from tests.testbed.datasets import s3_dataset  # noqa: E402
from tests.testbed.kubelet import remove_cgroup_tree  # noqa: E402
from tests.testbed.user_cluster import UserCluster, start_user_cluster  # noqa: E402
from tests.testbed.waiting import wait_until  # noqa: E402

STATE = REPO / ".cache" / "demo" / "state.json"
MiB = 1024 * 1024
GiB = 1024 * MiB
NAMESPACE = "default"
NODES = 3


def say(step: str) -> None:
    print(f"\n\033[1m==> {step}\033[0m", flush=True)


def show(cluster: UserCluster, *args: str) -> str:
    out = cluster.kubectl(*args).stdout
    print(out.rstrip(), flush=True)
    return out


def up() -> None:
    if STATE.exists():
        raise SystemExit(f"a demo is already running ({STATE}); run `make demo-down` first")
    started = time.monotonic()
    run_id = leaks.new_run_id()
    workdir = Path("/var/tmp") / f"{run_id}-demo"
    workdir.mkdir(parents=True)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    # Written first: whatever happens next, `make demo-down` finds everything by the run id, and
    # puts back the host sysctls the kubelets are about to change.
    sysctls = {key: leaks.read_sysctl(key) for key in leaks.KUBELET_SYSCTLS}
    STATE.write_text(json.dumps({"runId": run_id, "workdir": str(workdir), "sysctls": sysctls}))
    say(
        f"Images from the project's Dockerfile (buildah, Debian base), the control plane, MinIO, "
        f"{NODES} kubelet nodes with two sparse 2 GiB loop disks each, and `helm install` of the chart"
    )
    cluster = start_user_cluster(run_id, nodes=NODES, disks=2, disk_size=2 * GiB, workdir=workdir / "bed")
    bed = cluster.bed
    assert bed.s3 is not None
    kubeconfig = bed.control_plane.kubeconfigs["admin"]
    STATE.write_text(
        json.dumps(
            {"runId": run_id, "workdir": str(workdir), "kubeconfig": str(kubeconfig), "sysctls": sysctls}
        )
    )
    print("up: " + ", ".join(f"{what} {seconds:.0f}s" for what, seconds in bed.timings.items()))
    show(cluster, "get", "nodes", "-o", "wide")
    show(cluster, "get", "pods", "-n", "cairn-system", "-o", "wide")
    show(cluster, "get", "csinodes")
    show(cluster, "get", "localdisks,storagenodes")

    say("A CheckpointPolicy (S3 target in MinIO; credentials only by Secret reference) and a StorageClass")
    bucket = bed.s3.create_bucket("checkpoints")
    cluster.apply(
        bed.s3.credentials_secret("s3-creds", NAMESPACE),
        s3_checkpoint_policy(
            "llm",
            NAMESPACE,
            endpoint=bed.s3.endpoint,
            bucket=bucket,
            secret="s3-creds",
            retention={"keepLocal": 2, "keepRemoteLast": 3},
            settle_seconds=2,
        ),
        cluster.storage_class(
            "cairn-checkpoints", **{"cairn.dev/pool": "nvme", "cairn.dev/checkpoint-policy": "llm"}
        ),
    )
    show(cluster, "get", "storageclass,checkpointpolicies")

    say(
        "A trainer Pod and its claim: the scheduler picks a node with room, "
        "the volume is carved there, the kubelet mounts it"
    )
    script = (
        dcp_writer_script("/ckpt/checkpoints", [100, 200, 300], shards=4, shard_mib=16) + "; sleep infinity"
    )
    cluster.apply(
        cluster.claim("trainer", "cairn-checkpoints", "1Gi"),
        cluster.pod("trainer", script, claim="trainer", mount_path="/ckpt"),
    )
    cluster.wait_pod("trainer", timeout=180)
    show(cluster, "get", "pod,pvc", "-n", NAMESPACE, "-o", "wide")

    say(
        "The trainer writes 3 checkpoints, PyTorch DCP-shaped (shards first, .metadata last); "
        "Cairn tiers them"
    )

    def tiered() -> bool:
        items = cluster.get("checkpoints", "-n", NAMESPACE)["items"]
        return len(items) == 3 and all(i.get("status", {}).get("phase") == "Tiered" for i in items)

    wait_until(tiered, 300, "3 checkpoints Tiered")
    print(cluster.kubectl("logs", "trainer").stdout.rstrip())
    show(cluster, "get", "checkpoints", "-n", NAMESPACE)

    say(f"A Dataset from S3, seeded to all {NODES} nodes over BitTorrent v2 (the origin read once)")
    corpus = bed.s3.create_bucket("datasets")
    s3 = bed.s3.client()
    for index in range(6):
        s3.put_object(Bucket=corpus, Key=f"corpus/shard-{index:03d}.bin", Body=os.urandom(16 * MiB))
    names = [node.name for node in cluster.nodes]
    cluster.apply(
        s3_dataset("corpus", NAMESPACE, f"s3://{corpus}/corpus", bed.s3.endpoint, "s3-creds", names)
    )
    wait_until(
        lambda: cluster.get("dataset", "corpus", "-n", NAMESPACE).get("status", {}).get("phase") == "Ready",
        300,
        "the dataset on every node",
    )
    show(cluster, "get", "datasets", "-n", NAMESPACE)

    say("A reader Pod whose claim is filled from its node's copy of the Dataset (read-only)")
    cluster.apply(
        cluster.claim(
            "corpus",
            "cairn-nvme",
            "256Mi",
            dataSourceRef={"apiGroup": "cairn.dev", "kind": "Dataset", "name": "corpus"},
        ),
        cluster.pod("reader", "ls -l /corpus; sleep infinity", claim="corpus", mount_path="/corpus"),
    )
    cluster.wait_pod("reader", timeout=180)
    print(cluster.kubectl("logs", "reader").stdout.rstrip())

    gated_job(cluster, corpus, names[:2])

    say("Everything Cairn knows about")
    show(cluster, "get", "pods,pvc", "-n", NAMESPACE, "-o", "wide")
    show(cluster, "get", "localdisks,storagenodes,checkpoints,datasets", "-A")
    print(
        f"\nDemo up in {time.monotonic() - started:.0f}s and left running.\n"
        f"  export KUBECONFIG={kubeconfig}\n  kubectl get pods,checkpoints,datasets\n"
        "  make demo-down    # stops every node and process, restores the host as it was"
    )


def gated_job(cluster: UserCluster, bucket: str, holders: list[str]) -> None:
    """A job whose data is not on any node yet: gated until it is, then placed where it is."""
    assert cluster.bed.s3 is not None
    say(
        "A job Pod naming a Dataset that no node holds yet: admission gives it the scheduling gate "
        "cairn.dev/dataset, so it waits instead of landing on a node without its data"
    )
    s3 = cluster.bed.s3.client()
    for index in range(6):
        s3.put_object(Bucket=bucket, Key=f"next/shard-{index:03d}.bin", Body=os.urandom(16 * MiB))
    job = cluster.pod("next-job", "ls -l /data; sleep infinity", claim="next-corpus", mount_path="/data")
    job["metadata"]["annotations"] = {"cairn.dev/dataset": "next-corpus"}
    cluster.apply(
        cluster.claim(
            "next-corpus",
            "cairn-nvme",
            "256Mi",
            dataSourceRef={"apiGroup": "cairn.dev", "kind": "Dataset", "name": "next-corpus"},
        ),
        job,
    )
    show(cluster, "get", "pod", "next-job", "-n", NAMESPACE, "-o", "wide")

    say(
        f"Its Dataset, wanted on {len(holders)} of {NODES} nodes and seeded in the background (capped "
        "at 16 MiB/s per node): the gate lifts once both copies are verified, and the scheduler may "
        "only pick a node that holds one"
    )
    cluster.apply(
        s3_dataset(
            "next-corpus",
            NAMESPACE,
            f"s3://{bucket}/next",
            cluster.bed.s3.endpoint,
            "s3-creds",
            holders,
            priority="Background",
            backgroundBytesPerSecond=16 * MiB,
        )
    )
    wait_until(
        lambda: cluster.get("dataset", "next-corpus", "-n", NAMESPACE).get("status", {}).get("waitingPods"),
        60,
        "the Dataset to count the waiting pod",
    )
    show(cluster, "get", "datasets", "-n", NAMESPACE, "-o", "wide")
    cluster.wait_pod("next-job", timeout=300)
    out = show(cluster, "get", "pod", "next-job", "-n", NAMESPACE, "-o", "wide")
    node = cluster.get("pod", "next-job", "-n", NAMESPACE)["spec"]["nodeName"]
    if node not in holders:
        raise SystemExit(f"next-job landed on {node}, which holds no copy of its data:\n{out}")
    show(cluster, "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=next-job")
    print(cluster.kubectl("logs", "next-job").stdout.rstrip())


def down() -> None:
    if not STATE.exists():
        print("no demo is running")
        return
    state = json.loads(STATE.read_text())
    run_id, workdir = state["runId"], Path(state["workdir"])
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid, _cmd in leaks.processes_of_run(run_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while leaks.processes_of_run(run_id) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Pods are not tagged, but live in the nodes' cgroups; their nodes' inits took them along.
    for cgroup in leaks.cgroups_of_run(run_id):
        with contextlib.suppress(RuntimeError):
            remove_cgroup_tree(cgroup)
    # What the kubelets changed on the host kernel goes back to what it was before the demo.
    for key, value in state.get("sysctls", {}).items():
        if leaks.read_sysctl(key) != value:
            Path("/proc/sys", key).write_text(value + "\n")
    # Deepest mounts first: publish targets sit on top of staging paths.
    for mount in sorted((m for m in leaks.mount_points() if run_id in m), key=len, reverse=True):
        subprocess.run(["umount", mount], check=False)
    for _ in range(3):  # LVs' loops sit on the disks' loops: detach from the top down
        backing = leaks.loop_devices()
        ours = {d for d, f in backing.items() if run_id in f}
        stacked = {d for d, f in backing.items() if leaks.stacked_on(f) in ours}
        for device in sorted(stacked) + sorted(ours - stacked):
            subprocess.run(["losetup", "-d", device], check=False)
    for namespace in leaks.network_namespaces():
        if run_id in namespace:
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
    tag = leaks.run_tag(run_id)
    for link in leaks.network_links():
        if tag in link:
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    sysctls = tuple(state.get("sysctls", {}).items())
    empty = leaks.SystemSnapshot(frozenset(), frozenset(), frozenset(), frozenset(), sysctls)
    left = leaks.find_leaks(run_id, empty)
    STATE.unlink()
    if left:
        raise SystemExit("demo-down could not remove:\n  " + "\n  ".join(left))
    print(
        f"demo {run_id} removed: no process, mount, loop device, namespace, link or cgroup left, "
        "and the host's sysctls are as they were"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the demo needs root: it makes network namespaces, loop disks and mounts")
    up() if args.command == "up" else down()


if __name__ == "__main__":
    main()
