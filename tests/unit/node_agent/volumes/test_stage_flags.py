"""The mount options NodeStage uses, decided without mounting anything."""

from __future__ import annotations

from cairn.node_agent.volumes.node_service import stage_mount_flags


def test_xfs_is_staged_without_the_duplicate_uuid_check_so_a_clone_mounts_beside_its_source() -> None:
    # A clone is a byte copy: its xfs carries the source's UUID, and XFS refuses to mount a second
    # filesystem with a UUID already mounted on the node. Found by Kubernetes' storage suite
    # ("should concurrently access the volume and its clone from pods on the same node").
    assert stage_mount_flags([], read_only=False, fs_type="xfs") == ["nouuid"]
    assert stage_mount_flags(["noatime"], read_only=True, fs_type="xfs") == ["noatime", "nouuid", "ro"]
    assert stage_mount_flags(["nouuid"], read_only=False, fs_type="xfs") == ["nouuid"]


def test_ext4_is_staged_with_the_requested_flags_only() -> None:
    # ext4 mounts duplicate UUIDs anyway; nouuid is not even an ext4 option.
    assert stage_mount_flags(["noatime"], read_only=False, fs_type="ext4") == ["noatime"]
