"""Cairn's Helm chart installed on the bed the way a user installs it.

The chart is used unmodified. The values the bed sets are only these:
- image names and `pullPolicy: Never` (no registry: every image is imported into each node's
  containerd beforehand), including the two sidecars the bed replaces with stand-ins;
- the bed's test settings for disk discovery: loop devices are disks here, and each node's agent
  claims only the loop disks whose backing files carry its node's name;
- the namespaces whose S3 credentials the tests use;
- the claim webhook off (see `bed_values`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from .datasets import pod_waiting_for
from .leaks import process_env
from .tools import REPO_ROOT, tool_path

if TYPE_CHECKING:
    from .bed import TestBed

CHART = REPO_ROOT / "deploy" / "helm" / "cairn"
RELEASE = "cairn"
NAMESPACE = "cairn-system"
MONITORING_CRDS = REPO_ROOT / "tests" / "fixtures" / "monitoring-crds.yaml"


def rendered_template(template: str) -> str:
    """One of the chart's templates, rendered with its default values."""
    return subprocess.run(
        [
            str(tool_path("helm")), "template", RELEASE, str(CHART),
            "--namespace", NAMESPACE, "--show-only", f"templates/{template}",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def dataset_gate_policies() -> str:
    """The chart's pod gate and its guard (two admission policies), as the chart renders them."""
    return rendered_template("dataset-gate.yaml")


def install_dataset_gate(control_plane: Any, namespace: str = "default", timeout: float = 60.0) -> None:
    """Apply the gate's policies and wait until the apiserver enforces them.

    A policy takes effect a moment after it is created (the apiserver's informers pick it up), and a
    pod created in between is admitted without its gate. So a pod naming a Dataset is created with a
    server-side dry run (admission runs, nothing is stored) until it comes back gated.
    """
    control_plane.kubectl("apply", "-f", "-", input_text=dataset_gate_policies())
    wait_until_gated(
        control_plane, pod_waiting_for("gate-probe", namespace, "probe"), timeout, "the dataset gate"
    )


def wait_until_gated(control_plane: Any, probe: dict[str, Any], timeout: float, gate: str) -> None:
    """Server-side dry runs of `probe` (admission runs, nothing is stored) until it comes back gated."""
    deadline = time.monotonic() + timeout
    while True:
        result = control_plane.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input_text=json.dumps(probe), check=False
        )
        if result.returncode == 0 and json.loads(result.stdout)["spec"].get("schedulingGates"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} did not gate a pod after {timeout:.0f} s: {result.stderr}")
        time.sleep(0.5)


def claim_gate_webhook(url: str, ca_pem: bytes) -> dict[str, Any]:
    """The chart's claim webhook, calling `url` (a controller on the host) instead of its Service."""
    rendered = rendered_template("dataset-claim-gate.yaml")
    webhook = next(
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "MutatingWebhookConfiguration"
    )
    for hook in webhook["webhooks"]:
        hook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_pem).decode()}
    return webhook


def install_claim_gate(
    control_plane: Any, webhook: dict[str, Any], probe: dict[str, Any], timeout: float = 60.0
) -> None:
    """Apply the webhook and wait until a dry run of `probe` (a pod mounting a Dataset's claim) is gated."""
    control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(webhook))
    wait_until_gated(control_plane, probe, timeout, "the claim webhook")


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of Helm values: mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def bed_values(bed: TestBed, images: Mapping[str, str]) -> dict[str, Any]:
    """Values for the bed. `images` maps cairn, csi-provisioner, csi-resizer, registrar and
    livenessprobe to the references the nodes imported."""
    repository, tag = images["cairn"].rsplit(":", 1)
    disks_dir = bed.cluster.disks.run_dir
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "sidecars": {
            "provisioner": {"image": images["csi-provisioner"]},
            "resizer": {"image": images["csi-resizer"]},
            "nodeDriverRegistrar": {"image": images["registrar"]},
            "livenessProbe": {"image": images["livenessprobe"]},
            "pullPolicy": "Never",
        },
        "nodeAgent": {
            # The kubelet expands $(NODE_NAME) from the container's environment, so one DaemonSet
            # gives every node's agent its own disks.
            "extraArgs": [
                "--allow-loop-devices",
                f"--loop-backing-prefix={disks_dir}/$(NODE_NAME)-",
                "--class-override=/dev/loop*=nvme",
                f"--min-disk-bytes={16 * 1024 * 1024}",
                "--rescan-interval=3",
            ],
            # Small, but a real tmpfs per memory claim, mounted under the kubelet's directory.
            "memoryPool": {"bytes": 128 * 1024 * 1024},
            "localTier": {"bytes": 64 * 1024 * 1024},
        },
        "storageClasses": {"pools": {"memory": {"enabled": True}}},
        "checkpoints": {"credentialNamespaces": ["default"]},
        # The bed's apiserver runs on the host, which has no route into the nodes' pod or Service
        # networks (the host does not forward), so it could never call the webhook; failing open, it
        # would only add its timeout to every pod created with a claim. tests/e2e/test_dataset_gate.py
        # serves the same webhook from a controller on the host instead.
        "datasetGate": {"claimWebhook": {"enabled": False}},
    }


class HelmRelease:
    """`helm install` and `helm uninstall` of the chart on a bed, with the bed's admin identity."""

    def __init__(self, bed: TestBed, values: dict[str, Any]) -> None:
        self.bed = bed
        self.values = values
        assert bed.workdir is not None
        self.values_file = bed.workdir / "helm-values.yaml"

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        kubeconfig = self.bed.control_plane.kubeconfigs["admin"]
        result = subprocess.run(
            [str(tool_path("helm")), "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=process_env(self.bed.run_id, {"HOME": str(self.bed.workdir), "PATH": "/usr/bin:/bin"}),
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def install(self, timeout: str = "5m") -> float:
        """Install and wait for the Deployment and DaemonSet to be ready; returns the seconds it took."""
        # The chart's ServiceMonitors and PrometheusRule need the Prometheus Operator's CRDs.
        self.bed.control_plane.apply(MONITORING_CRDS)
        self.values_file.write_text(yaml.safe_dump(self.values))
        started = time.monotonic()
        try:
            self.helm(
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "--values",
                str(self.values_file),
                "--wait",
                "--timeout",
                timeout,
            )
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{self.describe_pods()}") from None
        return time.monotonic() - started

    def uninstall(self) -> None:
        self.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m")

    def describe_pods(self) -> str:
        """What the release's pods are doing, for failure messages."""
        cp = self.bed.control_plane
        pods = cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
        events = cp.kubectl(
            "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False
        ).stdout.splitlines()[-25:]
        return f"pods:\n{pods}\nevents:\n" + "\n".join(events)

    def pods(self, component: str) -> list[dict[str, Any]]:
        out = self.bed.control_plane.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}", "-o", "json"
        ).stdout
        return json.loads(out)["items"]

    def agent_pod(self, node: str) -> dict[str, Any]:
        return next(p for p in self.pods("node-agent") if p["spec"].get("nodeName") == node)

    def logs(self, pod: str, container: str, tail: int = 40) -> str:
        return self.bed.control_plane.kubectl(
            "logs", "-n", NAMESPACE, pod, "-c", container, f"--tail={tail}", check=False
        ).stdout


__all__ = ["CHART", "NAMESPACE", "RELEASE", "HelmRelease", "bed_values", "merge"]
