"""A real Kubernetes control plane for tests: etcd and kube-apiserver on one address.

RBAC authorization is on, service-account tokens are signed with a key made per run,
and every Cairn component gets a kubeconfig carrying its own ServiceAccount token, so
a test sees exactly the permissions the Helm chart grants in production.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .leaks import process_env
from .pki import KeyPair, TestPki
from .process import ManagedProcess
from .tools import REPO_ROOT, tool_path

CAIRN_NAMESPACE = "cairn-system"
COMPONENT_ACCOUNTS = ("cairn-controller", "cairn-node-agent")
TOKEN_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@dataclass
class ControlPlane:
    workdir: Path
    run_id: str
    address: str = "127.0.0.1"
    processes: list[ManagedProcess] = field(default_factory=list)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)
    server_url: str = ""
    # False: leave Cairn's CRDs, ServiceAccounts and RBAC to `helm install`, as on a user's cluster.
    install_cairn: bool = True

    def __post_init__(self) -> None:
        self.pki = TestPki(self.workdir / "pki")
        self.log_dir = self.workdir / "logs"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_admin_kubeconfig()
            self._write_kube_proxy_kubeconfig()
            if self.install_cairn:
                self.apply(*sorted((REPO_ROOT / "deploy" / "crds").glob("*.yaml")))
                self._install_component_identities()
                self.kubectl(
                    "wait", "--for", "condition=established", "--timeout=60s", "crd", "-l", "", "--all"
                )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        # Reverse order: the apiserver must not outlive its etcd by more than a moment.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    # -- clients ---------------------------------------------------------------------------

    def kubectl(
        self, *args: str, identity: str = "admin", check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tool_path("kubectl")), "--kubeconfig", str(self.kubeconfigs[identity]), *args],
            capture_output=True,
            text=True,
            input=input_text,
            env=process_env(self.run_id),
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def get_json(self, *args: str) -> dict:
        """`kubectl get ... -o json` as a dict; {} when the object is not there."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def apply(self, *paths: Path) -> None:
        args: list[str] = ["apply", "--server-side", "--force-conflicts"]
        for path in paths:
            args += ["-f", str(path)]
        self.kubectl(*args)

    def api_client(self, identity: str = "admin"):  # -> kubernetes.client.ApiClient
        from cairn.kube import load_api_client

        return load_api_client(str(self.kubeconfigs[identity]))

    # -- steps -----------------------------------------------------------------------------

    def _make_pki(self) -> None:
        self.pki.create_ca()
        sans = [
            f"IP:{self.address}",
            "IP:127.0.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            # Pods reach the apiserver through the `kubernetes` Service's cluster IP.
            f"IP:{KUBERNETES_SERVICE_IP}",
        ]
        self.serving = self.pki.issue("apiserver", "/CN=kube-apiserver", server_sans=sans)
        self.admin = self.pki.issue("admin", "/O=system:masters/CN=cairn-testbed-admin")
        # The apiserver's identity towards kubelets (logs, exec, port-forward).
        self.kubelet_client = self.pki.issue(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver"
        )
        self.sa_keys = self.pki.service_account_keys()

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        data_dir = self.workdir / "etcd"
        etcd = ManagedProcess(
            "etcd",
            [
                str(tool_path("etcd")),
                "--name",
                "cairn-testbed",
                "--data-dir",
                str(data_dir),
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"cairn-testbed=http://127.0.0.1:{peer_port}",
                # Durability of a throwaway test store is worth less than its fsync latency here.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            run_id=self.run_id,
            log_dir=self.log_dir,
        )
        self.processes.append(etcd)
        etcd.wait_until(lambda: http_ok(f"{self.etcd_url}/health"), 30, "healthy")

    def _start_apiserver(self) -> None:
        port = free_port(self.address)
        self.server_url = f"https://{self.address}:{port}"
        pki = self.pki.directory
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(tool_path("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={self.serving.cert}",
                f"--tls-private-key-file={self.serving.key}",
                f"--client-ca-file={self.pki.ca.cert}",
                # Node: kubelets may read and write only what concerns their own node's pods.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                f"--kubelet-certificate-authority={self.pki.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--service-account-issuer={TOKEN_AUDIENCE}",
                f"--service-account-key-file={self.sa_keys.cert}",
                f"--service-account-signing-key-file={self.sa_keys.key}",
                f"--api-audiences={TOKEN_AUDIENCE}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
            run_id=self.run_id,
            log_dir=self.log_dir,
        )
        self.processes.append(apiserver)
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        apiserver.wait_until(lambda: http_ok(f"{self.server_url}/readyz", context), 120, "ready")

    def write_kubeconfig(self, identity: str, user: dict[str, str]) -> Path:
        path = self.workdir / "kubeconfigs" / f"{identity}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cairn-testbed",
                    "cluster": {"server": self.server_url, "certificate-authority": str(self.pki.ca.cert)},
                }
            ],
            "users": [{"name": identity, "user": user}],
            "contexts": [{"name": identity, "context": {"cluster": "cairn-testbed", "user": identity}}],
            "current-context": identity,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        self.kubeconfigs[identity] = path
        return path

    def _write_admin_kubeconfig(self) -> None:
        self.write_kubeconfig(
            "admin", {"client-certificate": str(self.admin.cert), "client-key": str(self.admin.key)}
        )

    def _install_component_identities(self) -> None:
        """Apply the chart's ServiceAccounts and RBAC, then mint a token for each account."""
        self.kubectl("create", "namespace", CAIRN_NAMESPACE)
        rendered = subprocess.run(
            [
                str(tool_path("helm")),
                "template",
                "cairn",
                str(REPO_ROOT / "deploy" / "helm" / "cairn"),
                "--namespace",
                CAIRN_NAMESPACE,
                "--show-only",
                "templates/serviceaccounts.yaml",
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/checkpoint-credentials.yaml",
                # Tests keep their policies and Secrets in `default`.
                "--set",
                "checkpoints.credentialNamespaces={default}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.kubectl("apply", "-f", "-", input_text=rendered)
        for account in COMPONENT_ACCOUNTS:
            token = self.kubectl(
                "create",
                "token",
                account,
                "-n",
                CAIRN_NAMESPACE,
                "--duration=24h",
                f"--audience={TOKEN_AUDIENCE}",
            ).stdout.strip()
            self.write_kubeconfig(account, {"token": token})

    def _write_kube_proxy_kubeconfig(self) -> None:
        # The apiserver's bootstrap RBAC binds this user to system:node-proxier.
        proxy = self.pki.issue("kube-proxy", "/CN=system:kube-proxy")
        self.write_kubeconfig(
            "kube-proxy", {"client-certificate": str(proxy.cert), "client-key": str(proxy.key)}
        )


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return response.status == 200


__all__ = ["CAIRN_NAMESPACE", "COMPONENT_ACCOUNTS", "ControlPlane", "KeyPair", "free_port"]
