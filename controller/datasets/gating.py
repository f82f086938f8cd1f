"""Pods that wait for their data, pure: which Datasets a pod consumes, whether its gate may open,
and the node affinity that sends it where a verified copy is.

A consuming pod carries the scheduling gate `cairn.dev/dataset` from admission. The controller lifts
the gate once every Dataset the pod consumes is ready on enough nodes (`spec.readyWhen`), and in the
same update narrows the pod's required node affinity to the nodes holding a verified copy of every one
of them. Kubernetes lets a gated pod's affinity be tightened, never loosened, so the narrowing only adds
requirements: each existing term gains one, or a first term is made.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cairn.api.dataset import READY_WHEN_PATTERN, DatasetStatus, NodePhase
from cairn.api.names import (
    API_GROUP,
    DATASET_ANNOTATION,
    DATASET_GATE,
    TOPOLOGY_KEY,
    WAITING_FOR_DATA_LABEL,
)

DATASET_KIND = "Dataset"

_READY_WHEN = re.compile(READY_WHEN_PATTERN)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MAX_DATASETS_PER_POD = 8


class GateInputError(ValueError):
    """A pod names its datasets in a way Cairn refuses; the message says how to fix it."""


def required_ready(ready_when: str, wanted: int) -> int:
    """How many verified copies open the gate: never more than the Dataset's targets, never zero."""
    if _READY_WHEN.match(ready_when) is None:
        raise GateInputError(
            f"readyWhen {ready_when!r} must be All, a count of nodes, or a percentage such as 50%"
        )
    if ready_when == "All":
        needed = wanted
    elif ready_when.endswith("%"):
        needed = -(-wanted * int(ready_when[:-1]) // 100)  # rounded up: 50% of 3 is 2
    else:
        needed = int(ready_when)
    return max(1, min(needed, wanted)) if wanted else 1


def verified_copies(status: DatasetStatus) -> list[str]:
    """Target nodes whose copy is Ready and hashed to the seeder's whole-dataset digest."""
    if status.digest is None:
        return []
    return sorted(
        node
        for node in status.target_nodes
        if (report := status.nodes.get(node)) is not None
        and report.phase == NodePhase.READY
        and report.digest == status.digest
    )


@dataclass(frozen=True)
class DatasetReadiness:
    """One consumed Dataset as the gate sees it; `status` None when the Dataset does not exist."""

    name: str
    status: DatasetStatus | None
    ready_when: str = "All"


@dataclass(frozen=True)
class GateDecision:
    open: bool
    nodes: tuple[str, ...]
    """Where the pod may run: nodes holding a verified copy of every consumed Dataset."""
    reason: str
    message: str


def gate_decision(namespace: str, datasets: Iterable[DatasetReadiness]) -> GateDecision:
    """Open when each Dataset has enough verified copies and at least one node holds all of them."""
    waiting: list[str] = []
    common: set[str] | None = None
    progress: list[str] = []
    for dataset in sorted(datasets, key=lambda d: d.name):
        if dataset.status is None:
            waiting.append(f"Dataset {namespace}/{dataset.name} does not exist")
            continue
        copies = verified_copies(dataset.status)
        wanted = len(dataset.status.target_nodes)
        needed = required_ready(dataset.ready_when, wanted)
        if not wanted:
            # Said plainly: "0 of 1 verified copies [0/0 (needs 1)]" read like a contradiction.
            waiting.append(f"Dataset {namespace}/{dataset.name} has no target nodes yet")
            continue
        progress.append(f"{dataset.name} {len(copies)}/{wanted} (needs {needed})")
        if len(copies) < needed:
            waiting.append(
                f"Dataset {namespace}/{dataset.name} has {len(copies)} of {needed} verified copies"
            )
        common = set(copies) if common is None else common & set(copies)
    if waiting:
        return GateDecision(False, (), "WaitingForData", "; ".join(waiting) + _progress(progress))
    nodes = tuple(sorted(common or ()))
    if not nodes:
        return GateDecision(
            False,
            (),
            "NoNodeHoldsAll",
            "no node holds a verified copy of every Dataset" + _progress(progress),
        )
    return GateDecision(True, nodes, "DataReady", f"data ready on {', '.join(nodes)}" + _progress(progress))


def _progress(parts: list[str]) -> str:
    return f" [{', '.join(parts)}]" if parts else ""


def consumed_datasets(
    annotations: Mapping[str, str] | None, claim_names: Iterable[str], claims: Mapping[str, Mapping[str, Any]]
) -> set[str]:
    """Datasets a pod consumes: those its annotation names and those its claims are populated from.

    `claims`: the pod's namespace's PVCs by name (as JSON), only those the pod mounts matter. The
    annotation is tenant input: a comma-separated list of Dataset names, checked as names.
    """
    named: set[str] = set()
    text = (annotations or {}).get(DATASET_ANNOTATION)
    if text is not None:
        for name in (part.strip() for part in text.split(",")):
            if not _DNS_LABEL.match(name):
                raise GateInputError(
                    f"annotation {DATASET_ANNOTATION} must list Dataset names separated by commas; "
                    f"{name!r} is not a name"
                )
            named.add(name)
    for claim_name in claim_names:
        ref = (claims.get(claim_name) or {}).get("spec", {}).get("dataSourceRef") or {}
        if ref.get("kind") == DATASET_KIND and ref.get("apiGroup") == API_GROUP and ref.get("name"):
            if ref.get("namespace") not in (None, ""):
                continue  # a cross-namespace source is the populator's to refuse, not a gate
            named.add(ref["name"])
    if len(named) > _MAX_DATASETS_PER_POD:
        raise GateInputError(
            f"a pod may wait for at most {_MAX_DATASETS_PER_POD} Datasets, it names {len(named)}"
        )
    return named


def claim_names(pod_spec: Mapping[str, Any]) -> list[str]:
    """The PVCs a pod mounts (ephemeral volumes' claims are named `<pod>-<volume>` and made later)."""
    return [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod_spec.get("volumes") or []
        if (volume.get("persistentVolumeClaim") or {}).get("claimName")
    ]


def narrowed_affinity(affinity: Mapping[str, Any] | None, nodes: Iterable[str]) -> dict[str, Any]:
    """The pod's affinity with its required node terms each also demanding one of `nodes`.

    Terms are ORed and their requirements ANDed, so adding the requirement to every term keeps each
    alternative the pod gave and confines all of them to `nodes`. The key is Cairn's topology label,
    which the kubelet sets from the driver's NodeGetInfo to the node's name, the name StorageNodes and
    dataset status use; a field requirement on metadata.name would take only one node.
    """
    wanted = sorted(set(nodes))
    if not wanted:
        raise ValueError("narrowing to no nodes would leave the pod unschedulable")
    requirement = {"key": TOPOLOGY_KEY, "operator": "In", "values": wanted}
    result: dict[str, Any] = copy.deepcopy(dict(affinity or {}))
    node_affinity = result.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        required["nodeSelectorTerms"] = [{"matchExpressions": [requirement]}]
        return result
    for term in terms:
        expressions = term.setdefault("matchExpressions", [])
        if requirement not in expressions:
            expressions.append(dict(requirement))
    return result


def without_gate(gates: Iterable[Mapping[str, Any]] | None, gate: str) -> list[dict[str, Any]]:
    return [dict(g) for g in gates or [] if g.get("name") != gate]


def claim_gate_patch(pod: Mapping[str, Any], claims: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The JSON patch that gates, at admission, a pod whose claims are populated from a Dataset.

    For pods the annotation does not name Datasets for (the admission policy gates those). Empty when
    none of its claims is populated from a Dataset, the pod is gated already, or it is placed.
    `claims`: the pod's claims by name, as JSON ({} for one that does not exist yet).
    """
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    if spec.get("nodeName"):
        return []  # placed by its author: the scheduler never sees it, and the apiserver refuses gates
    gates = spec.get("schedulingGates") or []
    if any(gate.get("name") == DATASET_GATE for gate in gates):
        return []
    try:
        named = consumed_datasets(None, claim_names(spec), claims)
    except GateInputError:
        named = {"too many"}  # gated; the controller's Warning says why
    if not named:
        return []
    patch: list[dict[str, Any]] = []
    if gates:
        patch.append({"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": DATASET_GATE}})
    else:
        patch.append({"op": "add", "path": "/spec/schedulingGates", "value": [{"name": DATASET_GATE}]})
    if meta.get("labels"):
        label_path = "/metadata/labels/" + WAITING_FOR_DATA_LABEL.replace("~", "~0").replace("/", "~1")
        patch.append({"op": "add", "path": label_path, "value": "true"})
    else:
        patch.append({"op": "add", "path": "/metadata/labels", "value": {WAITING_FOR_DATA_LABEL: "true"}})
    return patch
