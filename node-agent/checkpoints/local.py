"""Where this node's copy of a checkpoint lives, if it has one it can vouch for.

The volume belongs to a training job, which can put anything in it, symlinks included. So a
copy is only returned if it resolves to a real directory inside the volume's staging path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cairn.api.checkpoint import Checkpoint
from cairn.kube import ResourceClient
from cairn.paths import UnsafePathError, safe_relative_path


def local_copy_directory(
    checkpoint: Checkpoint, node_name: str, staging_path_of: Callable[[str], Path | None]
) -> Path | None:
    local = checkpoint.status.local
    if local is None or not local.present or local.node_name != node_name:
        return None
    root = staging_path_of(local.volume)
    if root is None:
        return None
    try:
        directory = root / safe_relative_path(local.path)
    except UnsafePathError:
        return None
    resolved_root = root.resolve()
    resolved = directory.resolve()
    if resolved != resolved_root / safe_relative_path(local.path) or not resolved.is_dir():
        return None  # a symlink somewhere on the way: refuse rather than follow it out of the volume
    return resolved


def checkpoint_locator(
    checkpoints: ResourceClient,
    node_name: str,
    staging_path_of: Callable[[str], Path | None],
    replica_directory: Callable[[Checkpoint, str, str], Path | None],
) -> Callable[[str, str], tuple[Path, str] | None]:
    """What the peer server serves for checkpoint namespace/name: this node's own copy
    (status.local) or the peer replica it keeps (status.peer), with the digest it must match."""

    def locate(namespace: str, name: str) -> tuple[Path, str] | None:
        item = checkpoints.get(name, namespace)
        if item is None:
            return None
        directory = local_copy_directory(item.model, node_name, staging_path_of) or replica_directory(
            item.model, namespace, name
        )
        return None if directory is None else (directory, item.model.spec.manifest_digest)

    return locate
