"""Pods that wait for their data: the chart's admission policy gates them, the real kube-scheduler
places them once the controller lifts the gate, and only onto nodes holding a verified copy.

Three nodes, a Dataset wanted on two of them; the third is free and the scheduler would use it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from kubernetes.client.exceptions import ApiException

from tests.testbed.bed import TestBed
from tests.testbed.chart import (
    claim_gate_webhook,
    dataset_gate_policies,
    install_claim_gate,
    install_dataset_gate,
)
from tests.testbed.components import start_controller, start_node_agent
from tests.testbed.datasets import pod_waiting_for, s3_dataset
from tests.testbed.kube_components import open_to_the_scheduler, start_scheduler
from tests.testbed.nodes import SimulatedNode
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "default"
GATE = "cairn.dev/dataset"


@dataclass
class Rig:
    bed: TestBed
    nodes: list[SimulatedNode]
    holders: list[str]
    dataset: dict = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)

    def kubectl(self, *args: str, identity: str = "admin", check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, identity=identity, check=check, input_text=input_text)

    def get(self, *args: str) -> dict:
        result = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def pod(self, name: str, annotation: str, affinity: dict | None = None) -> dict:
        manifest = pod_waiting_for(name, NAMESPACE, annotation, affinity)
        return json.loads(
            self.kubectl("create", "-o", "json", "-f", "-", input_text=json.dumps(manifest)).stdout
        )

    def diagnosis(self, pod: str) -> str:
        found = self.get("pod", pod, "-n", NAMESPACE)
        scheduler = next((p for p in self.processes if p.name == "kube-scheduler"), None)
        said = [line for line in (scheduler.log_tail(2000) if scheduler else "").splitlines() if pod in line]
        return "\n".join(
            [json.dumps({"spec": found.get("spec"), "status": found.get("status")}, indent=1), *said[-15:]]
        )

    def events(self, pod: str) -> list[tuple[str, str, str]]:
        listed = self.get("events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={pod}")
        return [(e["type"], e["reason"], e["message"]) for e in listed.get("items", [])]


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def claim_from(name: str, dataset: str) -> dict:
    """A claim populated from a Dataset; no StorageClass serves it here, so it stays Pending."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "cairn-nvme",
            "resources": {"requests": {"storage": "64Mi"}},
            "dataSourceRef": {"apiGroup": "cairn.dev", "kind": "Dataset", "name": dataset},
        },
    }


