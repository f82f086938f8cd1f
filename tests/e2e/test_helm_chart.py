"""The Helm chart installs on a real kube-apiserver, and its identities hold exactly the rights they need.

The chart is rendered with the test bed's helm and applied with `kubectl apply --dry-run=server`, so
every object passes the apiserver's own validation and admission without being created. The
ServiceMonitors and PrometheusRule need the Prometheus Operator's CRDs: small stand-ins from
tests/fixtures are applied for that one test and deleted after, and promtool checks and unit-tests
the alert rules themselves. The ServiceAccounts' rights are asked of the apiserver with
`kubectl auth can-i`, using each component's own token: the bed applied the chart's RBAC for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cairn.controller.main import parse_args as controller_args
from cairn.node_agent.main import parse_args as node_agent_args
from tests.testbed.bed import TestBed
from tests.testbed.controlplane import CAIRN_NAMESPACE
from tests.testbed.tools import REPO_ROOT, tool_path
from tests.testbed.waiting import wait_until
from tools.build_tools import TOOLS

CHART = REPO_ROOT / "deploy" / "helm" / "cairn"
MONITORING_CRDS = REPO_ROOT / "tests" / "fixtures" / "monitoring-crds.yaml"
# Everything the chart can switch on, with the credential namespace the bed grants.
FULL_VALUES = (
    "checkpoints.credentialNamespaces={default}",
    "storageClasses.pools.ssd.enabled=true",
    "storageClasses.pools.hdd.enabled=true",
    "storageClasses.pools.nvme.checkpointPolicy=llm",
    "storageClasses.pools.nvme.default=true",
)


def helm(*args: str) -> str:
    result = subprocess.run([str(tool_path("helm")), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def render(*values: str, include_crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", "cairn", str(CHART), "--namespace", CAIRN_NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def expand_env(container: dict[str, Any], sample: dict[str, str]) -> list[str]:
    """The container's args as the kubelet expands them; a $(VAR) it does not declare stays literal
    in Kubernetes, silently, so here it fails the test instead."""
    declared = {e["name"] for e in container.get("env", [])}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in declared, f"{container['name']} uses $({name}) but declares no such env var"
        return sample[name]

    return [re.sub(r"\$\((\w+)\)", substitute, arg) for arg in container.get("args", [])]


# -- helm lint and the rendered objects ---------------------------------------------------------


def test_helm_lint_passes_strictly_with_defaults_and_with_everything_on() -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *[a for v in FULL_VALUES for a in ("--set", v)])
    helm(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "monitoring.serviceMonitor.enabled=false",
        "--set",
        "monitoring.prometheusRule.enabled=false",
        "--set",
        "controller.metrics.enabled=false",
    )


def test_csidriver_states_every_field_explicitly() -> None:
    driver = find(render(), "CSIDriver", "lvm.cairn.dev")
    assert driver["spec"] == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "storageCapacity": True,
        "fsGroupPolicy": "File",
        "volumeLifecycleModes": ["Persistent"],
        "requiresRepublish": False,
        "seLinuxMount": False,
        "tokenRequests": [],
    }


def test_storage_classes_wait_for_the_consumer_and_name_their_pool() -> None:
    docs = render(*FULL_VALUES)
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    assert sorted(classes) == ["cairn-hdd", "cairn-nvme", "cairn-ssd"]
    for name, sc in classes.items():
        assert sc["provisioner"] == "lvm.cairn.dev"
        assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
        assert sc["allowVolumeExpansion"] is True
        assert sc["parameters"]["cairn.dev/pool"] == name.removeprefix("cairn-")
    assert classes["cairn-nvme"]["parameters"]["cairn.dev/checkpoint-policy"] == "llm"
    assert "cairn.dev/checkpoint-policy" not in classes["cairn-ssd"]["parameters"]
    # Only nvme by default, since agents claim only nvme disks by default.
    assert [d["metadata"]["name"] for d in render() if d["kind"] == "StorageClass"] == ["cairn-nvme"]


def test_component_args_are_flags_the_components_accept() -> None:
    docs = render()
    controller = containers(find(docs, "Deployment", "cairn-controller"))
    args = controller_args(expand_env(controller["cairn-controller"], {}))
    assert args.endpoint == "unix:///csi/csi.sock"
    assert args.populator_namespace == CAIRN_NAMESPACE
    assert args.metrics_address == "0.0.0.0:9751"

    agent = containers(find(docs, "DaemonSet", "cairn-node-agent"))["cairn-node-agent"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "HOST_IP": "status.hostIP"}
    args = node_agent_args(expand_env(agent, {"NODE_NAME": "gpu-7", "HOST_IP": "10.0.0.7"}))
    assert args.node_name == "gpu-7"
    assert args.endpoint == "unix:///csi/csi.sock"
    assert (args.p2p_address, args.peer_restore_address, args.metrics_address) == (
        "10.0.0.7:9752",
        "10.0.0.7:9750",
        "10.0.0.7:9751",
    )
    assert str(args.state_dir) == "/var/lib/cairn"


def test_provisioner_args_parse_in_the_same_release_the_bed_runs() -> None:
    provisioner = containers(find(render(), "Deployment", "cairn-controller"))["csi-provisioner"]
    # The image is the release tools/build_tools.py builds, so the binary here is the one it ships.
    assert provisioner["image"].endswith(":" + TOOLS["csi-provisioner"].version)
    args = expand_env(provisioner, {"NAMESPACE": CAIRN_NAMESPACE, "POD_NAME": "cairn-controller-0"})
    for flag in (
        "--extra-create-metadata",
        "--enable-capacity",
        "--strict-topology",
        "--leader-election",
        "--feature-gates=Topology=true",
    ):
        assert flag in args
    assert {e["name"] for e in provisioner["env"]} == {"NAMESPACE", "POD_NAME"}
    # Unknown flags and feature gates fail before --version returns.
    result = subprocess.run(
        [str(tool_path("csi-provisioner")), *args, "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_named_probe_and_service_ports_resolve() -> None:
    """A probe's named port resolves only in its own container; the apiserver does not check it."""
    docs = render()
    for workload in (find(docs, "Deployment"), find(docs, "DaemonSet")):
        pod_ports: set[str] = set()
        for container in containers(workload).values():
            names = {p["name"] for p in container.get("ports", [])}
            pod_ports |= names
            for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in names, f"{container['name']} {probe} port {port} is not its own"
        component = workload["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        service = find(docs, "Service", f"cairn-{component}-metrics")
        assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= pod_ports


def test_node_agent_runs_on_the_host_network_with_its_mounts_propagated() -> None:
    spec = find(render(), "DaemonSet", "cairn-node-agent")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is False
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = containers({"spec": {"template": {"spec": spec}}})["cairn-node-agent"]
    assert agent["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert {"/dev", "/sys", "/run/udev", "/etc/lvm", "/var/lib/cairn", "/csi"} <= set(mounts)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["plugin-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins/lvm.cairn.dev"
    registrar = containers({"spec": {"template": {"spec": spec}}})["node-driver-registrar"]
    assert "--kubelet-registration-path=/var/lib/kubelet/plugins/lvm.cairn.dev/csi.sock" in registrar["args"]


# -- the apiserver ---------------------------------------------------------------------------------


@pytest.fixture
def monitoring_crds(bed: TestBed) -> Iterator[None]:
    """The stand-in ServiceMonitor and PrometheusRule CRDs, for one test only."""
    cp = bed.control_plane
    cp.kubectl("apply", "-f", str(MONITORING_CRDS))
    try:
        cp.kubectl("wait", "--for", "condition=established", "--timeout=60s", "-f", str(MONITORING_CRDS))
        yield
    finally:
        cp.kubectl("delete", "-f", str(MONITORING_CRDS), "--wait=true", "--ignore-not-found")


def dry_run(bed: TestBed, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return bed.control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump_all(docs), check=False
    )


def test_rendered_chart_passes_server_side_dry_run(bed: TestBed, monitoring_crds: None) -> None:
    docs = render(*FULL_VALUES, include_crds=True)
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "CSIDriver",
        "StorageClass",
        "Deployment",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ClusterRole",
        "Role",
    } <= kinds
    result = dry_run(bed, docs)
    assert result.returncode == 0, result.stderr
    accepted = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(docs), result.stdout

    # A negative control: the same path rejects a field the API does not allow, so the success
    # above is the apiserver's validation and not a no-op.
    driver = find(docs, "CSIDriver")
    driver["spec"]["fsGroupPolicy"] = "Sometimes"
    rejected = dry_run(bed, [driver])
    assert rejected.returncode != 0 and "fsGroupPolicy" in rejected.stderr
    rule = find(docs, "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    rejected = dry_run(bed, [rule])
    assert rejected.returncode != 0 and "expr" in rejected.stderr


def test_server_side_dry_run_rejects_monitoring_objects_without_their_crds(bed: TestBed) -> None:
    """Documented in values.yaml: without the Prometheus Operator, turn the two kinds off."""
    docs = render()
    monitor = find(docs, "ServiceMonitor", "cairn-node-agent")
    rejected = dry_run(bed, [monitor])
    # "no matches for kind", or NotFound when kubectl's discovery cache still remembers the kind.
    assert rejected.returncode != 0 and "servicemonitor" in rejected.stderr.lower()
    off = render("monitoring.serviceMonitor.enabled=false", "monitoring.prometheusRule.enabled=false")
    assert not {"ServiceMonitor", "PrometheusRule"} & {d["kind"] for d in off}
    result = dry_run(bed, off)
    assert result.returncode == 0, result.stderr


Y, N = "yes", "no"
RIGHTS = [
    # The node agent: S3 credentials by name in a granted namespace, nothing else about Secrets.
    ("cairn-node-agent", Y, "get", "secrets", "-n", "default"),
    ("cairn-node-agent", N, "list", "secrets", "-n", "default"),
    ("cairn-node-agent", N, "watch", "secrets", "-n", "default"),
    ("cairn-node-agent", N, "list", "secrets", "-A"),
    ("cairn-node-agent", N, "get", "secrets", "-n", "kube-system"),
    ("cairn-node-agent", N, "get", "secrets", "-n", CAIRN_NAMESPACE),
    ("cairn-node-agent", Y, "patch", "localvolumes.cairn.dev", "--subresource=status"),
    ("cairn-node-agent", Y, "create", "localdisks.cairn.dev"),
    ("cairn-node-agent", Y, "create", "checkpoints.cairn.dev", "-n", "default"),
    ("cairn-node-agent", Y, "patch", "datasets.cairn.dev", "--subresource=status", "-n", "default"),
    ("cairn-node-agent", N, "create", "localvolumes.cairn.dev"),
    ("cairn-node-agent", N, "delete", "localvolumes.cairn.dev"),
    ("cairn-node-agent", N, "delete", "persistentvolumes"),
    ("cairn-node-agent", N, "create", "persistentvolumes"),
    ("cairn-node-agent", N, "create", "pods", "-n", "default"),
    ("cairn-node-agent", Y, "list", "servicecidrs.networking.k8s.io"),
    # Its node Lease, in Cairn's namespace only (the admission policy narrows it to its own node's).
    ("cairn-node-agent", Y, "patch", "leases.coordination.k8s.io", "-n", CAIRN_NAMESPACE),
    ("cairn-node-agent", N, "patch", "leases.coordination.k8s.io", "-n", "default"),
    ("cairn-node-agent", N, "delete", "leases.coordination.k8s.io", "-n", CAIRN_NAMESPACE),
    ("cairn-node-agent", N, "create", "servicecidrs.networking.k8s.io"),
    # The controller and the sidecars in its pod: volumes, claims, capacity, leases; no Secrets at all.
    ("cairn-controller", Y, "create", "persistentvolumes"),
    ("cairn-controller", Y, "create", "localvolumes.cairn.dev"),
    ("cairn-controller", Y, "patch", "persistentvolumeclaims", "--subresource=status", "-A"),
    ("cairn-controller", Y, "create", "csistoragecapacities.storage.k8s.io", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", Y, "update", "leases.coordination.k8s.io", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", N, "update", "leases.coordination.k8s.io", "-n", "default"),
    ("cairn-controller", Y, "create", "persistentvolumeclaims", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", Y, "delete", "persistentvolumeclaims", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", N, "create", "persistentvolumeclaims", "-n", "default"),
    ("cairn-controller", N, "delete", "persistentvolumeclaims", "-n", "default"),
    ("cairn-controller", Y, "update", "persistentvolumeclaims", "-n", "default"),
    ("cairn-controller", Y, "get", "pods", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", Y, "get", "deployments.apps", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", N, "get", "secrets", "-n", CAIRN_NAMESPACE),
    ("cairn-controller", N, "get", "secrets", "-n", "default"),
    ("cairn-controller", N, "list", "secrets", "-A"),
    ("cairn-controller", N, "delete", "localdisks.cairn.dev"),
    ("cairn-controller", N, "patch", "localdisks.cairn.dev", "--subresource=status"),
    ("cairn-controller", N, "get", "pods", "-n", "default"),
    # The dataset gate lists waiting pods everywhere and lifts their gate; RBAC cannot say "only
    # waiting pods", so cairn-controller-lifts-gates-only does (tests/e2e/test_dataset_gate.py).
    ("cairn-controller", Y, "list", "pods", "-A"),
    ("cairn-controller", Y, "patch", "pods", "-n", "default"),
    ("cairn-controller", N, "update", "pods", "-n", "default"),
    ("cairn-controller", N, "delete", "pods", "-n", "default"),
    ("cairn-controller", N, "create", "pods", "-n", "default"),
    ("cairn-controller", N, "get", "deployments.apps", "-n", "default"),
    ("cairn-controller", N, "create", "storageclasses.storage.k8s.io"),
    ("cairn-controller", N, "delete", "nodes"),
    # A dead node is marked not Ready, and a lost node's copies dropped from Checkpoints' tiers.
    ("cairn-controller", Y, "patch", "storagenodes.cairn.dev", "--subresource=status"),
    ("cairn-controller", N, "patch", "storagenodes.cairn.dev"),
    ("cairn-controller", Y, "patch", "checkpoints.cairn.dev", "--subresource=status", "-n", "default"),
    ("cairn-controller", N, "delete", "checkpoints.cairn.dev", "-n", "default"),
]


def test_service_accounts_hold_exactly_the_rights_they_need(bed: TestBed) -> None:
    cp = bed.control_plane
    wrong = []
    for identity, expected, *question in RIGHTS:
        asked = cp.kubectl("auth", "can-i", *question, identity=identity, check=False)
        answer = asked.stdout.strip()
        # can-i exits 1 for "no"; anything else (a bad resource name, a broken token) is an error.
        assert answer in (Y, N) and asked.returncode == (0 if answer == Y else 1), asked.stderr
        if answer != expected:
            wrong.append(f"{identity} can-i {' '.join(question)}: {answer}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def _objects(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs))


def test_one_nodes_agent_cannot_change_another_nodes_records(bed: TestBed) -> None:
    """RBAC gives every agent the same rights; the chart's admission policy narrows them to its node.

    The agent's token here is bound to a pod on node "vap-a", as the kubelet's projected tokens are;
    no kubelet is needed for the apiserver to put the node's name into the request.
    """
    cp = bed.control_plane
    policy = [d for d in render() if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert {d["kind"] for d in policy} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    ns = "vap-team"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "vap-agent", "namespace": CAIRN_NAMESPACE},
        "spec": {
            "nodeName": "vap-a",
            "serviceAccountName": "cairn-node-agent",
            "containers": [{"name": "agent", "image": "cairn-never-pulled"}],
        },
    }
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in ("vap-a", "vap-b")]
    records = [
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "StorageNode",
            "metadata": {"name": n},
            "spec": {"nodeName": n},
        }
        for n in ("vap-a", "vap-b")
    ]
    dataset = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "shared", "namespace": ns},
        "spec": {"source": {"http": {"urls": ["https://example.com/a.bin"]}}, "nodes": {"names": []}},
    }
    checkpoints = [
        {
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "Checkpoint",
            "metadata": {"name": f"step-{n}", "namespace": ns},
            "spec": {
                "policy": "p",
                "pvcName": "train",
                "nodeName": n,
                "volume": "lv-x",
                "path": "ckpt/step_1",
                "step": 1,
                "sizeBytes": 1,
                "size": "1B",
                "fileCount": 1,
                "hashAlgorithm": "blake3",
                "manifestDigest": "blake3:" + "0" * 64,
            },
        }
        for n in ("vap-a", "vap-b")
    ]
    cp.kubectl("create", "namespace", ns)
    try:
        cp.kubectl("apply", "-f", "-", input_text=_objects(*nodes, *records, dataset, pod, *checkpoints))

        def patch_dataset_status(status: dict, identity: str = "admin") -> subprocess.CompletedProcess[str]:
            body = json.dumps({"status": status})
            return cp.kubectl(
                "patch",
                "dataset",
                "shared",
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                body,
                identity=identity,
                check=identity == "admin",
            )

        patch_dataset_status({"nodes": {"vap-b": {"phase": "Ready"}}})
        uid = json.loads(cp.kubectl("get", "pod", "vap-agent", "-n", CAIRN_NAMESPACE, "-o", "json").stdout)[
            "metadata"
        ]["uid"]
        token = cp.kubectl(
            "create",
            "token",
            "cairn-node-agent",
            "-n",
            CAIRN_NAMESPACE,
            "--bound-object-kind=Pod",
            "--bound-object-name=vap-agent",
            f"--bound-object-uid={uid}",
        ).stdout.strip()
        cp.write_kubeconfig("agent-on-vap-a", {"token": token})
        cp.kubectl("apply", "-f", "-", input_text=_objects(*policy))

        def as_agent(*args: str, identity: str = "agent-on-vap-a") -> subprocess.CompletedProcess[str]:
            return cp.kubectl(*args, identity=identity, check=False)

        def patch_ready(node: str, identity: str = "agent-on-vap-a") -> subprocess.CompletedProcess[str]:
            return as_agent(
                "patch",
                "storagenode",
                node,
                "--subresource=status",
                "--type=merge",
                "-p",
                '{"status": {"ready": true}}',
                identity=identity,
            )

        # Policies take effect once the apiserver has compiled them.
        wait_until(lambda: patch_ready("vap-b").returncode != 0, 30, "the admission policy to take effect")
        refused = patch_ready("vap-b")
        assert "the agent on vap-a may not change StorageNode vap-b" in refused.stderr
        assert patch_ready("vap-a").returncode == 0, patch_ready("vap-a").stderr
        # A token not bound to a pod says nothing about its node, and is refused outright.
        unbound = patch_ready("vap-a", identity="cairn-node-agent")
        assert unbound.returncode != 0 and "bound to its pod" in unbound.stderr

        def patch_entry(node: str) -> subprocess.CompletedProcess[str]:
            return patch_dataset_status({"nodes": {node: {"phase": "Failed"}}}, "agent-on-vap-a")

        other = patch_entry("vap-b")
        assert other.returncode != 0 and "only its own entry" in other.stderr
        assert patch_entry("vap-a").returncode == 0

        # Only the seeder publishes what the dataset holds.
        def publish_digest() -> subprocess.CompletedProcess[str]:
            return patch_dataset_status({"digest": "blake3:" + "1" * 64}, "agent-on-vap-a")

        not_seeder = publish_digest()
        assert not_seeder.returncode != 0 and "is not the seeder of Dataset" in not_seeder.stderr
        patch_dataset_status({"seeder": "vap-a"})
        seeder = publish_digest()
        assert seeder.returncode == 0, seeder.stderr
        # Nor may it sign itself into a dataset's swarm: that list is the controller's.
        forged = {"caCertificate": "forged", "nodeCertificates": {"vap-a": "forged"}}
        swarm = patch_dataset_status({"swarm": forged}, "agent-on-vap-a")
        assert swarm.returncode != 0 and "may not change the swarm credentials" in swarm.stderr

        # The replica label is what lets a node read a checkpoint from a peer: only the recording
        # node sets it, so an agent cannot name itself the replica of another node's checkpoint.
        def label_replica(checkpoint: str) -> subprocess.CompletedProcess[str]:
            return as_agent("label", "checkpoint", checkpoint, "-n", ns, "cairn.dev/replica-node=vap-a")

        stolen = label_replica("step-vap-b")
        assert stolen.returncode != 0 and "may not choose the replica of Checkpoint" in stolen.stderr
        labelled = label_replica("step-vap-a")
        assert labelled.returncode == 0, labelled.stderr
        theirs = as_agent("delete", "checkpoint", "step-vap-b", "-n", ns)
        assert theirs.returncode != 0 and "recorded by another node" in theirs.stderr
        assert as_agent("delete", "checkpoint", "step-vap-a", "-n", ns).returncode == 0
        stored = json.loads(cp.kubectl("get", "dataset", "shared", "-n", ns, "-o", "json").stdout)["status"][
            "nodes"
        ]
        assert stored["vap-b"]["phase"] == "Ready" and stored["vap-a"]["phase"] == "Failed"

        # A node's Lease says its agent lives: an agent may keep only its own node alive.
        def lease(node: str) -> str:
            return json.dumps(
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": f"cairn-node-{node}", "namespace": CAIRN_NAMESPACE},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": 40},
                }
            )

        forged_lease = cp.kubectl(
            "create", "-f", "-", input_text=lease("vap-b"), identity="agent-on-vap-a", check=False
        )
        assert forged_lease.returncode != 0 and "may renew only its own node Lease" in forged_lease.stderr
        own = cp.kubectl(
            "create", "-f", "-", input_text=lease("vap-a"), identity="agent-on-vap-a", check=False
        )
        assert own.returncode == 0, own.stderr
    finally:
        cp.kubectl(
            "delete", "lease", "cairn-node-vap-a", "-n", CAIRN_NAMESPACE, "--ignore-not-found", check=False
        )
        cp.kubectl("delete", "-f", "-", "--ignore-not-found", input_text=_objects(*policy), check=False)
        cp.kubectl(
            "delete", "pod", "vap-agent", "-n", CAIRN_NAMESPACE, "--force", "--grace-period=0", check=False
        )
        for n in ("vap-a", "vap-b"):
            cp.kubectl("delete", "storagenode", n, "--ignore-not-found", check=False)
            cp.kubectl("delete", "node", n, "--ignore-not-found", check=False)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# -- the alert rules ---------------------------------------------------------------------------------

