"""PVCs through the real external-provisioner and PV binder: the path users take."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cairn import DRIVER_NAME, TOPOLOGY_KEY
from tests.testbed.bed import TestBed
from tests.testbed.cluster import Cluster, running_cluster

MiB = 1024 * 1024
NAMESPACE = "team-a"


@pytest.fixture(scope="module")
def cluster(bed: TestBed) -> Iterator[Cluster]:
    with running_cluster(bed, "provisioner", NAMESPACE) as running:
        yield running


def test_a_pvc_is_provisioned_bound_and_released(cluster: Cluster) -> None:
    cluster.apply(
        cluster.storage_class("cairn-nvme", {"cairn.dev/pool": "nvme", "csi.storage.k8s.io/fstype": "ext4"})
    )
    cluster.apply(cluster.claim("checkpoints", "cairn-nvme", "64Mi"))
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
    cluster.apply(
        cluster.storage_class("cairn-typo", {"cairn.dev/pool": "nvme", "cairn.dev/checkpoint-polcy": "x"})
    )
    cluster.apply(cluster.claim("typo", "cairn-typo", "16Mi"))

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


def test_populate_annotations_on_an_ordinary_claim_are_refused_with_an_event(cluster: Cluster) -> None:
    """A tenant cannot name another namespace's data, or record into it, by annotating its claim."""
    other = "team-b"
    cluster.kubectl("create", "namespace", other)
    cluster.apply(cluster.storage_class("cairn-plain", {"cairn.dev/pool": "nvme"}))
    hostile = cluster.claim("thief", "cairn-plain", "16Mi")
    hostile["metadata"]["namespace"] = other
    hostile["metadata"]["annotations"] = {
        "cairn.dev/populate-from": f"Checkpoint/{NAMESPACE}/step-7",
        "cairn.dev/populate-for": f"{NAMESPACE}/train",
    }
    cluster.apply(hostile)

    def reasons() -> dict[str, str]:
        events = cluster.get("events", "-n", other, "--field-selector", "involvedObject.name=thief")["items"]
        return {e["reason"]: e["message"] for e in events}

    cluster.wait_for(
        "a refusal event", lambda: {"PopulateAnnotationRefused", "ProvisioningFailed"} <= set(reasons())
    )
    assert "only on its own claims in namespace cairn-system" in reasons()["PopulateAnnotationRefused"]
    assert "InvalidArgument" in reasons()["ProvisioningFailed"]
    volumes = cluster.get("localvolumes")["items"]
    assert not [v for v in volumes if v["spec"].get("populateFrom") or v["spec"].get("pvcName") == "train"]
    assert cluster.get("pvc", "thief", "-n", other)["status"]["phase"] == "Pending"
    cluster.kubectl("delete", "namespace", other, "--wait=false")
