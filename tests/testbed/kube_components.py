"""Upstream Kubernetes components the bed runs in front of Cairn: the real CO side of CSI.

kube-controller-manager binds PVCs to the PVs external-provisioner creates; csi-provisioner
turns PVCs into CreateVolume calls. (A kubelet's own part is in kubelet.py, or, where a test needs
a fault no kubelet produces, in kubelet_standin.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .process import ManagedProcess
from .tools import tool_path

VOLUME_CONTROLLERS = "persistentvolume-binder,persistentvolume-expander,pvc-protection,pv-protection"
# What a cluster with kubelets needs: every default controller (namespaces, service accounts and the
# root CA ConfigMap pods mount, Deployments and DaemonSets, attach-detach, node lifecycle...), but
# the ones that need a cloud or pod CIDR allocation the bed does not do (its CNI config has them).
ALL_CONTROLLERS = (
    "*,-node-ipam-controller,-node-route-controller,-service-lb-controller,-cloud-node-lifecycle-controller"
)


def start_controller_manager(
    workdir: Path,
    run_id: str,
    kubeconfig: Path,
    *,
    controllers: str = VOLUME_CONTROLLERS,
    extra_args: tuple[str, ...] = (),
) -> ManagedProcess:
    process = ManagedProcess(
        "kube-controller-manager",
        [
            str(tool_path("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={controllers}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
            *extra_args,
        ],
        run_id=run_id,
        log_dir=workdir / "logs",
    )
    process.wait_until(
        lambda: (
            "Starting persistent volume controller" in process.log_tail(200)
            or "Started controller" in process.log_tail(200)
        ),
        60,
        "started",
    )
    return process


def open_to_the_scheduler(control_plane: Any, namespace: str, node_names: list[str]) -> None:
    """What a kube-controller-manager would do before pods can be scheduled onto simulated nodes.

    None runs on this bed: nothing makes the namespace's default ServiceAccount, and nothing lifts
    the not-ready taint that admission (TaintNodesByCondition) puts on every new Node, which would
    keep the scheduler off these Ready nodes.
    """
    control_plane.kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
    for name in node_names:
        control_plane.kubectl("taint", "node", name, "node.kubernetes.io/not-ready:NoSchedule-", check=False)


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
    process.wait_until(lambda: "Starting Kubernetes Scheduler" in process.log_tail(200), 60, "started")
    return process


def start_csi_provisioner(
    workdir: Path, run_id: str, kubeconfig: Path, controller_socket: Path, extra_args: tuple[str, ...] = ()
) -> ManagedProcess:
    process = ManagedProcess(
        "csi-provisioner",
        [
            str(tool_path("csi-provisioner")),
            f"--csi-address={controller_socket}",
            f"--kubeconfig={kubeconfig}",
            "--leader-election=false",
            "--extra-create-metadata",
            "--strict-topology",
            "--timeout=120s",
            "--retry-interval-start=1s",
            "--retry-interval-max=10s",
            "--v=3",
            *extra_args,
        ],
        run_id=run_id,
        log_dir=workdir / "logs",
    )
    process.wait_until(lambda: "Started provisioner controller" in process.log_tail(400), 60, "started")
    return process
