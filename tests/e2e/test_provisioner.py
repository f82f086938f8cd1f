"""PVCs through the real external-provisioner and PV binder: the path users take."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cairn import DRIVER_NAME, TOPOLOGY_KEY
from tests.testbed.bed import TestBed
from tests.testbed.components import Driver, running_driver
from tests.testbed.kube_components import register_csi_node, start_controller_manager, start_csi_provisioner
from tests.testbed.process import ManagedProcess
from tests.testbed.waiting import wait_until

MiB = 1024 * 1024
NAMESPACE = "team-a"


@dataclass
class Cluster:
    bed: TestBed
    driver: Driver
    provisioner: ManagedProcess

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def apply(self, manifest: dict) -> None:
        self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_for(self, what: str, predicate, timeout: float = 90) -> None:
        wait_until(
            predicate,
            timeout,
            what,
            interval=0.3,
            context=lambda: f"provisioner:\n{self.provisioner.log_tail(20)}",
        )


@pytest.fixture(scope="module")
def cluster(bed: TestBed) -> Iterator[Cluster]:
    cp = bed.control_plane
    with running_driver(bed, "provisioner", disks=1, disk_size=512 * MiB) as driver:
        from kubernetes import client

        register_csi_node(client.StorageV1Api(cp.api_client()), driver.node.name)
        manager = start_controller_manager(driver.workdir, bed.run_id, cp.kubeconfigs["admin"])
        provisioner = start_csi_provisioner(
            driver.workdir, bed.run_id, cp.kubeconfigs["cairn-controller"], driver.controller_socket
        )
        cp.kubectl("create", "namespace", NAMESPACE)
        try:
            yield Cluster(bed, driver, provisioner)
        finally:
            cp.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
            cp.kubectl("delete", "csinode", driver.node.name, "--ignore-not-found")
            provisioner.stop()
            manager.stop()


def storage_class(name: str, parameters: dict[str, str]) -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER_NAME,
        "parameters": parameters,
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
        "allowVolumeExpansion": True,
    }


def claim(name: str, storage_class_name: str, size: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class_name,
            "resources": {"requests": {"storage": size}},
        },
    }


def test_a_pvc_is_provisioned_bound_and_released(cluster: Cluster) -> None:
    cluster.apply(
        storage_class("cairn-nvme", {"cairn.dev/pool": "nvme", "csi.storage.k8s.io/fstype": "ext4"})
    )
    cluster.apply(claim("checkpoints", "cairn-nvme", "64Mi"))
    cluster.wait_for(
        "the PVC to bind",
        lambda: cluster.get("pvc", "checkpoints", "-n", NAMESPACE)["status"].get("phase") == "Bound",
    )

    pvc = cluster.get("pvc", "checkpoints", "-n", NAMESPACE)
    pv = cluster.get("pv", pvc["spec"]["volumeName"])
    assert pv["spec"]["csi"]["driver"] == DRIVER_NAME
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {
        "key": TOPOLOGY_KEY,
        "operator": "In",
        "values": [cluster.driver.node.name],
    }
    volume = cluster.get("localvolume", pv["spec"]["csi"]["volumeHandle"])
    # --extra-create-metadata tells Cairn which claim a volume serves, for checkpoint records later.
    assert (volume["spec"]["pvcName"], volume["spec"]["pvcNamespace"]) == ("checkpoints", NAMESPACE)
    assert volume["status"]["phase"] == "Ready" and volume["status"]["capacityBytes"] == 64 * MiB

    cluster.kubectl("delete", "pvc", "checkpoints", "-n", NAMESPACE, "--wait=false")
    cluster.wait_for(
        "the PV and its LocalVolume to go",
        lambda: (
            cluster.kubectl("get", "pv", pv["metadata"]["name"], check=False).returncode != 0
            and cluster.kubectl("get", "localvolume", volume["metadata"]["name"], check=False).returncode != 0
        ),
    )


def test_a_bad_storageclass_parameter_shows_up_as_an_event_on_the_claim(cluster: Cluster) -> None:
    cluster.apply(storage_class("cairn-typo", {"cairn.dev/pool": "nvme", "cairn.dev/checkpoint-polcy": "x"}))
    cluster.apply(claim("typo", "cairn-typo", "16Mi"))

    def failure_event() -> str | None:
        events = cluster.get("events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=typo")[
            "items"
        ]
        return next((e["message"] for e in events if e["reason"] == "ProvisioningFailed"), None)

    cluster.wait_for("a ProvisioningFailed event", lambda: failure_event() is not None)
    message = failure_event() or ""
    assert "InvalidArgument" in message and "cairn.dev/checkpoint-polcy" in message
    assert "valid keys are cairn.dev/pool, csi.storage.k8s.io/fstype, cairn.dev/checkpoint-policy" in message
    assert cluster.get("pvc", "typo", "-n", NAMESPACE)["status"]["phase"] == "Pending"
    cluster.kubectl("delete", "pvc", "typo", "-n", NAMESPACE, "--wait=false")