def pod_with_claim(name: str, claim: str) -> dict:
    """A pod that names no Dataset: only its claim says what it consumes."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "containers": [{"name": "trainer", "image": "registry.invalid/trainer:1"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


@pytest.fixture(scope="module")
def rig(bed: TestBed) -> Iterator[Rig]:
    assert bed.s3 is not None
    workdir = bed.workdir / "dataset-gate"
    nodes = bed.add_nodes(3, disks=1, disk_size=256 * MiB)
    rig = Rig(bed, nodes, sorted(n.name for n in nodes[:2]))
    bucket = bed.s3.create_bucket(f"gate-{bed.run_id[:8]}")
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(bed.s3.credentials_secret("gate-s3", NAMESPACE)))
    client = bed.s3.client()
    for index in range(4):
        client.put_object(Bucket=bucket, Key=f"data/part-{index}.bin", Body=os.urandom(2 * MiB))
    open_to_the_scheduler(bed.control_plane, NAMESPACE, [n.name for n in nodes])
    install_dataset_gate(bed.control_plane, NAMESPACE)
    try:
        for node in nodes:
            agent, _ = start_node_agent(
                workdir, bed.run_id, bed.control_plane.kubeconfigs["cairn-node-agent"], node
            )
            rig.processes.append(agent)
        port = free_port(bed.cluster.gateway)
        serving = bed.control_plane.pki.issue(
            "claim-gate", "/CN=cairn-claim-gate", server_sans=[f"IP:{bed.cluster.gateway}"]
        )
        controller, _ = start_controller(
            workdir,
            bed.run_id,
            bed.control_plane.kubeconfigs["cairn-controller"],
            name="controller-gate",
            extra_args=(
                f"--claim-gate-address={bed.cluster.gateway}:{port}",
                f"--claim-gate-certificate={serving.cert}",
                f"--claim-gate-key={serving.key}",
            ),
        )
        rig.processes.append(controller)
        webhook = claim_gate_webhook(
            f"https://{bed.cluster.gateway}:{port}/gate-pods", bed.control_plane.pki.ca.cert.read_bytes()
        )
        rig.kubectl("apply", "-f", "-", input_text=json.dumps(claim_from("gate-probe-claim", "probe")))
        install_claim_gate(bed.control_plane, webhook, pod_with_claim("gate-probe", "gate-probe-claim"))
        rig.processes.append(start_scheduler(workdir, bed.run_id, bed.control_plane.kubeconfigs["admin"]))
        dataset = s3_dataset(
            "gated", NAMESPACE, f"s3://{bucket}/data", bed.s3.endpoint, "gate-s3", rig.holders
        )
        rig.dataset = dataset
        yield rig
    finally:
        print("\n" + rig.kubectl("get", "datasets,pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
        rig.kubectl("delete", "pods", "--all", "-n", NAMESPACE, "--grace-period=0", "--force", check=False)
        rig.kubectl("delete", "datasets", "--all", "-n", NAMESPACE, "--timeout=120s", check=False)
        rig.kubectl(
            "delete", "-f", "-", "--ignore-not-found", input_text=dataset_gate_policies(), check=False
        )
        rig.kubectl(
            "delete",
            "mutatingwebhookconfiguration",
            "cairn-dataset-claim-gate",
            "--ignore-not-found",
            check=False,
        )
        rig.kubectl("delete", "pvc", "--all", "-n", NAMESPACE, "--wait=false", check=False)
        for process in rig.processes:
            process.stop()
            print(f"\n{process.name} log tail:\n{process.log_tail(8)}")
            if process.name == "controller-gate":
                gate_lines = [line for line in process.log_tail(400).splitlines() if "gate" in line]
                print("\n".join(gate_lines[-20:]))
        bed.remove_nodes(nodes)
        rig.kubectl("delete", "secret", "gate-s3", "-n", NAMESPACE, check=False)
        for index in range(4):
            client.delete_object(Bucket=bucket, Key=f"data/part-{index}.bin")
        client.delete_bucket(Bucket=bucket)


def test_a_pod_waits_gated_for_its_data_then_lands_only_where_a_verified_copy_is(rig: Rig) -> None:
    created = rig.pod("early", "gated")
    assert {"name": GATE} in created["spec"].get("schedulingGates", []), "admission gave the pod the gate"
    assert created["metadata"]["labels"].get("cairn.dev/waiting-for-data") == "true"

    def told_it_waits() -> bool:
        return any(
            reason == "WaitingForData" and "gated does not exist" in msg
            for _t, reason, msg in rig.events("early")
        )

    wait_until(told_it_waits, 30, "an Event saying the pod waits for a Dataset that does not exist yet")
    scheduled = next(
        c
        for c in rig.get("pod", "early", "-n", NAMESPACE)["status"]["conditions"]
        if c["type"] == "PodScheduled"
    )
    assert scheduled["reason"] == "SchedulingGated" and not rig.get("pod", "early", "-n", NAMESPACE)[
        "spec"
    ].get("nodeName")

    rig.kubectl("apply", "-f", "-", input_text=json.dumps(rig.dataset))

    def placed(name: str) -> str:
        return rig.get("pod", name, "-n", NAMESPACE).get("spec", {}).get("nodeName", "")

    wait_until(
        lambda: bool(placed("early")),
        180,
        "the gated pod to be scheduled once its data is ready",
        context=lambda: rig.diagnosis("early"),
    )
    dataset = rig.get("dataset", "gated", "-n", NAMESPACE)["status"]
    assert dataset["phase"] == "Ready", "the gate opened before the Dataset was ready"
    assert placed("early") in rig.holders
    pod = rig.get("pod", "early", "-n", NAMESPACE)
    assert GATE not in [g["name"] for g in pod["spec"].get("schedulingGates", [])]
    assert "cairn.dev/waiting-for-data" not in pod["metadata"].get("labels", {})
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": "topology.cairn.dev/node", "operator": "In", "values": rig.holders}]}
    ]
    assert any(reason == "DataReady" for _t, reason, _m in rig.events("early"))

    # Every time: pods made after the data is ready, one of them with its own affinity to a set of
    # nodes that includes the free node, all go where the data is.
    anywhere = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/hostname",
                                "operator": "In",
                                "values": [n.name for n in rig.nodes],
                            }
                        ]
                    }
                ]
            }
        }
    }
    later = [f"later-{i}" for i in range(6)]
    for index, name in enumerate(later):
        rig.pod(name, "gated", anywhere if index == 0 else None)
    wait_until(lambda: all(placed(name) for name in later), 60, "the later pods to be scheduled")
    assert {placed(name) for name in later} <= set(rig.holders), {name: placed(name) for name in later}
    assert rig.get("dataset", "gated", "-n", NAMESPACE)["status"].get("waitingPods") == 0


def test_a_hostile_annotation_keeps_the_pod_gated_with_a_warning_saying_why(rig: Rig) -> None:
    rig.pod("hostile", "../../etc,gated")

    def warned() -> bool:
        return any(
            kind == "Warning" and reason == "InvalidDatasetAnnotation" and "'../../etc' is not a name" in msg
            for kind, reason, msg in rig.events("hostile")
        )

    wait_until(warned, 30, "a Warning Event naming the bad annotation")
    pod = rig.get("pod", "hostile", "-n", NAMESPACE)
    assert not pod["spec"].get("nodeName") and {"name": GATE} in pod["spec"]["schedulingGates"]


def test_the_controller_may_lift_its_gate_and_nothing_else(rig: Rig) -> None:
    # A pod no gate holds: the controller's account may not touch it, though RBAC lets it patch pods.
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain", "namespace": NAMESPACE},
             "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]}}  # fmt: skip
    rig.kubectl("create", "-f", "-", input_text=json.dumps(plain))
    rig.pod("held", "not-a-dataset-yet")

    as_controller = rig.bed.core_v1("cairn-controller")

    def refusal(name: str, body: dict) -> str:
        # The controller's own client, which patches without reading first (it may not get pods).
        try:
            as_controller.patch_namespaced_pod(name, NAMESPACE, body)
        except ApiException as error:
            return f"{error.status} {error.body}"
        return "admitted"

    refused = refusal("plain", {"metadata": {"labels": {"x": "y"}}})
    # A policy's denial is 422 Invalid, not RBAC's 403.
    assert refused.startswith("422") and "only pods waiting for data" in refused, refused
    smuggled = refusal("held", {"spec": {"activeDeadlineSeconds": 5}})
    assert smuggled.startswith("422") and "change nothing else" in smuggled, smuggled
    assert not rig.get("pod", "held", "-n", NAMESPACE)["spec"].get("activeDeadlineSeconds")


def test_a_pod_waiting_for_a_second_dataset_of_the_same_objects_lands_on_a_shared_copy(rig: Rig) -> None:
    """The second Dataset reads nothing: it shares the first one's copies, and the gate opens on them."""
    first = rig.get("dataset", "gated", "-n", NAMESPACE)["status"]
    assert first["phase"] == "Ready", "needs the Dataset of the first test"
    again = json.loads(json.dumps(rig.dataset))
    again["metadata"]["name"] = "gated-again"
    rig.pod("second-job", "gated-again")
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(again))

    def placed() -> str:
        return rig.get("pod", "second-job", "-n", NAMESPACE).get("spec", {}).get("nodeName", "")

    wait_until(
        lambda: bool(placed()), 120, "the pod to be scheduled", context=lambda: rig.diagnosis("second-job")
    )
    assert placed() in rig.holders
    status = rig.get("dataset", "gated-again", "-n", NAMESPACE)["status"]
    assert status["sharedCopies"] == {node: "gated" for node in rig.holders}
    assert status["bytesFromOrigin"] == 0 and status["bytesFromPeers"] == 0
    assert {r["digest"] for r in status["nodes"].values()} == {first["digest"]}


