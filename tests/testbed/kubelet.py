"""Kubelet nodes: a simulated node that runs a real kubelet, containerd and kube-proxy.

A kubelet node is a machine of its own as far as the kubelet can tell:

- its **network namespace** (the simulated node's), so it has its own InternalIP, iptables and
  pod network (a CNI bridge inside the namespace, pods masqueraded behind the node's address);
- its **mount namespace**, a slave of the host's, in which the fixed paths the kubelet and its
  runtime use whatever their flags say (`/var/lib/kubelet`, `/var/lib/containerd`, `/run`,
  `/var/log`, `/etc/lvm`) are the node's own directories. Mounts the node makes (the kubelet's,
  the CSI driver's) stay in the node; host mounts (new loop disks) reach it;
- its **PID namespace**, whose init (testbed-pause) takes every process of the node along when it
  ends, pods included;
- its **cgroup root** in every cgroup-v1 hierarchy (and the unified one), so two kubelets never
  clean up each other's pods;
- its loop disks (the simulated node's) and its `system:node:<name>` credentials.

Kernel-wide settings the kubelet changes (a few sysctls) are recorded by `HostSysctls` before
the first kubelet starts and restored after the last one stops; the leak check compares them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .leaks import KUBELET_SYSCTLS, cgroup_hierarchies, process_env, read_sysctl, run_tag
from .process import ManagedProcess
from .tools import tool_path
from .waiting import wait_until

if TYPE_CHECKING:
    from .controlplane import ControlPlane
    from .nodes import SimulatedNode

POD_NETWORK = "10.214.0.0/16"
"""Pods of node i get 10.214.<i's host number>.0/24; the range lives only inside node namespaces."""
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# Paths every node has privately: (path inside the node, directory under the node's root).
NODE_PRIVATE_DIRS = (("/var/lib", "var-lib"), ("/var/log", "var-log"), ("/etc/lvm", "etc-lvm"))
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
KUBELET_PORT = 10250


def pod_subnet_for(node_ip: str) -> str:
    host_number = int(node_ip.rsplit(".", 1)[1])
    return f"10.214.{host_number}.0/24"


class HostSysctls:
    """Values of the host sysctls a kubelet changes, read before any kubelet ran."""

    def __init__(self, keys: Sequence[str] = KUBELET_SYSCTLS) -> None:
        self.saved = {key: read_sysctl(key) for key in keys}

    def restore(self) -> None:
        for key, value in self.saved.items():
            if read_sysctl(key) != value:
                Path("/proc/sys", key).write_text(value + "\n")


def cgroup_processes(root: Path) -> set[int]:
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(line) for line in procs.read_text().split())
    return pids