# Synthetic series for promtool's rule unit tests (one sample a minute). Labels are the agents' own.
_RULE_TESTS = """
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'cairn_pool_size_bytes{node="n1",pool="nvme"}', values: '100x30'}
      - {series: 'cairn_pool_free_bytes{node="n1",pool="nvme"}', values: '5x30'}
      - {series: 'cairn_pool_size_bytes{node="n2",pool="nvme"}', values: '100x30'}
      - {series: 'cairn_pool_free_bytes{node="n2",pool="nvme"}', values: '50x30'}
      - {series: 'cairn_pool_size_bytes{node="n3",pool="ssd"}', values: '0x30'}
      - {series: 'cairn_pool_free_bytes{node="n3",pool="ssd"}', values: '0x30'}
      - {series: 'cairn_disk_state{node="n1",disk="wwn-1",state="Missing"}', values: '1x30'}
      - {series: 'cairn_disk_state{node="n1",disk="wwn-2",state="Missing"}', values: '0x30'}
      - series: 'cairn_checkpoint_tier_lag_seconds{node="n1",namespace="a",pvc="llm",tier="s3"}'
        values: '2000x30'
      - series: 'cairn_checkpoint_tier_lag_seconds{node="n1",namespace="a",pvc="ok",tier="s3"}'
        values: '0x30'
      - series: 'cairn_checkpoint_tier_lag_seconds{node="n1",namespace="a",pvc="mem",tier="local"}'
        values: '150x30'
      - series: 'cairn_checkpoint_tier_lag_seconds{node="n1",namespace="a",pvc="quick",tier="local"}'
        values: '2x30'
      - series: 'cairn_memory_volume_used_ratio{node="n1",volume="lv-1",namespace="a",pvc="mem"}'
        values: '0.5 0.96x30'
      - series: 'cairn_memory_volume_used_ratio{node="n1",volume="lv-2",namespace="a",pvc="ok"}'
        values: '0.4x30'
      - {series: 'cairn_dataset_progress_ratio{node="n1",namespace="a",dataset="flat"}', values: '0.5x30'}
      - {series: 'cairn_dataset_progress_ratio{node="n2",namespace="a",dataset="up"}', values: '0+0.01x30'}
      - {series: 'cairn_dataset_progress_ratio{node="n3",namespace="a",dataset="done"}', values: '1x30'}
      - {series: 'cairn_dataset_progress_ratio{node="n4",namespace="a",dataset="new"}', values: '_x10 0.2x20'}
    alert_rule_test:
      - {eval_time: 9m, alertname: CairnPoolAlmostFull, exp_alerts: []}
      - eval_time: 11m
        alertname: CairnPoolAlmostFull
        exp_alerts:
          - exp_labels: {node: n1, pool: nvme, severity: warning}
            exp_annotations:
              summary: Pool nvme on node n1 is 95% full
              description: >-
                New volumes in pool nvme on n1 will soon fail with RESOURCE_EXHAUSTED. Delete unused
                claims there, or add a disk of that class to the node (the agent claims clean disks
                by itself).
      - eval_time: 3m
        alertname: CairnDiskMissing
        exp_alerts:
          - exp_labels: {node: n1, disk: wwn-1, state: Missing, severity: critical}
            exp_annotations:
              summary: Disk wwn-1 on node n1 is Missing
              description: >-
                The node agent on n1 no longer finds disk wwn-1. See 'kubectl get localdisks'. If the
                disk was in a pool, the StorageNode's PoolsHealthy condition names the command that
                repairs it.
      - eval_time: 6m
        alertname: CairnCheckpointTierLag
        exp_alerts:
          - exp_labels: {node: n1, namespace: a, pvc: llm, tier: s3, severity: warning}
            exp_annotations:
              summary: Checkpoints of a/llm are 33m 20s behind in S3
              description: >-
                The oldest checkpoint of claim a/llm on node n1 has no verified S3 copy yet. See the
                Checkpoints' phase and conditions ('kubectl get checkpoints -n a'): Failed ones carry
                the reason.
      - {eval_time: 1m, alertname: CairnMemoryDrainLag, exp_alerts: []}
      - eval_time: 3m
        alertname: CairnMemoryDrainLag
        exp_alerts:
          - exp_labels: {node: n1, namespace: a, pvc: mem, tier: local, severity: warning}
            exp_annotations:
              summary: Checkpoints of a/mem have been only in memory for 2m 30s
              description: >-
                The oldest checkpoint of memory claim a/mem on node n1 has no verified copy on the
                node's disks yet. Check the node's tier store ('kubectl get checkpoints -n a', the
                agent's log) and its disk pool's free space.
      - {eval_time: 0m, alertname: CairnMemoryVolumeFull, exp_alerts: []}
      - eval_time: 1m
        alertname: CairnMemoryVolumeFull
        exp_alerts:
          - exp_labels: {node: n1, volume: lv-1, namespace: a, pvc: mem, severity: warning}
            exp_annotations:
              summary: Memory volume lv-1 of a/mem on node n1 is 96% full
              description: >-
                New writes to claim a/mem fail with ENOSPC. Its checkpoints are written faster than
                they drain to slower tiers, or retention keeps more in memory than the claim holds:
                lower keepMemory in its CheckpointPolicy, or make the claim larger.
      # Nothing has had the whole window yet; the copy that appears at 10m has not even at 20m.
      - {eval_time: 14m, alertname: CairnDatasetStalled, exp_alerts: []}
      - eval_time: 20m
        alertname: CairnDatasetStalled
        exp_alerts:
          - exp_labels: {node: n1, namespace: a, dataset: flat, severity: warning}
            exp_annotations:
              summary: Dataset a/flat is stuck at 50% on node n1
              description: >-
                The copy of dataset a/flat on n1 has not grown for 15m. See 'kubectl get dataset -n a flat
                -o yaml' (status.nodes) for its peers and the origin.
      - eval_time: 27m
        alertname: CairnDatasetStalled
        exp_alerts:
          - exp_labels: {node: n1, namespace: a, dataset: flat, severity: warning}
            exp_annotations:
              summary: Dataset a/flat is stuck at 50% on node n1
              description: >-
                The copy of dataset a/flat on n1 has not grown for 15m. See 'kubectl get dataset -n a flat
                -o yaml' (status.nodes) for its peers and the origin.
          - exp_labels: {node: n4, namespace: a, dataset: new, severity: warning}
            exp_annotations:
              summary: Dataset a/new is stuck at 20% on node n4
              description: >-
                The copy of dataset a/new on n4 has not grown for 15m. See 'kubectl get dataset -n a new
                -o yaml' (status.nodes) for its peers and the origin.
"""


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make system-deps` installs Debian's prometheus package, which has it"
    return path


def test_alert_rules_parse_and_fire_only_when_they_should(tmp_path: Path) -> None:
    rule = find(render(), "PrometheusRule", "cairn")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "CairnPoolAlmostFull",
        "CairnDiskMissing",
        "CairnCheckpointTierLag",
        "CairnMemoryDrainLag",
        "CairnMemoryVolumeFull",
        "CairnDatasetStalled",
    }
    # Every metric an alert reads is one the node agent exports.
    exported = set(re.findall(r'"(cairn_\w+)"', (REPO_ROOT / "node-agent" / "metrics.py").read_text()))
    used = {
        m for g in rule["spec"]["groups"] for r in g["rules"] for m in re.findall(r"cairn_\w+", r["expr"])
    }
    assert used <= exported, used - exported

    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (tmp_path / "tests.yaml").write_text(_RULE_TESTS)
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "tests.yaml"]):
        result = subprocess.run([promtool(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