def test_a_pod_consuming_a_dataset_only_through_its_claim_is_gated_by_the_webhook(rig: Rig) -> None:
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(claim_from("by-claim-data", "claimed")))
    created = json.loads(
        rig.kubectl(
            "create",
            "-o",
            "json",
            "-f",
            "-",
            input_text=json.dumps(pod_with_claim("by-claim", "by-claim-data")),
        ).stdout
    )
    assert {"name": GATE} in created["spec"].get("schedulingGates", []), "the webhook gave the pod the gate"
    assert created["metadata"]["labels"].get("cairn.dev/waiting-for-data") == "true"
    wait_until(
        lambda: any(
            reason == "WaitingForData" and "claimed does not exist" in msg
            for _t, reason, msg in rig.events("by-claim")
        ),
        30,
        "an Event saying the pod waits for the Dataset its claim names",
    )
    # A pod mounting a claim that is not from a Dataset is left alone.
    rig.kubectl("apply", "-f", "-", input_text=json.dumps({**claim_from("plain-data", "x"), "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}))  # fmt: skip
    plain = json.loads(
        rig.kubectl(
            "create",
            "-o",
            "json",
            "-f",
            "-",
            input_text=json.dumps(pod_with_claim("plain-claim", "plain-data")),
        ).stdout
    )
    assert not plain["spec"].get("schedulingGates")

    claimed = json.loads(json.dumps(rig.dataset))
    claimed["metadata"]["name"] = "claimed"
    rig.kubectl("apply", "-f", "-", input_text=json.dumps(claimed))

    def opened() -> bool:
        return not rig.get("pod", "by-claim", "-n", NAMESPACE)["spec"].get("schedulingGates")

    wait_until(
        opened,
        120,
        "the gate to lift once the claim's Dataset is ready",
        context=lambda: rig.diagnosis("by-claim"),
    )
    terms = rig.get("pod", "by-claim", "-n", NAMESPACE)["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "topology.cairn.dev/node", "operator": "In", "values": rig.holders}]}
    ]
