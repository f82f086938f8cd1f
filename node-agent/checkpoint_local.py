"""Where this node's copy of a checkpoint lives, if it has one it can vouch for.

The volume belongs to a training job, which can put anything in it, symlinks included. So a
copy is only returned if it resolves to a real directory inside the volume's staging path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cairn.api.checkpoint import Checkpoint

from .checkpoint_manifest import ManifestError, safe_relative_path


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
    except ManifestError:
        return None
    resolved_root = root.resolve()
    resolved = directory.resolve()
    if resolved != resolved_root / safe_relative_path(local.path) or not resolved.is_dir():
        return None  # a symlink somewhere on the way: refuse rather than follow it out of the volume
    return resolved
