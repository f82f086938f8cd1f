"""The whole test bed in one object: cluster network, control plane, S3 server and nodes.

Bring-up order matters: the bridge first, because the apiserver and the S3 server listen on
its gateway address so that node agents inside their namespaces can reach them.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import ControlPlane
from .kubelet import HostSysctls, KubeletNode, pod_subnet_for
from .network import free_subnet
from .nodes import MiB, SimulatedCluster, SimulatedNode, register_node_object, unregister_node_object
from .s3 import S3Server


@dataclass
class TestBed:
    __test__ = False  # a fixture, not a test class
    run_id: str
    workdir: Path | None = None
    # One letter telling this bed's network apart from another bed's in the same run.
    instance: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # Image archives every kubelet node's containerd imports, and the pod sandbox image among them.
    node_images: list[Path] = field(default_factory=list)
    sandbox_image: str = ""
    kubelets: dict[str, KubeletNode] = field(default_factory=dict)
    host_sysctls: HostSysctls | None = None

    def __post_init__(self) -> None:
        # The run id in the path lets the leak check tell this run's loops and mounts from others'.
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-bed-", dir="/var/tmp"))

    def start(self, *, with_s3: bool = True, install_cairn: bool = True) -> TestBed:
        self.cluster = SimulatedCluster(
            self.run_id, run_dir=self.workdir / "nodes", subnet=free_subnet(), instance=self.instance
        )
        self.control_plane = ControlPlane(
            self.workdir / "control-plane", self.run_id, install_cairn=install_cairn
        )
        self.s3: S3Server | None = None
        self._names = itertools.count()
        try:
            self._timed("network", self.cluster.network.setup)
            self.control_plane.address = self.cluster.gateway
            self._timed("control plane", self.control_plane.start)
            if with_s3:
                self.s3 = S3Server(self.workdir / "s3", self.run_id, address=self.cluster.gateway)
                self._timed("s3", self.s3.start)
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, what: str, step) -> None:
        started = time.monotonic()
        step()
        self.timings[what] = time.monotonic() - started

    def add_nodes(
        self, count: int, *, disks: int = 0, disk_size: int = 64 * MiB, kubelet: bool = False
    ) -> list[SimulatedNode]:
        """New simulated nodes with Node objects; names are unique for the whole run.

        With `kubelet`, each node runs a real kubelet, containerd and kube-proxy (`kubelet(node)`
        gives them), and the kubelet registers the Node object itself.
        """
        core = self.core_v1()
        nodes = []
        for _ in range(count):
            node = self.cluster.add_node(f"node{next(self._names)}", disks=disks, disk_size=disk_size)
            nodes.append(node)
            if kubelet:
                self._start_kubelet(node)
            else:
                register_node_object(core, node)
        return nodes

    def _start_kubelet(self, node: SimulatedNode) -> None:
        if not self.sandbox_image:
            raise RuntimeError("kubelet nodes need node_images and a sandbox_image set on the bed first")
        if self.host_sysctls is None:
            self.host_sysctls = HostSysctls()
        assert self.workdir is not None
        runtime = KubeletNode(
            node,
            self.control_plane,
            self.workdir / "kubelet-nodes" / node.name,
            pod_subnet_for(node.ip),
            images=self.node_images,
            sandbox_image=self.sandbox_image,
        )
        self.kubelets[node.name] = runtime
        started = time.monotonic()
        runtime.start()
        self.timings[f"kubelet {node.name}"] = time.monotonic() - started

    def kubelet(self, node: SimulatedNode) -> KubeletNode:
        return self.kubelets[node.name]

    def remove_nodes(self, nodes: list[SimulatedNode]) -> None:
        core = self.core_v1()
        for node in nodes:
            runtime = self.kubelets.pop(node.name, None)
            if runtime is not None:
                runtime.stop()
            unregister_node_object(core, node.name)
            # What its agent reported goes with the machine, so later tests never place volumes there.
            self.control_plane.kubectl(
                "delete", "storagenode", node.name, "--ignore-not-found", "--wait=false"
            )
            # So do its volumes: nothing is left to remove their LVs, and later tests list them.
            selector = f"cairn.dev/node={node.name}"
            for volume in self.control_plane.get_json("localvolumes", "-l", selector).get("items", []):
                name = volume["metadata"]["name"]
                release = '{"metadata":{"finalizers":null}}'
                self.control_plane.kubectl(
                    "patch", "localvolume", name, "--type=merge", "-p", release, check=False
                )
                self.control_plane.kubectl("delete", "localvolume", name, "--wait=false", check=False)
            self.cluster.remove_node(node)

    def _stop_kubelets(self) -> None:
        errors = []
        for name, runtime in list(self.kubelets.items()):
            try:
                runtime.stop()
            except Exception as error:  # stop every node, then report
                errors.append(f"{name}: {error}")
            del self.kubelets[name]
        if errors:
            raise RuntimeError("; ".join(errors))

    def core_v1(self, identity: str = "admin"):  # -> kubernetes.client.CoreV1Api
        from kubernetes import client

        return client.CoreV1Api(self.control_plane.api_client(identity))

    def stop(self) -> None:
        errors: list[str] = []
        for what, step in (
            ("kubelets", self._stop_kubelets),
            ("s3", lambda: self.s3 and self.s3.stop()),
            ("control plane", self.control_plane.stop),
            ("nodes", self.cluster.close),
            ("host sysctls", lambda: self.host_sysctls and self.host_sysctls.restore()),
        ):
            try:
                step()
            except Exception as exc:  # keep tearing down; report every failure at the end
                errors.append(f"{what}: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("test bed teardown incomplete: " + "; ".join(errors))
