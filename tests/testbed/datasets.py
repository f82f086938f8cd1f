"""Dataset objects the tests, the demo and the benches create: data in the bed's S3, on named nodes."""

from __future__ import annotations

from typing import Any


def s3_dataset(
    name: str,
    namespace: str,
    url: str,
    endpoint: str,
    secret: str,
    nodes: list[str],
    piece_size: int = 0,
    **spec_fields: Any,
) -> dict[str, Any]:
    """A Dataset reading `url` (s3://bucket/prefix) with the keys in Secret `secret`, onto `nodes`."""
    spec: dict[str, Any] = {
        "source": {"s3": {"url": url, "endpoint": endpoint, "credentialsSecretRef": {"name": secret}}},
        "nodes": {"names": nodes},
        "pool": "nvme",
    }
    if piece_size:
        spec["pieceSize"] = piece_size
    spec.update(spec_fields)
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def pod_waiting_for(
    name: str, namespace: str, datasets: str, affinity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pod naming `datasets` (comma-separated) in the annotation the chart's gate acts on.

    Its image is never pulled: on beds without kubelets the pod only has to be admitted and placed.
    """
    spec: dict[str, Any] = {"containers": [{"name": "trainer", "image": "registry.invalid/trainer:1"}]}
    if affinity:
        spec["affinity"] = affinity
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"cairn.dev/dataset": datasets}},
        "spec": spec,
    }
