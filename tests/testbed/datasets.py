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
