"""A Cairn cluster the way users meet it: claims through the real external-provisioner and PV binder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cairn import DRIVER_NAME

from .components import Driver, running_driver
from .kube_components import start_controller_manager, start_csi_provisioner
from .kubelet_standin import register_csi_node
from .process import ManagedProcess
from .waiting import wait_until

if TYPE_CHECKING:
    from .bed import TestBed


@dataclass
class Cluster:
    bed: TestBed
    driver: Driver
    provisioner: ManagedProcess
    namespace: str

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

    def storage_class(self, name: str, parameters: dict[str, str], binding: str = "Immediate") -> dict:
        return {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": DRIVER_NAME,
            "parameters": parameters,
            "volumeBindingMode": binding,
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": True,
        }

    def claim(self, name: str, storage_class_name: str, size: str, **spec: Any) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class_name,
                "resources": {"requests": {"storage": size}},
                **spec,
            },
        }


@contextmanager
def running_cluster(
    bed: TestBed, name: str, namespace: str, *, disks: int = 1, disk_size: int = 512 * 1024 * 1024
) -> Iterator[Cluster]:
    """One node with its agent, the controller, external-provisioner and the PV binder."""
    cp = bed.control_plane
    with running_driver(bed, name, disks=disks, disk_size=disk_size) as driver:
        from kubernetes import client

        register_csi_node(client.StorageV1Api(cp.api_client()), driver.node.name)
        manager = start_controller_manager(driver.workdir, bed.run_id, cp.kubeconfigs["admin"])
        provisioner = start_csi_provisioner(
            driver.workdir, bed.run_id, cp.kubeconfigs["cairn-controller"], driver.controller_socket
        )
        cp.kubectl("create", "namespace", namespace)
        try:
            yield Cluster(bed, driver, provisioner, namespace)
        finally:
            cp.kubectl("delete", "namespace", namespace, "--wait=false")
            cp.kubectl("delete", "csinode", driver.node.name, "--ignore-not-found")
            provisioner.stop()
            manager.stop()
