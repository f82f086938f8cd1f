"""One tenant's series cannot stall the node's tiering, and retention never leaves a volume.

The tierer runs against small in-process fakes of the Checkpoint and CheckpointPolicy API (named
as such) and real directories: retention deletes real trees, so what it may not delete is real too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cairn.api.checkpoint import (
    Checkpoint,
    CheckpointPhase,
    CheckpointPolicy,
    CheckpointPolicySpec,
    CheckpointSpec,
    CheckpointStatus,
    LocalCopy,
    RetentionSpec,
)
from cairn.kube import Typed
from cairn.node_agent.checkpoints.tiering import CheckpointTierer

NODE = "n1"


class FakeCheckpointApi:
    """Checkpoint objects by (namespace, name); status patches are merged as the apiserver would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Typed] = {}

    def add(self, namespace: str, volume: str, step: int) -> str:
        name = f"{volume}-{step}"
        path = f"ckpt/step_{step}"
        spec = CheckpointSpec(
            policy="keep-one",
            pvc_name=f"pvc-{volume}",
            node_name=NODE,
            volume=volume,
            path=path,
            step=step,
            size_bytes=1,
            size="1",
            file_count=1,
            hash_algorithm="blake3",
            manifest_digest="blake3:" + "0" * 64,
        )
        status = CheckpointStatus(
            phase=CheckpointPhase.COMMITTED, local=LocalCopy(node_name=NODE, volume=volume, path=path)
        )
        self.objects[(namespace, name)] = Typed(
            Checkpoint(spec=spec, status=status), {"name": name, "namespace": namespace}
        )
        return name

    def list(self, label_selector: str | None = None) -> list[Typed]:
        return list(self.objects.values())

    def get(self, name: str, namespace: str | None = None) -> Typed | None:
        return self.objects.get((namespace or "", name))

    def patch_status(self, name: str, status: CheckpointStatus, namespace: str | None = None) -> Typed:
        item = self.objects[(namespace or "", name)]
        merged = item.model.status.model_dump() | status.model_dump(exclude_unset=True)
        item.model = item.model.model_copy(update={"status": CheckpointStatus.model_validate(merged)})
        return item

    def delete(self, name: str, namespace: str | None = None) -> None:
        del self.objects[(namespace or "", name)]


class FakePolicyApi:
    def __init__(self, broken_namespace: str | None = None) -> None:
        self.broken_namespace = broken_namespace

    def get(self, name: str, namespace: str | None = None) -> Typed:
        if namespace == self.broken_namespace:
            raise ValueError("this tenant's policy cannot be read")
        spec = CheckpointPolicySpec(retention=RetentionSpec(keep_local=1))
        return Typed(CheckpointPolicy(spec=spec), {"name": name, "namespace": namespace})


class RecordedEvents:
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def record(self, involved: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        self.reasons.append((involved["name"], reason))


def volume_with_two_checkpoints(root: Path) -> None:
    for step in (1, 2):
        (root / "ckpt" / f"step_{step}").mkdir(parents=True)
        (root / "ckpt" / f"step_{step}" / "shard").write_bytes(b"x" * 10)


def tierer(tmp_path: Path, api: FakeCheckpointApi, policies: FakePolicyApi, events: RecordedEvents):
    volumes = {"vol-a": tmp_path / "a", "vol-b": tmp_path / "b"}
    return CheckpointTierer(
        NODE,
        api,  # type: ignore[arg-type]
        policies,  # type: ignore[arg-type]
        lambda namespace, name: {},
        tmp_path / "state",
        volumes.get,
        events,  # type: ignore[arg-type]
    )


def test_a_directory_swapped_for_a_link_before_retention_fails_that_checkpoint_only(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    for volume, namespace in (("vol-a", "team-a"), ("vol-b", "team-b")):
        volume_with_two_checkpoints(tmp_path / volume[-1])
        api.add(namespace, volume, 1)
        api.add(namespace, volume, 2)
    # Team a's job swaps its oldest checkpoint's directory for a link to a host directory.
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("root:x:0:0\n")
    os.rename(tmp_path / "a" / "ckpt" / "step_1", tmp_path / "a" / "ckpt" / "elsewhere")
    os.symlink(host, tmp_path / "a" / "ckpt" / "step_1")

    tierer(tmp_path, api, FakePolicyApi(), events).run_pass()

    assert (host / "passwd").read_text() == "root:x:0:0\n"
    assert (tmp_path / "a" / "ckpt" / "step_1").is_symlink()
    failed = api.get("vol-a-1", "team-a")
    assert failed is not None and failed.model.status.phase == CheckpointPhase.FAILED
    assert failed.model.status.reason == "UnsafeCheckpointPath"
    assert "following a link" in (failed.model.status.message or "")
    # Team b's retention went on: its oldest local-only checkpoint is gone, the newest kept.
    assert api.get("vol-b-1", "team-b") is None and not (tmp_path / "b" / "ckpt" / "step_1").exists()
    assert api.get("vol-b-2", "team-b") is not None and (tmp_path / "b" / "ckpt" / "step_2").is_dir()


def test_one_series_that_raises_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    api, events = FakeCheckpointApi(), RecordedEvents()
    for volume, namespace in (("vol-a", "team-a"), ("vol-b", "team-b")):
        volume_with_two_checkpoints(tmp_path / volume[-1])
        api.add(namespace, volume, 1)
        api.add(namespace, volume, 2)

    tierer(tmp_path, api, FakePolicyApi(broken_namespace="team-a"), events).run_pass()

    assert ("vol-a-2", "SeriesFailed") in events.reasons
    assert api.get("vol-a-1", "team-a") is not None  # untouched: its policy could not be read
    assert api.get("vol-b-1", "team-b") is None  # team b's retention ran all the same
