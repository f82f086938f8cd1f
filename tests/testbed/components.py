"""Cairn's own components started on the test bed, each with its ServiceAccount's kubeconfig."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cairn.csi.proto import csi_pb2, csi_pb2_grpc

from .nodes import SimulatedNode
from .process import ManagedProcess

if TYPE_CHECKING:
    from .bed import TestBed


PEER_RESTORE_PORT = 9750
METRICS_PORT = 9751
P2P_PORT = 9752
"""Every simulated node has its own network namespace, so all can use the same ports."""


def mount_capability(fs_type: str = "ext4") -> csi_pb2.VolumeCapability:
    """The capability kubelet sends for a ReadWriteOnce filesystem volume."""
    mode = csi_pb2.VolumeCapability.AccessMode
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type),
        access_mode=mode(mode=mode.SINGLE_NODE_WRITER),
    )


def block_capability() -> csi_pb2.VolumeCapability:
    """The capability kubelet sends for a ReadWriteOnce raw block volume."""
    mode = csi_pb2.VolumeCapability.AccessMode
    return csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=mode(mode=mode.SINGLE_NODE_WRITER)
    )


def wait_for_csi(socket: Path, process: ManagedProcess, timeout: float = 60.0) -> None:
    """Wait until the component's Identity service reports ready through its socket."""

    def probe_ready() -> bool:
        if not socket.exists():
            return False
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            response = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=2)
            return response.ready.value

    process.wait_until(probe_ready, timeout, "ready on its CSI socket")


def start_controller(
    workdir: Path,
    run_id: str,
    kubeconfig: Path,
    *,
    name: str = "cairn-controller",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, Path]:
    socket = workdir / "sockets" / f"{name}.sock"
    process = ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "cairn.controller.main",
            "--endpoint",
            f"unix://{socket}",
            "--kubeconfig",
            str(kubeconfig),
            *extra_args,
        ],
        run_id=run_id,
        log_dir=workdir / "logs",
        env=env,
    )
    wait_for_csi(socket, process)
    return process, socket


def node_agent_args(
    node: SimulatedNode,
    *,
    claim_classes: str = "nvme",
    class_overrides: tuple[str, ...] = ("/dev/loop*=nvme",),
) -> list[str]:
    """Discovery settings for a simulated node: its own loop disks are its disks."""
    prefix = f"{node.cluster.disks.run_dir / node.name}-"
    args = [
        "--allow-loop-devices",
        f"--loop-backing-prefix={prefix}",
        f"--claim-classes={claim_classes}",
        f"--min-disk-bytes={16 * 1024 * 1024}",
        "--rescan-interval=3",
        f"--replica-store-bytes={48 * 1024 * 1024}",
    ]
    return args + [f"--class-override={o}" for o in class_overrides]


def start_node_agent(
    workdir: Path,
    run_id: str,
    kubeconfig: Path,
    node: SimulatedNode,
    *,
    extra_args: tuple[str, ...] = (),
    discovery: list[str] | None = None,
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, Path]:
    """Run cairn-node-agent inside the node's network namespace, as root, with its own LVM state."""
    socket = workdir / "sockets" / f"{node.name}.sock"
    lvm_dir = workdir / "lvm" / node.name
    lvm_dir.mkdir(parents=True, exist_ok=True)
    argv = node.command(
        [
            sys.executable,
            "-m",
            "cairn.node_agent.main",
            "--node-name",
            node.name,
            "--endpoint",
            f"unix://{socket}",
            "--kubeconfig",
            str(kubeconfig),
            "--lvm-system-dir",
            str(lvm_dir),
            "--state-dir",
            str(workdir / "state" / node.name),
            "--peer-restore-address",
            f"{node.ip}:{PEER_RESTORE_PORT}",
            "--metrics-address",
            f"{node.ip}:{METRICS_PORT}",
            "--p2p-address",
            f"{node.ip}:{P2P_PORT}",
            *(discovery if discovery is not None else node_agent_args(node)),
            *extra_args,
        ]
    )
    process = ManagedProcess(
        name or f"node-agent-{node.name}", argv, run_id=run_id, log_dir=workdir / "logs", env=env
    )
    wait_for_csi(socket, process)
    return process, socket


@dataclass
class Driver:
    """A running Cairn driver on the bed: one node with its agent, and the controller."""

    node: SimulatedNode
    agent: ManagedProcess
    controller: ManagedProcess
    node_socket: Path
    controller_socket: Path
    workdir: Path

    def controller_stub(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(grpc.insecure_channel(f"unix://{self.controller_socket}"))

    def node_stub(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(grpc.insecure_channel(f"unix://{self.node_socket}"))


@contextmanager
def running_driver(
    bed: TestBed, name: str, *, disks: int, disk_size: int, agent_args: tuple[str, ...] = ()
) -> Iterator[Driver]:
    """A fresh node with `disks` loop disks in its nvme pool, its agent (given `agent_args` beside
    the bed's own), and a controller."""
    workdir = bed.workdir / name
    (node,) = bed.add_nodes(1, disks=disks, disk_size=disk_size)
    kubeconfigs = bed.control_plane.kubeconfigs
    agent = controller = driver = None
    try:
        agent, node_socket = start_node_agent(
            workdir, bed.run_id, kubeconfigs["cairn-node-agent"], node, extra_args=agent_args
        )
        controller, controller_socket = start_controller(
            workdir, bed.run_id, kubeconfigs["cairn-controller"], name=f"controller-{name}"
        )
        driver = Driver(node, agent, controller, node_socket, controller_socket, workdir)
        yield driver
    finally:
        # A test may have restarted the agent: stop whichever process the driver holds now.
        if driver is not None:
            agent, controller = driver.agent, driver.controller
        for process in (controller, agent):
            if process is not None:
                process.stop()
                print(f"\n{process.name} log tail:\n{process.log_tail(10)}")
        bed.remove_nodes([node])
