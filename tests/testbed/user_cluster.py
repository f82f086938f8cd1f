"""Cairn as users run it: kubelet nodes, the chart installed with `helm install`, pods using claims.

The bed is a second one beside the main test bed (its own apiserver, network and S3 server), so
the chart's provisioner and controller never meet the processes other tests start by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn import DRIVER_NAME
from tools import build_images

from .bed import TestBed
from .chart import NAMESPACE, HelmRelease, bed_values, merge
from .kube_components import ALL_CONTROLLERS, start_controller_manager, start_scheduler
from .nodes import MiB, SimulatedNode
from .process import ManagedProcess
from .waiting import wait_until

BUSYBOX = "busybox"
"""The workload image of the bed's pods (Debian's busybox-static, imported on every node)."""


@dataclass
class UserCluster:
    bed: TestBed
    nodes: list[SimulatedNode]
    images: dict[str, str]
    release: HelmRelease | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    # -- kubectl ---------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None):
        return self.bed.control_plane.kubectl(*args, check=check, input_text=input_text)

    def apply(self, *manifests: dict[str, Any]) -> None:
        for manifest in manifests:
            self.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exec(self, pod: str, *command: str, namespace: str = "default", check: bool = True) -> str:
        return self.kubectl("exec", "-n", namespace, pod, "--", *command, check=check).stdout

    # -- manifests -------------------------------------------------------------------------

    def storage_class(self, name: str, *, binding: str = "WaitForFirstConsumer", **parameters: str) -> dict:
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

    def claim(
        self, name: str, storage_class: str, size: str, *, namespace: str = "default", **spec: Any
    ) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "resources": {"requests": {"storage": size}},
                **spec,
            },
        }

    def pod(
        self,
        name: str,
        script: str,
        *,
        claim: str | None = None,
        mount_path: str = "/data",
        block: bool = False,
        node: str | None = None,
        namespace: str = "default",
        security_context: dict[str, Any] | None = None,
    ) -> dict:
        """A busybox pod running `script`; with a claim, mounted at `mount_path` (or as a device)."""
        container: dict[str, Any] = {
            "name": "main",
            "image": self.images[BUSYBOX],
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", script],
        }
        spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 1}
        if claim is not None:
            spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
            if block:
                container["volumeDevices"] = [{"name": "data", "devicePath": mount_path}]
            else:
                container["volumeMounts"] = [{"name": "data", "mountPath": mount_path}]
        if node is not None:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        if security_context is not None:
            spec["securityContext"] = security_context
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    # -- waiting ---------------------------------------------------------------------------

    def wait_pod(
        self, name: str, phase: str = "Running", *, namespace: str = "default", timeout: float = 120
    ):
        """Wait for the pod to reach `phase` (Running means every container is ready)."""
        last: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal last
            last = self.get("pod", name, "-n", namespace)
            status = last.get("status", {})
            if status.get("phase") == "Failed" and phase != "Failed":
                raise AssertionError(f"pod {name} failed: {json.dumps(status)[:2000]}")
            if phase == "Running":
                statuses = status.get("containerStatuses", [])
                return (
                    status.get("phase") == "Running" and bool(statuses) and all(s["ready"] for s in statuses)
                )
            return status.get("phase") == phase

        wait_until(
            reached,
            timeout,
            f"pod {name} {phase}",
            interval=0.5,
            context=lambda: self._pod_context(name, namespace),
        )
        return last

    def _pod_context(self, name: str, namespace: str) -> str:
        events = self.kubectl(
            "get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}", check=False
        ).stdout
        return f"events of {name}:\n{events}\n{self.release.describe_pods() if self.release else ''}"

    def delete(self, kind: str, name: str, *, namespace: str = "default", wait: bool = True) -> None:
        self.kubectl(
            "delete", kind, name, "-n", namespace, "--ignore-not-found", f"--wait={str(wait).lower()}"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def remove_workloads(self, timeout: float = 180) -> None:
        """Delete every pod, claim and Dataset users made, and wait until their volumes are gone.

        Cairn's agents then unmount and remove every LV themselves, as on a cluster being emptied;
        the bed's teardown only has to stop processes.
        """
        system = {NAMESPACE, "kube-system", "kube-public", "kube-node-lease"}
        namespaces = [n["metadata"]["name"] for n in self.get("namespaces")["items"]]
        for namespace in (n for n in namespaces if n not in system):
            for kind in ("pods", "datasets", "pvc"):
                self.kubectl("delete", kind, "--all", "-n", namespace, "--wait=false", check=False)
        wait_until(
            lambda: not self.get("pv")["items"] and not self.get("localvolumes")["items"],
            timeout,
            "every PersistentVolume and LocalVolume to be gone",
            interval=1.0,
            context=lambda: self.kubectl("get", "pods,pvc,pv,localvolumes", "-A", check=False).stdout,
        )

    def stop(self) -> None:
        errors = []
        if self.release is not None:
            try:
                self.remove_workloads()
            except Exception as error:  # still uninstall and tear the bed down
                errors.append(f"removing workloads: {error}")
            try:
                self.release.uninstall()
            except Exception as error:  # still tear the bed down
                errors.append(f"helm uninstall: {error}")
        for process in reversed(self.processes):
            process.stop()
        self.bed.stop()
        if errors:
            raise RuntimeError("; ".join(errors))


def start_user_cluster(
    run_id: str,
    *,
    nodes: int = 2,
    disks: int = 1,
    disk_size: int = 1024 * MiB,
    values: dict[str, Any] | None = None,
    instance: str = "k",
    workdir: Path | None = None,
) -> UserCluster:
    """Kubelet nodes with loop disks, kube-controller-manager and kube-scheduler, and the chart."""
    built = build_images.ensure_named()
    images = {name: refs[0] for name, refs in built.items()}
    bed = TestBed(run_id, workdir=workdir, instance=instance)
    bed.node_images = sorted({build_images.IMAGES[name].archive for name in built})
    bed.sandbox_image = images["pause"]
    bed.start(with_s3=True, install_cairn=False)
    cluster = UserCluster(bed, [], images)
    try:
        cp = bed.control_plane
        assert bed.workdir is not None
        cluster.processes.append(
            start_controller_manager(
                bed.workdir,
                run_id,
                cp.kubeconfigs["admin"],
                controllers=ALL_CONTROLLERS,
                extra_args=(
                    f"--root-ca-file={cp.pki.ca.cert}",
                    f"--service-account-private-key-file={cp.sa_keys.key}",
                ),
            )
        )
        cluster.processes.append(start_scheduler(bed.workdir, run_id, cp.kubeconfigs["admin"]))
        started = time.monotonic()
        cluster.nodes = bed.add_nodes(nodes, disks=disks, disk_size=disk_size, kubelet=True)
        bed.timings["kubelet nodes"] = time.monotonic() - started
        cluster.release = HelmRelease(bed, merge(bed_values(bed, images), values or {}))
        bed.timings["helm install"] = cluster.release.install()
    except BaseException:
        cluster.stop()
        raise
    return cluster


__all__ = ["BUSYBOX", "NAMESPACE", "UserCluster", "start_user_cluster"]
