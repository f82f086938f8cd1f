"""Which node may read what from this node's peer server. Pure: the server brings the records.

A checkpoint's bytes belong to its namespace. The nodes with a reason to hold them are the node
that wrote it and the node chosen for its replica; anyone else must be restoring it into a volume
on its own node whose claim's namespace is the checkpoint's (the controller and the agent check
that namespace match when the volume is created, so the LocalVolume is the proof). A dataset's
.torrent goes only to the dataset's targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.volume import LocalVolume
from cairn.node_agent.host.files import Directory


@dataclass(frozen=True)
class CheckpointCopy:
    """This node's copy of a checkpoint, and the nodes its record names as holders."""

    namespace: str
    name: str
    directory: Directory
    digest: str
    origin_node: str
    replica_node: str | None

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


def checkpoint_read_refusal(
    copy: CheckpointCopy, requester: str, this_node: str, volume: tuple[str, LocalVolume] | None
) -> str | None:
    """None if `requester` may read this copy, else why not (sent back to it)."""
    if requester in {copy.origin_node, copy.replica_node, this_node}:
        return None
    if volume is None:
        return (
            f"node {requester} neither wrote checkpoint {copy.namespace}/{copy.name} nor holds its "
            "replica, and names no volume it restores it into"
        )
    volume_name, spec = volume[0], volume[1].spec
    source = spec.populate_from
    if spec.node_name != requester:
        return f"volume {volume_name} is on node {spec.node_name}, not on {requester}"
    if (
        source is None
        or source.kind != "Checkpoint"
        or (source.namespace, source.name) != (copy.namespace, copy.name)
    ):
        return f"volume {volume_name} is not being filled from checkpoint {copy.namespace}/{copy.name}"
    return None


def dataset_read_refusal(requester: str, targets: list[str], namespace: str, name: str) -> str | None:
    if requester in targets:
        return None
    return f"node {requester} is not a target of dataset {namespace}/{name}"
