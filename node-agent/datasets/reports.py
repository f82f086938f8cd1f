"""How this node tells a Dataset what it did: its own entry in status.nodes, or a Failed condition."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cairn.api.base import condition
from cairn.api.dataset import DatasetNodeStatus, DatasetStatus
from cairn.kube import ResourceClient, Typed

log = logging.getLogger("cairn.node.datasets")


@dataclass
class NodeReports:
    node_name: str
    datasets: ResourceClient

    def report(self, name: str, namespace: str, report: DatasetNodeStatus) -> None:
        """Only this node's entry is sent, so the seeder and every other target never overwrite each other."""
        self.datasets.patch_status(name, DatasetStatus(nodes={self.node_name: report}), namespace=namespace)

    def fail(self, item: Typed, namespace: str, reason: str, message: str) -> None:
        log.warning("dataset %s/%s failed: %s: %s", namespace, item.name, reason, message)
        self.datasets.patch_status(
            item.name,
            DatasetStatus(
                conditions=[condition("Failed", True, reason, message, item.model.status.conditions)]
            ),
            namespace=namespace,
        )
