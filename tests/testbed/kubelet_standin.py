"""The kubelet stand-in: a test playing the kubelet's side of CSI against a node agent process.

The user's path runs on real kubelets (tests/e2e/test_user_path.py, `make conformance`, `make demo`).
This stand-in remains only for tests that need what no kubelet does on demand, and each says which:
writing behind the agent's back into a staged volume at exact moments (a commit marker before its
files, a file changed after its commit), killing the agent with `kill -9` in the middle of an
upload, deleting a local copy or corrupting a replica under the agent, unmounting a volume behind
the agent's back, or staging onto a device that already holds someone's filesystem.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cairn import DRIVER_NAME, TOPOLOGY_KEY
from cairn.csi.proto import csi_pb2, csi_pb2_grpc

from .components import Driver, mount_capability


@dataclass
class KubeletStandIn:
    """Stages and publishes volumes through one node agent's socket, as a kubelet would."""

    node_socket: Path
    workdir: Path
    staged: list[tuple[str, Path]] = field(default_factory=list)
    published: list[tuple[str, Path]] = field(default_factory=list)

    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(grpc.insecure_channel(f"unix://{self.node_socket}"))

    def stage(
        self,
        volume_id: str,
        *,
        path: Path | None = None,
        capability: csi_pb2.VolumeCapability | None = None,
    ) -> Path:
        staging = path or self.workdir / "kubelet-standin" / "staging" / volume_id
        staging.mkdir(parents=True, exist_ok=True)
        self.node().NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                volume_capability=capability or mount_capability(),
            ),
            timeout=60,
        )
        self.staged.append((volume_id, staging))
        return staging

    def publish(self, volume_id: str, staging: Path, *, readonly: bool = False) -> Path:
        target = self.workdir / "kubelet-standin" / "pods" / volume_id
        self.node().NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=mount_capability(),
                readonly=readonly,
            ),
            timeout=60,
        )
        self.published.append((volume_id, target))
        return target

    def unpublish(self, volume_id: str, target: Path) -> None:
        self.node().NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)), timeout=60
        )
        self.published.remove((volume_id, target))

    def unstage(self, volume_id: str, staging: Path) -> None:
        self.node().NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging)),
            timeout=60,
        )
        self.staged.remove((volume_id, staging))

    def release_all(self) -> None:
        """Unpublish, then unstage, everything this stand-in staged, newest first."""
        for volume_id, target in reversed(list(self.published)):
            self.unpublish(volume_id, target)
        for volume_id, staging in reversed(list(self.staged)):
            self._unstage_as_kubelet_would(volume_id, staging)

    def _unstage_as_kubelet_would(self, volume_id: str, staging: Path, patience: float = 60.0) -> None:
        """Retried while the unmount finds the volume busy, as kubelet retries a failed NodeUnstage:
        the agent may be finishing its retention or hashing in the volume as the test ends."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.unstage(volume_id, staging)
                return
            except grpc.RpcError as error:
                if "busy" not in (error.details() or "") or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def register_csi_node(storage_v1_api: Any, node_name: str) -> None:
    """The CSINode a kubelet publishes once the registrar registered Cairn's node plugin."""
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSINode",
        "metadata": {"name": node_name},
        "spec": {"drivers": [{"name": DRIVER_NAME, "nodeID": node_name, "topologyKeys": [TOPOLOGY_KEY]}]},
    }
    storage_v1_api.create_csi_node(body)


@contextmanager
def standin_claim_volume(
    driver: Driver,
    name: str,
    size: int,
    *,
    pvc: str,
    namespace: str,
    policy: str | None = None,
    pool: str | None = None,
) -> Iterator[tuple[str, Path]]:
    """A volume created as external-provisioner would for a claim (the parameters it adds with
    --extra-create-metadata, plus the class's checkpoint policy) and staged by the stand-in;
    unstaged and deleted after. For pool memory, also published: the path given is the pod's."""
    parameters = {"csi.storage.k8s.io/pvc/name": pvc, "csi.storage.k8s.io/pvc/namespace": namespace}
    if policy:
        parameters["cairn.dev/checkpoint-policy"] = policy
    if pool:
        parameters["cairn.dev/pool"] = pool
    capability = mount_capability("" if pool == "memory" else "ext4")
    created = driver.controller_stub().CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[capability],
            parameters=parameters,
        ),
        timeout=60,
    )
    volume = created.volume.volume_id
    kubelet = KubeletStandIn(driver.node_socket, driver.workdir)
    staging = kubelet.stage(volume, capability=capability)
    if pool == "memory":
        # Nothing is mounted at a memory volume's staging path: the pod's bind is where it shows.
        staging = kubelet.publish(volume, staging)
    try:
        yield volume, staging
    finally:
        kubelet.release_all()
        driver.controller_stub().DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=60)


@contextmanager
def standin_pod_mount(driver: Driver, volume_id: str, capability: csi_pb2.VolumeCapability) -> Iterator[Path]:
    """What the kubelet does for one pod using the volume: stage, publish; unpublish, unstage after."""
    kubelet = KubeletStandIn(driver.node_socket, driver.workdir)
    staging = kubelet.stage(volume_id, capability=capability)
    try:
        yield kubelet.publish(volume_id, staging)
    finally:
        kubelet.release_all()
