"""Filling a new volume before it is Ready: the node agent's half of the volume populator.

The volume is formatted, mounted at a private path under the agent's state directory, filled,
and unmounted again, all before any pod can see it. A restored checkpoint lands at the same
relative path it had in the volume it came from, so a job's resume logic finds it where it
wrote it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client

from cairn.api.volume import LocalVolumeSpec, PoolClass, VolumeAccess
from cairn.node_agent.checkpoints.restore.engine import RestoreError, count_restored_bytes, restore
from cairn.node_agent.checkpoints.restore.sources import LocalDirectory, SourcesError, sources_for
from cairn.node_agent.host import mounts
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.volumes.index import PopulateError
from cairn.paths import UnsafePathError, safe_relative_path

log = logging.getLogger("cairn.node.populate")
DEFAULT_FS_TYPE = "ext4"


def populate_volume(
    name: str, spec: LocalVolumeSpec, device: str, work_dir: Path, fill: Callable[[Path], str]
) -> str:
    """Format, mount privately, `fill(root)`, unmount; returns fill's description of what it did."""
    if spec.access != VolumeAccess.MOUNT:
        raise PopulateError(
            "PopulateUnsupported", f"volume {name} is a block volume; a Checkpoint fills filesystems only"
        )
    if spec.pool == PoolClass.MEMORY:
        # A memory volume's "device" is its tmpfs, already mounted where only the agent looks.
        return fill(Path(device))
    fs_type = spec.fs_type or DEFAULT_FS_TYPE
    found = mounts.probe_filesystem(device)
    if found is None:
        mounts.make_filesystem(device, fs_type)
    elif found != fs_type:
        raise PopulateError("PopulateFailed", f"volume {name} already holds {found}, not {fs_type}")
    root = work_dir / name
    mounts.ensure_directory(str(root))
    if not mounts.is_mount_point(str(root)):
        mounts.mount(device, str(root), fs_type)
    try:
        return fill(root)
    finally:
        mounts.unmount(str(root))
        root.rmdir()


def release_unfinished_fills(work_dir: Path) -> list[str]:
    """Unmount what a killed agent left mid-fill; returns the volumes it was filling.

    A mount outlives the process that made it: without this, the restarted agent's lvremove of
    the half-filled LV (it is made again from scratch) fails on its own stale mount, and the
    volume waits forever. No pod can hold these mounts: they are the agent's private paths.
    """
    if not work_dir.is_dir():
        return []
    released = []
    for root in sorted(work_dir.iterdir()):
        if root.is_symlink() or not root.is_dir():
            continue
        if mounts.is_mount_point(str(root)):
            mounts.unmount(str(root))
            released.append(root.name)
        try:
            root.rmdir()
        except OSError as error:  # not empty: something other than a fill wrote here; keep it
            log.warning("left %s in place: %s", root, error)
    return released


def restore_into_volume(
    api_client: client.ApiClient,
    node_name: str,
    volume_name: str,
    spec: LocalVolumeSpec,
    root: Path,
    local_directory: LocalDirectory,
    identity: PeerIdentity | None,
    disk_directory: LocalDirectory | None = None,
) -> str:
    """Restore spec.populateFrom under `root`, at the checkpoint's own relative path.

    Peers are asked with this node's identity and the volume's name, which is what authorises a
    node that holds no copy of its own to read one.
    """
    source = spec.populate_from
    assert source is not None
    try:
        checkpoint, sources = sources_for(
            api_client,
            source.namespace,
            source.name,
            node_name,
            local_directory=local_directory,
            identity=identity,
            volume=volume_name,
            disk_directory=disk_directory,
        )
    except SourcesError as error:
        raise PopulateError("CheckpointUnavailable", str(error)) from None
    try:
        destination = root / safe_relative_path(checkpoint.spec.path)
    except UnsafePathError as error:
        raise PopulateError("PopulateFailed", f"checkpoint path refused: {error}") from None
    try:
        report = restore(checkpoint.spec.manifest_digest, sources, destination)
    except RestoreError as error:
        raise PopulateError("RestoreFailed", str(error)) from None
    count_restored_bytes(node_name, report)
    tiers = ",".join(kind.value for kind in report.tiers)
    return (
        f"Checkpoint {source.namespace}/{source.name} ({report.files} files, {report.total_bytes} bytes) "
        f"restored to {checkpoint.spec.path} from {tiers} in {report.seconds:.1f}s, every file verified"
    )


def copy_dataset_into(
    spec: LocalVolumeSpec,
    root: Path,
    data_directory: Callable[[str, str], Path | None],
    *,
    timeout: float = 1800.0,
    poll: float = 2.0,
) -> str:
    """Copy this node's verified copy of spec.populateFrom (a Dataset) under `root`.

    The node may not hold the dataset yet: the controller adds it to the dataset's targets once it
    sees this volume waiting, and this waits for the copy to become Ready. `data_directory` raises
    PopulateError when the copy will never come (the Dataset or this node's copy Failed).
    """
    source = spec.populate_from
    assert source is not None
    deadline = time.monotonic() + timeout
    while (directory := data_directory(source.namespace, source.name)) is None:
        if time.monotonic() > deadline:
            raise PopulateError(
                "DatasetNotReady",
                f"Dataset {source.namespace}/{source.name} has no Ready copy here after {timeout:.0f}s",
            )
        time.sleep(poll)
    copied = 0
    files = 0
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        target = root / relative
        if path.is_symlink():
            continue  # never in a verified copy; refuse to follow one if it appears
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied += path.stat().st_size
            files += 1
    return (
        f"Dataset {source.namespace}/{source.name}: {files} files, {copied} bytes copied from the local copy"
    )
