"""Where this node's copies of a checkpoint live, if it has any it can vouch for.

The volume belongs to a training job, which can put anything in it, symlinks included. So a
copy is returned as a `TenantDirectory`, the volume's root and the path below it, which is only
ever reached through directory descriptors that follow no link, at every use, not just here.

A memory volume's checkpoint also gets a copy on the node's disks, in the agent's tier store
(status.disk); only the agent writes there, so it is a plain directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cairn.api.checkpoint import Checkpoint
from cairn.api.names import REPLICA_NODE_LABEL
from cairn.kube import ResourceClient
from cairn.node_agent.host.files import Directory, TenantDirectory, open_directory_beneath
from cairn.node_agent.p2p.authorisation import CheckpointCopy
from cairn.paths import UnsafePathError, safe_relative_path


def disk_copy_path(store_root: Path, namespace: str, name: str) -> Path:
    """Where the tier store keeps a checkpoint's local-tier copy: `<store>/<namespace>/<name>`."""
    return store_root / namespace / name


def disk_copy_directory(checkpoint: Checkpoint, node_name: str, store_root: Path) -> Path | None:
    """This node's tier-store copy (status.disk), if status says it is here and it is on disk.

    Status names it relative to the store's parent (`tier-store/<namespace>/<name>`), as a peer
    replica is named, so it reads as where on the node it is.
    """
    disk = checkpoint.status.disk
    if disk is None or not disk.present or disk.node_name != node_name:
        return None
    try:
        relative = safe_relative_path(disk.path)
    except UnsafePathError:
        return None
    if len(relative.parts) != 3 or relative.parts[0] != store_root.name:
        return None  # not one of the store's own directories: never read elsewhere on its word
    directory = store_root.joinpath(*relative.parts[1:])
    return directory if directory.is_dir() and not directory.is_symlink() else None


def local_copy_directory(
    checkpoint: Checkpoint,
    node_name: str,
    staging_path_of: Callable[[str], Path | None],
    *,
    probe: bool = True,
) -> TenantDirectory | None:
    """This node's copy, if its volume is staged here; with `probe`, only if it is reachable now.

    Without `probe` the caller meets whatever is in the way at its own open, as an error to report.
    """
    local = checkpoint.status.local
    if local is None or not local.present or local.node_name != node_name:
        return None
    root = staging_path_of(local.volume)
    if root is None:
        return None
    try:
        directory = TenantDirectory(root, safe_relative_path(local.path))
        if probe:
            os.close(open_directory_beneath(directory))
    except (UnsafePathError, OSError):
        return None  # gone, or a symlink somewhere on the way: refuse rather than follow it
    return directory


def checkpoint_locator(
    checkpoints: ResourceClient,
    node_name: str,
    staging_path_of: Callable[[str], Path | None],
    replica_directory: Callable[[Checkpoint, str, str], Path | None],
    tier_store_root: Path | None = None,
) -> Callable[[str, str], CheckpointCopy | None]:
    """What the peer server serves for checkpoint namespace/name: this node's own copy
    (status.local, in memory or on disk), its tier-store copy (status.disk, under
    `tier_store_root`), or the peer replica it keeps (status.peer), with the digest it must match
    and the nodes the record names as its holders."""

    def locate(namespace: str, name: str) -> CheckpointCopy | None:
        item = checkpoints.get(name, namespace)
        if item is None:
            return None
        directory: Directory | None = (
            local_copy_directory(item.model, node_name, staging_path_of)
            or (
                disk_copy_directory(item.model, node_name, tier_store_root)
                if tier_store_root is not None
                else None
            )
            or replica_directory(item.model, namespace, name)
        )
        if directory is None:
            return None
        return CheckpointCopy(
            namespace,
            name,
            directory,
            item.model.spec.manifest_digest,
            origin_node=item.model.spec.node_name,
            replica_node=(item.metadata.get("labels") or {}).get(REPLICA_NODE_LABEL),
        )

    return locate