def remove_cgroup_tree(root: Path, timeout: float = 20.0) -> None:
    """Kill whatever still runs in a cgroup tree, then remove it bottom-up."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in cgroup_processes(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(FileNotFoundError, OSError):
            root.rmdir()
        if not root.exists():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroup {root} still holds {sorted(cgroup_processes(root))}")
        time.sleep(0.1)


@dataclass
class KubeletNode:
    """The node software of one simulated node. `start()` brings it to Ready."""

    node: SimulatedNode
    control_plane: ControlPlane
    root: Path
    pod_subnet: str
    images: Sequence[Path] = ()
    sandbox_image: str = ""
    holder: subprocess.Popen[Any] | None = None
    # The node's init: PID 1 of its PID namespace, inside its mount namespace.
    init_pid: int = 0
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def cgroup_root(self) -> str:
        # Named after the run (the leak check finds it) and the node's namespace (unique in the run).
        return f"/cairn-{run_tag(self.node.run_id)}-{self.node.namespace.removeprefix(self.node.run_id)[1:]}"

    # -- running things inside the node ------------------------------------------------------

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """argv wrapped to run in the node's network and mount namespaces."""
        assert self.init_pid, "the node's namespaces are not up"
        return [
            "nsenter",
            f"--net=/run/netns/{self.node.namespace}",
            f"--mount=/proc/{self.init_pid}/ns/mnt",
            f"--pid=/proc/{self.init_pid}/ns/pid",
            "--",
            *map(str, argv),
        ]

    def run(self, argv: Sequence[str | os.PathLike[str]], *, timeout: float = 120, check: bool = True):
        result = subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=process_env(self.node.run_id),
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"on {self.name}: {' '.join(map(str, argv))} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def _start(self, name: str, argv: Sequence[str | os.PathLike[str]]) -> ManagedProcess:
        process = ManagedProcess(
            f"{self.name}-{name}",
            self.command(argv),
            run_id=self.node.run_id,
            log_dir=self.root / "logs",
            # The shims containerd starts find containerd-shim-runc-v2 on PATH.
            env={**os.environ, "PATH": f"{tool_path('containerd').parent}:{os.environ.get('PATH', '')}"},
        )
        self.processes[name] = process
        return process

    # -- bring-up ----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> KubeletNode:
        self._make_namespaces()
        self._make_cgroups()
        self._write_pki()
        self._start_containerd()
        self._import_images()
        self.start_kubelet()
        self._wait_ready(timeout)
        self._start_kube_proxy()
        return self

    def _make_namespaces(self) -> None:
        """The node's init process, in new mount and PID namespaces set up with the node's own paths.

        Its own PID namespace makes /proc/1 the node's init, so what a pod with hostPID or the host's
        /proc sees is this node, and killing the init ends every process the node started, pods
        included. The init is testbed-pause, which reaps the orphans (shims) that land on it.
        """
        for _inside, outside in NODE_PRIVATE_DIRS:
            (self.root / outside).mkdir(parents=True, exist_ok=True)
        binds = "\n".join(
            f"mount --bind {self.root / outside} {inside}" for inside, outside in NODE_PRIVATE_DIRS
        )
        script = f"""set -e
mount -t tmpfs -o mode=0755,size=512m cairn-node-run /run
mkdir -p /run/lock /run/netns
{binds}
echo ready
exec {tool_path("testbed-pause")}
"""
        self.holder = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.node.namespace}",
                "--",
                "unshare",
                "--mount",
                "--propagation=slave",
                "--pid",
                "--fork",
                "--mount-proc",
                "--",
                "sh",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=process_env(self.node.run_id),
            start_new_session=True,
            text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            self.holder.wait(timeout=5)
            assert self.holder.stderr is not None
            raise RuntimeError(f"{self.name}: node namespace setup failed: {self.holder.stderr.read()}")
        # unshare --fork waits for its child, the node's PID 1.
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text().split()
        (self.init_pid,) = map(int, children)

    def _make_cgroups(self) -> None:
        for hierarchy in cgroup_hierarchies():
            path = hierarchy / self.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            # A new cpuset is empty, and nothing can join it until it has CPUs and memory nodes.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists():
                    (path / knob).write_text((hierarchy / knob).read_text())

    def _write_pki(self) -> None:
        pki = self.control_plane.pki
        self.client_cert = pki.issue(f"kubelet-{self.name}", f"/O=system:nodes/CN=system:node:{self.name}")
        self.serving_cert = pki.issue(
            f"kubelet-serving-{self.name}",
            f"/CN={self.name}",
            server_sans=[f"IP:{self.node.ip}", f"DNS:{self.name}"],
        )
        self.kubeconfig = self.control_plane.write_kubeconfig(
            f"node-{self.name}",
            {"client-certificate": str(self.client_cert.cert), "client-key": str(self.client_cert.key)},
        )

    def _start_containerd(self) -> None:
        config = self.root / "containerd.toml"
        cni_conf = self.root / "cni-conf"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-cairn-pods.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        runc = shutil.which("runc")
        if runc is None:
            raise FileNotFoundError("runc is missing: tools/install_system_deps.sh installs it")
        config.write_text(
            f"""version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
# Snapshotters this kernel cannot serve only add noise to the log.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  # No registry is reachable: every image is imported beforehand.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{self.sandbox_image}"

[plugins.'io.containerd.cri.v1.runtime']
  # This VM withholds CAP_SYS_RESOURCE: without this every runc create fails writing oom_score_adj.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni_conf}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc}"
      SystemdCgroup = false
"""
        )
        process = self._start("containerd", [tool_path("containerd"), "--config", config])
        process.wait_until(lambda: self.ctr("version", check=False).returncode == 0, 60, "serving")

    def ctr(self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 600):
        """The node's containerd, through ctr in the CRI's namespace."""
        return self.run(
            [tool_path("ctr"), "--address", CONTAINERD_SOCKET, "-n", "k8s.io", *args],
            check=check,
            timeout=timeout,
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "cairn-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Pods reach the apiserver and S3 on the cluster bridge as the node's address.
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }

    def _import_images(self) -> None:
        for archive in self.images:
            self.ctr("images", "import", archive)

    def start_kubelet(self) -> ManagedProcess:
        config = self.root / "kubelet.yaml"
        ca = str(self.control_plane.pki.ca.cert)
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # This host mounts cgroup v1 (cgroup2 beside it); kubelet 1.36 refuses v1 by default.
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": self.cgroup_root,
                    "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
                    "address": self.node.ip,
                    "port": KUBELET_PORT,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    "tlsCertFile": str(self.serving_cert.cert),
                    "tlsPrivateKeyFile": str(self.serving_cert.key),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": ca},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDomain": "cluster.local",
                    "failSwapOn": False,
                    # FlexVolume probing would otherwise create /usr/libexec/kubernetes on the host.
                    "volumePluginDir": "/var/lib/kubelet/volume-plugins",
                    "imageGCHighThresholdPercent": 100,
                    # Nodes share the host's disk: evict only when it is really full.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "serializeImagePulls": False,
                    "shutdownGracePeriod": "0s",
                    "nodeStatusReportFrequency": "10s",
                }
            )
        )
        return self._start(
            "kubelet",
            [
                tool_path("kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node.ip}",
                f"--node-labels=kubernetes.io/hostname={self.name}",
                "--v=1",
            ],
        )

    def wait_serving(self, timeout: float = 60) -> None:
        """Until the kubelet answers on its port (exec, logs) and has reported to the apiserver since."""
        import socket

        kubelet = self.processes["kubelet"]
        started = time.time()

        def serving() -> bool:
            with socket.create_connection((self.node.ip, KUBELET_PORT), timeout=1):
                pass
            lease = self.control_plane.kubectl(
                "get", "lease", "-n", "kube-node-lease", self.name, "-o", "jsonpath={.spec.renewTime}"
            ).stdout
            renewed = datetime.strptime(lease, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
            return renewed >= started - 1

        kubelet.wait_until(serving, timeout, "serving and renewing its lease")

    def stop_kubelet(self) -> None:
        process = self.processes.pop("kubelet", None)
        if process is not None:
            process.stop()

    def _wait_ready(self, timeout: float) -> None:
        kubelet = self.processes["kubelet"]

        def ready() -> bool:
            if not kubelet.alive():
                raise RuntimeError(f"kubelet on {self.name} exited:\n{kubelet.log_tail(30)}")
            found = self.control_plane.kubectl("get", "node", self.name, "-o", "json", check=False)
            node = json.loads(found.stdout or "{}")
            conditions = node.get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until(ready, timeout, f"node {self.name} Ready", context=lambda: kubelet.log_tail(20))

    def _start_kube_proxy(self) -> None:
        config = self.root / "kube-proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self.control_plane.kubeconfigs["kube-proxy"])},
                    "mode": "iptables",
                    "hostnameOverride": self.name,
                    "clusterCIDR": POD_NETWORK,
                    "bindAddress": self.node.ip,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    # Conntrack table sizes are kernel-wide: leave the host's alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        self._start("kube-proxy", [tool_path("kube-proxy"), f"--config={config}", "--v=1"])

    # -- teardown ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything the node runs, pods included, and drop its namespaces and cgroups."""
        for name in ("kube-proxy", "kubelet", "containerd"):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop(grace=5)
        # The end of the node's init ends every process in its PID namespace: shims and pods too.
        if self.holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            self.holder.wait(timeout=10)
            for pipe in (self.holder.stdout, self.holder.stderr):
                if pipe is not None:
                    pipe.close()
            self.holder = None
            self.init_pid = 0
        errors: list[str] = []
        for hierarchy in cgroup_hierarchies():
            try:
                remove_cgroup_tree(hierarchy / self.cgroup_root.lstrip("/"))
            except RuntimeError as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError(f"{self.name} teardown incomplete: " + "; ".join(errors))
