"""A checkpoint the watcher is recording still counts as waiting, and a record that failed is tried again.

The drain lets an unstaged volume go once the watcher names nothing waiting and every record is
tiered. Between the moment a commit settles and the moment its Checkpoint exists, it is in neither
list; were it named nowhere, the drain would unmount the directory the watcher is hashing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from cairn.api.checkpoint import Checkpoint
from cairn.api.volume import PoolClass
from cairn.kube import Typed
from cairn.node_agent.checkpoints.watcher import CheckpointWatcher
from tests.unit.node_agent.checkpoints.test_memory_records import Policies, RecordedCheckpoints, volume_spec
from tests.unit.node_agent.checkpoints.test_restore_engine import write_checkpoint


class WatchedWhileRecording(RecordedCheckpoints):
    """Asks the watcher what waits at the moment a record is written, as the drain may at any time."""

    def __init__(self) -> None:
        super().__init__()
        self.watcher: CheckpointWatcher | None = None
        self.pending_at_create: list[tuple[float, list[str]] | None] = []
        self.failures_left = 0

    def create(self, name: str, model: Checkpoint, **kwargs: Any) -> Typed:
        assert self.watcher is not None
        self.pending_at_create.append(self.watcher.pending("vol"))
        if self.failures_left:
            self.failures_left -= 1
            raise ApiException(status=500, reason="etcdserver: request timed out")
        return super().create(name, model, **kwargs)


def watching(tmp_path: Path) -> tuple[CheckpointWatcher, WatchedWhileRecording]:
    write_checkpoint(tmp_path / "vol" / "step_100")
    api = WatchedWhileRecording()
    watcher = CheckpointWatcher(
        "n1",
        Policies(),  # type: ignore[arg-type]
        api,  # type: ignore[arg-type]
        lambda volume: volume_spec(PoolClass.NVME),
    )
    api.watcher = watcher
    watcher.register("vol", str(tmp_path / "vol"))
    return watcher, api


def test_a_checkpoint_being_recorded_is_still_named_as_waiting(tmp_path: Path) -> None:
    watcher, api = watching(tmp_path)
    [watched] = watcher._volumes.values()
    for now in (0.0, 10.0, 20.0):
        watcher.poll(watched, now)
    assert len(api.objects) == 1
    [seen] = api.pending_at_create
    assert seen is not None and seen[1] == ["step_100"], (
        f"while step_100 was being recorded the watcher named {seen}: a drain would let the volume go"
    )
    assert watcher.pending("vol") == (watched.polled_at, [])


def test_a_record_that_failed_is_tried_again_on_a_later_look(tmp_path: Path) -> None:
    watcher, api = watching(tmp_path)
    api.failures_left = 1
    [watched] = watcher._volumes.values()
    failed = 0
    for now in (0.0, 10.0, 20.0):
        try:
            watcher.poll(watched, now)
        except ApiException:
            failed += 1
    assert failed == 1
    for now in (30.0, 40.0, 50.0):
        watcher.poll(watched, now)
    assert list(api.objects) and len(api.pending_at_create) == 2, (
        "a checkpoint whose record failed once was never recorded: it is lost to tiering and restore"
    )
