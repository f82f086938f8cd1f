"""Gating a pod at admission through its claim: the patch, and the webhook's answer."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from cairn.controller.datasets.claim_gate import ClaimGate
from cairn.controller.datasets.gating import claim_gate_patch

FROM_DATASET = {"spec": {"dataSourceRef": {"apiGroup": "cairn.dev", "kind": "Dataset", "name": "corpus"}}}
PLAIN = {"spec": {}}


def pod(*claims: str, **spec: Any) -> dict[str, Any]:
    volumes = [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "ml"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes, **spec},
    }


def applied(manifest: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    """The pod as the apiserver stores it after the patch (RFC 6902 `add`, the only op it uses)."""
    result = copy.deepcopy(manifest)
    for op in claim_gate_patch(manifest, claims):
        assert op["op"] == "add"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = result
        for part in parents:
            target = target[part]
        if last == "-":
            target.append(op["value"])
        else:
            assert last not in target, f"add over an existing {op['path']}"
            target[last] = op["value"]
    return result


def test_a_pod_whose_claim_is_populated_from_a_dataset_is_gated_and_labelled() -> None:
    gated = applied(pod("data", "scratch"), {"data": FROM_DATASET, "scratch": PLAIN})
    assert gated["spec"]["schedulingGates"] == [{"name": "cairn.dev/dataset"}]
    assert gated["metadata"]["labels"] == {"cairn.dev/waiting-for-data": "true"}
    # Beside gates and labels the pod already had.
    manifest = pod("data", schedulingGates=[{"name": "other"}])
    manifest["metadata"]["labels"] = {"app": "train"}
    gated = applied(manifest, {"data": FROM_DATASET})
    assert gated["spec"]["schedulingGates"] == [{"name": "other"}, {"name": "cairn.dev/dataset"}]
    assert gated["metadata"]["labels"] == {"app": "train", "cairn.dev/waiting-for-data": "true"}


def test_nothing_changes_without_a_dataset_claim_on_a_gated_or_on_a_placed_pod() -> None:
    assert claim_gate_patch(pod("scratch"), {"scratch": PLAIN}) == []
    assert claim_gate_patch(pod("later"), {"later": {}}) == []  # the claim does not exist yet
    assert (
        claim_gate_patch(pod("data", schedulingGates=[{"name": "cairn.dev/dataset"}]), {"data": FROM_DATASET})
        == []
    )
    assert claim_gate_patch(pod("data", nodeName="node1"), {"data": FROM_DATASET}) == []
    elsewhere = {"spec": {"dataSourceRef": {**FROM_DATASET["spec"]["dataSourceRef"], "namespace": "other"}}}
    assert claim_gate_patch(pod("data"), {"data": elsewhere}) == []


class Claims:
    """The two reads the webhook makes, answered from a dict; a name it lacks is a 404."""

    def __init__(self, claims: dict[str, dict[str, Any]], broken: bool = False) -> None:
        self.claims, self.broken, self.reads = claims, broken, 0
        self.api_client = self

    def sanitize_for_serialization(self, value: Any) -> Any:
        return value

    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str, **_: Any) -> Any:
        self.reads += 1
        if self.broken:
            raise ApiException(status=503, reason="unavailable")
        if name not in self.claims:
            raise ApiException(status=404, reason="not found")
        return self.claims[name]


def review(manifest: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {"request": {"uid": "u-1", "operation": operation, "namespace": "ml", "object": manifest}}


def test_the_webhook_answers_with_the_patch_and_fails_open() -> None:
    answer = ClaimGate(Claims({"data": FROM_DATASET})).review(review(pod("data")))["response"]  # type: ignore[arg-type]
    assert answer["uid"] == "u-1" and answer["allowed"] is True and answer["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(answer["patch"]))
    assert {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "cairn.dev/dataset"}]} in patch

    unchanged = ClaimGate(Claims({"data": FROM_DATASET}, broken=True)).review(review(pod("data")))  # type: ignore[arg-type]
    assert unchanged["response"] == {"uid": "u-1", "allowed": True}
    missing = ClaimGate(Claims({})).review(review(pod("data")))  # type: ignore[arg-type]
    assert "patch" not in missing["response"]
    update = ClaimGate(Claims({"data": FROM_DATASET})).review(review(pod("data"), "UPDATE"))  # type: ignore[arg-type]
    assert "patch" not in update["response"]


@pytest.mark.parametrize("count", [33])
def test_a_pod_mounting_too_many_claims_costs_no_reads(count: int) -> None:
    claims = Claims({f"c{i}": FROM_DATASET for i in range(count)})
    answer = ClaimGate(claims).review(review(pod(*(f"c{i}" for i in range(count)))))  # type: ignore[arg-type]
    assert "patch" not in answer["response"] and claims.reads == 0
