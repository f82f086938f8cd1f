"""`make demo`: Cairn's whole story on one machine, left running; `make demo-down` removes it all.

The cluster is the test bed's: a real etcd, kube-apiserver, kube-scheduler and PV binder, MinIO as
the S3 tier, external-provisioner in front of cairn-controller, and three simulated nodes (network
namespaces with loop disks), each with its cairn-node-agent. There is no kubelet: a stand-in, named
as such, stages and publishes a pod's volume exactly as kubelet would once the scheduler placed it.
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cairn.csi.proto import csi_pb2  # noqa: E402

from tests.testbed import leaks  # noqa: E402
from tests.testbed.bed import TestBed  # noqa: E402
from tests.testbed.components import mount_capability, start_controller, start_node_agent  # noqa: E402
from tests.testbed.datasets import s3_dataset  # noqa: E402
from tests.testbed.kube_components import (  # noqa: E402
    register_csi_node,
    start_controller_manager,
    start_csi_provisioner,
)
from tests.testbed.process import ManagedProcess  # noqa: E402
from tests.testbed.tools import tool_path  # noqa: E402
from tests.testbed.waiting import wait_until  # noqa: E402

STATE = REPO / ".cache" / "demo" / "state.json"
MiB = 1024 * 1024
GiB = 1024 * MiB
NAMESPACE = "default"
NODES = 3


def say(step: str) -> None:
    print(f"\n\033[1m==> {step}\033[0m", flush=True)


def show(bed: TestBed, *args: str) -> str:
    out = bed.control_plane.kubectl(*args).stdout
    print(out.rstrip(), flush=True)
    return out


def apply(bed: TestBed, *manifests: dict[str, Any]) -> None:
    for manifest in manifests:
        bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def get(bed: TestBed, *args: str) -> dict[str, Any]:
    return json.loads(bed.control_plane.kubectl("get", *args, "-o", "json").stdout)


def start_scheduler(workdir: Path, run_id: str, kubeconfig: Path) -> ManagedProcess:
    process = ManagedProcess(
        "kube-scheduler",
        [
            str(tool_path("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ],
        run_id=run_id,
        log_dir=workdir / "logs",
    )
    time.sleep(1)
    if not process.alive():
        raise RuntimeError(f"kube-scheduler exited:\n{process.log_tail()}")
    return process


def up() -> None:
    if STATE.exists():
        raise SystemExit(f"a demo is already running ({STATE}); run `make demo-down` first")
    started = time.monotonic()
    run_id = leaks.new_run_id()
    workdir = Path("/var/tmp") / f"{run_id}-demo"
    workdir.mkdir(parents=True)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    say("Control plane: etcd, kube-apiserver (RBAC), MinIO as the S3 tier")
    bed = TestBed(run_id, workdir=workdir).start(with_s3=True)
    assert bed.s3 is not None
    kubeconfig = bed.control_plane.kubeconfigs["admin"]
    STATE.write_text(json.dumps({"runId": run_id, "workdir": str(workdir), "kubeconfig": str(kubeconfig)}))
    print(f"up in {sum(bed.timings.values()):.1f}s; kubeconfig {kubeconfig}")

    say(f"{NODES} simulated nodes, each with two sparse 2 GiB loop disks, and their cairn-node-agents")
    nodes = bed.add_nodes(NODES, disks=2, disk_size=2 * GiB)
    sockets = {}
    for node in nodes:
        _agent, sockets[node.name] = start_node_agent(
            workdir, run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], node
        )
    storage = bed.control_plane.api_client()
    from kubernetes import client

    for node in nodes:
        register_csi_node(client.StorageV1Api(storage), node.name)
        # The node lifecycle controller would lift this once the (absent) kubelet reports Ready.
        bed.control_plane.kubectl("taint", "nodes", node.name, "node.kubernetes.io/not-ready:NoSchedule-")
    wait_until(lambda: len(get(bed, "storagenodes")["items"]) >= NODES, 60, "StorageNodes")
    show(bed, "get", "localdisks,storagenodes")

    say("cairn-controller behind the real external-provisioner; the PV binder and kube-scheduler")
    _controller, controller_socket = start_controller(
        workdir, run_id, bed.control_plane.kubeconfigs["cairn-controller"]
    )
    os.environ["NAMESPACE"] = "cairn-system"
    os.environ["POD_NAME"] = "cairn-controller-demo"
    start_csi_provisioner(
        workdir,
        run_id,
        bed.control_plane.kubeconfigs["cairn-controller"],
        controller_socket,
        extra_args=("--enable-capacity", "--capacity-ownerref-level=-1", "--capacity-poll-interval=5s"),
    )
    start_controller_manager(workdir, run_id, kubeconfig)
    start_scheduler(workdir, run_id, kubeconfig)
    apply(
        bed,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": "lvm.cairn.dev"},
            "spec": {
                "attachRequired": False,
                "podInfoOnMount": True,
                "storageCapacity": True,
                "fsGroupPolicy": "File",
                "volumeLifecycleModes": ["Persistent"],
            },
        },
    )

    say("A CheckpointPolicy (S3 target in MinIO; credentials only by Secret reference) and a StorageClass")
    bucket = bed.s3.create_bucket("checkpoints")
    apply(
        bed,
        bed.s3.credentials_secret("s3-creds", NAMESPACE),
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "CheckpointPolicy",
            "metadata": {"name": "llm", "namespace": NAMESPACE},
            "spec": {
                "commit": {"settleSeconds": 2},
                "target": {
                    "endpoint": bed.s3.endpoint,
                    "bucket": bucket,
                    "prefix": "runs",
                    "credentialsSecretRef": {"name": "s3-creds"},
                },
                "retention": {"keepLocal": 2, "keepRemoteLast": 3},
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "cairn-nvme"},
            "provisioner": "lvm.cairn.dev",
            "parameters": {"cairn.dev/pool": "nvme", "cairn.dev/checkpoint-policy": "llm"},
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": True,
        },
    )
    show(bed, "get", "storageclass,checkpointpolicies")

    say("A PVC and a Pod that uses it; the scheduler places the Pod, the provisioner creates the PV")
    apply(
        bed,
        # No controller-manager ServiceAccount controller here; admission wants the account to exist.
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": NAMESPACE},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "trainer", "namespace": NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "cairn-nvme",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "trainer", "namespace": NAMESPACE},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "train",
                        "image": "trainer:demo",
                        "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
                    }
                ],
                "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "trainer"}}],
            },
        },
    )
    wait_until(
        lambda: get(bed, "pod", "trainer", "-n", NAMESPACE)["spec"].get("nodeName"),
        120,
        "the Pod to be placed",
    )
    wait_until(
        lambda: get(bed, "pvc", "trainer", "-n", NAMESPACE)["status"].get("phase") == "Bound", 120, "the PVC"
    )
    node_name = get(bed, "pod", "trainer", "-n", NAMESPACE)["spec"]["nodeName"]
    show(bed, "get", "pod,pvc", "-n", NAMESPACE, "-o", "wide")

    say(f"Kubelet stand-in on {node_name}: NodeStageVolume, then NodePublishVolume, as kubelet would")
    pv = get(bed, "pv", get(bed, "pvc", "trainer", "-n", NAMESPACE)["spec"]["volumeName"])
    volume_id = pv["spec"]["csi"]["volumeHandle"]
    import grpc
    from cairn.csi.proto import csi_pb2_grpc

    node_stub = csi_pb2_grpc.NodeStub(grpc.insecure_channel(f"unix://{sockets[node_name]}"))
    staging = workdir / "kubelet" / node_name / "plugins" / volume_id / "globalmount"
    target = workdir / "kubelet" / node_name / "pods" / "trainer" / "volumes" / "ckpt"
    staging.mkdir(parents=True)
    capability = mount_capability()
    node_stub.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=capability
        ),
        timeout=60,
    )
    node_stub.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=capability,
        ),
        timeout=60,
    )
    print(subprocess.run(["findmnt", str(target)], capture_output=True, text=True).stdout.rstrip())

    say("The trainer writes 3 checkpoints, PyTorch DCP-shaped (shards first, .metadata last)")
    for step in (100, 200, 300):
        directory = target / "checkpoints" / f"step_{step}"
        directory.mkdir(parents=True)
        for rank in range(4):
            (directory / f"__{rank}_0.distcp").write_bytes(os.urandom(16 * MiB))
        (directory / ".metadata").write_bytes(os.urandom(64 * 1024))
        print(f"  wrote checkpoints/step_{step} (64 MiB)", flush=True)

    def tiered() -> bool:
        items = get(bed, "checkpoints", "-n", NAMESPACE)["items"]
        return len(items) == 3 and all(i.get("status", {}).get("phase") == "Tiered" for i in items)

    wait_until(tiered, 300, "3 checkpoints Tiered")
    show(bed, "get", "checkpoints", "-n", NAMESPACE)

    say(f"A Dataset from S3, seeded to all {NODES} nodes over BitTorrent v2 (the origin read once)")
    corpus = bed.s3.create_bucket("datasets")
    s3 = bed.s3.client()
    for index in range(6):
        s3.put_object(Bucket=corpus, Key=f"corpus/shard-{index:03d}.bin", Body=os.urandom(16 * MiB))
    names = [node.name for node in nodes]
    apply(bed, s3_dataset("corpus", NAMESPACE, f"s3://{corpus}/corpus", bed.s3.endpoint, "s3-creds", names))
    wait_until(
        lambda: get(bed, "dataset", "corpus", "-n", NAMESPACE).get("status", {}).get("phase") == "Ready",
        300,
        "the dataset on every node",
    )
    show(bed, "get", "datasets", "-n", NAMESPACE)

    say("Everything Cairn knows about")
    show(bed, "get", "localdisks,storagenodes,pvc,checkpoints,datasets", "-A")
    print(
        f"\nDemo up in {time.monotonic() - started:.0f}s and left running.\n"
        f"  export KUBECONFIG={kubeconfig}\n  kubectl get checkpoints,datasets\n"
        "  make demo-down    # removes every process, mount, loop device and namespace it made"
    )


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
    # Deepest mounts first: publish targets sit on top of staging paths.
    for mount in sorted((m for m in leaks.mount_points() if run_id in m), key=len, reverse=True):
        subprocess.run(["umount", mount], check=False)
    for _ in range(3):  # LVs' loops sit on the disks' loops: detach from the top down
        backing = leaks.loop_devices()
        ours = {d for d, f in backing.items() if run_id in f}
        stacked = {d for d, f in backing.items() if f in ours}
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
    empty = leaks.SystemSnapshot(frozenset(), frozenset(), frozenset(), frozenset())
    left = leaks.find_leaks(run_id, empty)
    STATE.unlink()
    if left:
        raise SystemExit("demo-down could not remove:\n  " + "\n  ".join(left))
    print(f"demo {run_id} removed: no process, mount, loop device, namespace or link left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the demo needs root: it makes network namespaces, loop disks and mounts")
    up() if args.command == "up" else down()


if __name__ == "__main__":
    main()
