"""Tiering decisions and the local-copy gate, without a cluster."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointPolicySpec,
    CheckpointSpec,
    CheckpointStatus,
    LocalCopy,
    RemoteCopy,
    S3Target,
    SecretKeyRef,
)
from cairn.kube import Typed
from cairn.node_agent.checkpoints.local import local_copy_directory
from cairn.node_agent.checkpoints.tiering import (
    group_series,
    needs_upload,
    tier_lag_seconds,
)
from cairn.node_agent.checkpoints.upload import checkpoint_location
from cairn.node_agent.volumes.staged import StagedVolumes
from cairn.s3 import S3Location

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TARGET = S3Target(endpoint="http://s3", bucket="b", credentials_secret_ref=SecretKeyRef(name="s"))


def checkpoint(
    step: int = 1,
    path: str = "ckpt/step_1",
    *,
    local: bool = True,
    verified: bool = False,
    reason: str | None = None,
    node: str = "n1",
) -> Checkpoint:
    status = CheckpointStatus(
        local=LocalCopy(node_name=node, volume="vol", path=path, present=local),
        remote=RemoteCopy(url="s3://b/p/", verified_at=NOW if verified else None),
        reason=reason,
    )
    spec = CheckpointSpec(
        policy="p",
        pvc_name="pvc",
        node_name=node,
        volume="vol",
        path=path,
        step=step,
        size_bytes=1,
        size="1",
        file_count=1,
        hash_algorithm="blake3",
        manifest_digest="blake3:" + "0" * 64,
    )
    return Checkpoint(spec=spec, status=status)


def test_tiers_name_only_copies_that_can_be_restored() -> None:
    assert checkpoint(local=True, verified=False).status.restorable_tiers() == "local"
    assert checkpoint(local=True, verified=True).status.restorable_tiers() == "local,s3"
    assert checkpoint(local=False, verified=True).status.restorable_tiers() == "s3"
    assert checkpoint(local=False, verified=False).status.restorable_tiers() == ""
    with_peer = checkpoint(local=False, verified=True).status
    with_peer.peer = LocalCopy(node_name="n2", volume="", path="replicas/ns/c")
    assert with_peer.restorable_tiers() == "peer,s3"


def test_uploads_are_needed_until_verified_and_never_after_the_files_changed() -> None:
    remote = CheckpointPolicySpec(target=TARGET)
    assert needs_upload(checkpoint(), remote)
    assert not needs_upload(checkpoint(verified=True), remote)
    assert not needs_upload(checkpoint(), CheckpointPolicySpec())  # local-only
    assert needs_upload(checkpoint(reason="CredentialsSecretMissing"), remote)  # fixable: retried
    assert not needs_upload(checkpoint(reason="ChangedAfterCommit"), remote)


def test_tier_lag_is_the_age_of_the_oldest_unverified_checkpoint() -> None:
    series = [
        (checkpoint(1, verified=True), NOW - timedelta(minutes=30)),
        (checkpoint(2), NOW - timedelta(minutes=10)),
        (checkpoint(3), NOW - timedelta(minutes=1)),
    ]
    assert tier_lag_seconds(series, NOW) == 600
    assert tier_lag_seconds(series[:1], NOW) == 0


def test_series_are_one_directory_of_one_volume() -> None:
    items = [
        Typed(checkpoint(100, "actor/step_100"), {"namespace": "a", "name": "x"}),
        Typed(checkpoint(100, "critic/step_100"), {"namespace": "a", "name": "y"}),
        Typed(checkpoint(200, "actor/step_200"), {"namespace": "a", "name": "z"}),
    ]
    grouped = group_series(items)
    assert sorted((k.directory, len(v)) for k, v in grouped.items()) == [("actor", 2), ("critic", 1)]


def test_remote_keys_mirror_the_volume_are_the_records_own_and_refuse_traversal() -> None:
    location = checkpoint_location("b", "/runs/", "ns", "pvc", "ckpt/step_1", "uid-1")
    assert location.url == "s3://b/runs/ns/pvc/ckpt/step_1/uid-1/"
    assert S3Location.from_url(location.url) == location
    # The same claim name and step path under another record (a claim deleted and made again):
    rerun = checkpoint_location("b", "/runs/", "ns", "pvc", "ckpt/step_1", "uid-2")
    assert not rerun.prefix.startswith(location.prefix + "/") and rerun != location
    with pytest.raises(ValueError, match="other"):
        checkpoint_location("b", "", "ns", "pvc", "../other", "uid-1")
    for uid in ("", "a/b"):
        with pytest.raises(ValueError, match="uid"):
            checkpoint_location("b", "", "ns", "pvc", "ckpt/step_1", uid)


def test_a_local_copy_is_only_returned_inside_its_volume(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    (root / "ckpt" / "step_1").mkdir(parents=True)
    staged = {"vol": root}.get
    found = local_copy_directory(checkpoint(), "n1", staged)
    assert found is not None and (found.root, str(found.relative)) == (root, "ckpt/step_1")
    assert local_copy_directory(checkpoint(), "n2", staged) is None  # another node's copy
    assert local_copy_directory(checkpoint(local=False), "n1", staged) is None
    # The job owns the volume: a symlink pointing out of it must not be followed.
    outside = tmp_path / "host-secrets"
    outside.mkdir()
    os.symlink(outside, root / "ckpt" / "step_2")
    assert local_copy_directory(checkpoint(2, "ckpt/step_2"), "n1", staged) is None


def test_staged_volumes_survive_a_restart_only_while_mounted(tmp_path: Path) -> None:
    first = StagedVolumes(tmp_path)
    first.add("mounted", "/")  # the root is always a mount point
    first.add("gone", str(tmp_path / "not-mounted"))
    recovered = StagedVolumes(tmp_path).recover()
    assert recovered == {"mounted": Path("/")}
    assert not (tmp_path / "staged" / "gone.json").exists()
