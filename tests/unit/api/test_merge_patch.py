"""Status patches are built from the models: only the fields given, None as null at any depth."""

from __future__ import annotations

from cairn.api.checkpoint import CheckpointPhase, CheckpointStatus, RemoteCopy
from cairn.api.dataset import DatasetNodeStatus, DatasetStatus, NodePhase
from cairn.api.disk import DiskState, LocalDiskStatus
from cairn.api.volume import LocalVolumeStatus, VolumePhase


def test_only_the_fields_given_are_sent_by_their_wire_names() -> None:
    patch = LocalVolumeStatus(
        phase=VolumePhase.READY, capacity_bytes=1024, volume_group="cairn-nvme"
    ).merge_patch()
    assert patch == {"phase": "Ready", "capacityBytes": 1024, "volumeGroup": "cairn-nvme"}
    assert LocalDiskStatus(state=DiskState.MISSING).merge_patch() == {
        "state": "Missing"
    }  # alias "class" unset


def test_a_field_given_as_none_is_deleted_at_any_depth() -> None:
    assert LocalVolumeStatus(expansion_error=None).merge_patch() == {"expansionError": None}
    uploading = CheckpointStatus(
        phase=CheckpointPhase.UPLOADING, remote=RemoteCopy(url="s3://b/p/", verified_at=None)
    ).merge_patch()
    assert uploading == {"phase": "Uploading", "remote": {"url": "s3://b/p/", "verifiedAt": None}}


def test_a_nested_value_replaces_what_it_names_defaults_included() -> None:
    report = DatasetNodeStatus(phase=NodePhase.READY, progress=1.0)
    patch = DatasetStatus(nodes={"gpu-1": report}).merge_patch()
    # The node's earlier byte counts must not survive beside a new report.
    assert patch["nodes"]["gpu-1"]["bytesFromPeers"] == 0 and patch["nodes"]["gpu-1"]["phase"] == "Ready"
    assert set(patch) == {"nodes"}
