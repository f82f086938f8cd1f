"""Checkpoint commit detection: which directories are finished checkpoints, and when to say so.

Most tests feed hand-made snapshots with explicit times to the pure rules; the last ones list real
directories under tmp_path with snapshot_tree. No root, no clock: "now" is always passed in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.node_agent.checkpoints.commit import (
    DEFAULT_RULES,
    CandidateCheckpoint,
    CommitKind,
    CommitRule,
    CommitTracker,
    DirSnapshot,
    FileStat,
    compile_step_pattern,
    find_committed,
    is_settled,
    snapshot_tree,
)

SETTLE = 10.0


def snap(files: dict[str, tuple[int, int]], dirs: tuple[str, ...] = ()) -> DirSnapshot:
    """A snapshot from {path: (size, mtime_ns)}; parent directories are implied."""
    entries = [FileStat(path, size, mtime, False) for path, (size, mtime) in files.items()]
    directories = set(dirs)
    for path in [*files, *dirs]:
        parts = path.split("/")[:-1]
        directories |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
    entries += [FileStat(d, 0, 1, True) for d in directories]
    return DirSnapshot.of(entries)


def dcp_shards(directory: str, sizes: dict[int, int], mtime: int = 1) -> dict[str, tuple[int, int]]:
    return {f"{directory}/__{rank}_0.distcp": (size, mtime) for rank, size in sizes.items()}


def paths(found: list[CandidateCheckpoint]) -> list[str]:
    return [c.path for c in found]


def test_dcp_checkpoint_with_shards_but_no_metadata_is_never_reported() -> None:
    half_written = snap(dcp_shards("ckpt/step_100", {0: 4096, 1: 4096}))
    assert find_committed(half_written) == []
    tracker = CommitTracker(settle_seconds=SETTLE)
    for now in (0.0, 10.0, 100.0, 10_000.0):
        assert tracker.observe(half_written, now) == []
    assert tracker.waiting() == []


def test_dcp_checkpoint_is_committed_once_metadata_exists() -> None:
    files = {**dcp_shards("ckpt/step_100", {0: 4096, 1: 4096}), "ckpt/step_100/.metadata": (512, 2)}
    assert find_committed(snap(files)) == [CandidateCheckpoint(100, "ckpt/step_100", CommitKind.DCP)]


def test_metadata_written_while_a_shard_grows_waits_until_the_shard_stops_changing() -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    metadata = {"step_100/.metadata": (512, 5)}
    growing = [
        snap({**dcp_shards("step_100", {0: 4096, 1: 1024}, mtime=10), **metadata}),
        snap({**dcp_shards("step_100", {0: 4096, 1: 2048}, mtime=20), **metadata}),
        # Same size as before but rewritten: only the mtime shows it.
        snap({**dcp_shards("step_100", {0: 4096, 1: 2048}, mtime=30), **metadata}),
    ]
    for second, snapshot in enumerate(growing):
        assert tracker.observe(snapshot, now=second * 60.0) == [], "reported while a shard still changed"
    final = snap({**dcp_shards("step_100", {0: 4096, 1: 4096}, mtime=40), **metadata})
    assert tracker.observe(final, now=200.0) == []
    assert tracker.observe(final, now=200.0 + SETTLE - 0.1) == []
    assert paths(tracker.observe(final, now=200.0 + SETTLE)) == ["step_100"]


def test_marker_file_commits_a_checkpoint_and_its_name_is_configurable() -> None:
    files = {"run/checkpoint-2000/model.safetensors": (10, 1), "run/checkpoint-2000/COMMITTED": (0, 2)}
    assert find_committed(snap(files)) == [
        CandidateCheckpoint(2000, "run/checkpoint-2000", CommitKind.MARKER)
    ]
    done = {"run/checkpoint-2000/model.safetensors": (10, 1), "run/checkpoint-2000/DONE": (0, 2)}
    assert find_committed(snap(done), [CommitRule.marker_file("DONE")], r"(\d+)$") == [
        CandidateCheckpoint(2000, "run/checkpoint-2000", CommitKind.MARKER)
    ]
    assert find_committed(snap(done)) == [], "only the configured marker commits"


def test_directory_named_like_the_marker_does_not_commit() -> None:
    assert find_committed(snap({"step_5/data.bin": (1, 1)}, dirs=("step_5/COMMITTED",))) == []


def test_orbax_temporary_directory_is_ignored_and_reported_after_rename() -> None:
    inside = {"_CHECKPOINT_METADATA": (100, 1), "default/_METADATA": (300, 2), "default/d/abc": (4096, 3)}
    tracker = CommitTracker(settle_seconds=SETTLE)
    for tmp in ("ckpt/100.orbax-checkpoint-tmp-1712345678", "ckpt/100.orbax-checkpoint-tmp"):
        writing = snap({f"{tmp}/{name}": stat for name, stat in inside.items()})
        assert find_committed(writing) == []
        assert tracker.observe(writing, 0.0) == []
        assert tracker.observe(writing, 1000.0) == []
    renamed = snap({f"ckpt/100/{name}": stat for name, stat in inside.items()})
    assert find_committed(renamed) == [CandidateCheckpoint(100, "ckpt/100", CommitKind.ORBAX)]
    assert tracker.observe(renamed, 2000.0) == []
    assert paths(tracker.observe(renamed, 2000.0 + SETTLE)) == ["ckpt/100"]


def test_orbax_final_name_without_checkpoint_metadata_needs_the_opt_in() -> None:
    old_orbax = snap({"ckpt/checkpoint_300/default/checkpoint": (100, 1)})
    assert find_committed(old_orbax) == [], "a bare step directory could be any writer's, half-written"
    assert find_committed(old_orbax, [CommitRule.orbax(require_metadata=False)]) == [
        CandidateCheckpoint(300, "ckpt/checkpoint_300", CommitKind.ORBAX)
    ]


def test_orbax_opt_in_still_ignores_temporary_directories() -> None:
    writing = snap({"ckpt/300.orbax-checkpoint-tmp-99/default/checkpoint": (100, 1)})
    assert find_committed(writing, [CommitRule.orbax(require_metadata=False)]) == []


def test_checkpoint_is_reported_exactly_once() -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    done = snap({**dcp_shards("step_7", {0: 10}), "step_7/.metadata": (5, 2)})
    reports = [c for now in range(0, 200, 5) for c in tracker.observe(done, float(now))]
    assert paths(reports) == ["step_7"]
    # Writing the manifest into it afterwards changes the listing, but it was already reported.
    with_manifest = snap(
        {**dcp_shards("step_7", {0: 10}), "step_7/.metadata": (5, 2), "step_7/m.json": (9, 3)}
    )
    assert tracker.observe(with_manifest, 300.0) == []
    assert tracker.observe(with_manifest, 400.0) == []


def test_directory_that_disappears_is_forgotten_and_a_new_one_of_that_name_is_new() -> None:
    tracker = CommitTracker(settle_seconds=0)
    done = snap({"step_7/.metadata": (5, 2)})
    assert paths(tracker.observe(done, 0.0)) == ["step_7"]
    assert tracker.observe(snap({}), 1.0) == []
    assert tracker.reported == frozenset()
    rewritten = snap({"step_7/.metadata": (6, 9)})
    assert paths(tracker.observe(rewritten, 2.0)) == ["step_7"]


def test_committed_directory_that_vanishes_before_settling_is_not_reported() -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    assert tracker.observe(snap({"step_7/.metadata": (5, 2)}), 0.0) == []
    assert tracker.observe(snap({}), 5.0) == []
    assert tracker.waiting() == []
    assert tracker.observe(snap({"step_7/.metadata": (5, 2)}), 12.0) == [], "settling starts over"


def test_marker_removed_again_restarts_settling() -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    files = {"step_9/data": (10, 1)}
    assert tracker.observe(snap({**files, "step_9/COMMITTED": (0, 2)}), 0.0) == []
    assert tracker.observe(snap(files), 5.0) == []
    assert tracker.observe(snap({**files, "step_9/COMMITTED": (0, 2)}), 11.0) == []
    assert paths(tracker.observe(snap({**files, "step_9/COMMITTED": (0, 2)}), 21.0)) == ["step_9"]


def test_in_progress_file_holds_a_committed_checkpoint_back_and_says_so() -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    stuck = snap({"step_3/.metadata": (5, 1), "step_3/__1_0.distcp.tmp": (100, 1)})
    assert tracker.observe(stuck, 0.0) == []
    assert tracker.observe(stuck, 100.0) == []
    [waiting] = tracker.waiting()
    assert (waiting.candidate.path, waiting.unchanged_since, waiting.in_progress) == (
        "step_3",
        0.0,
        ("__1_0.distcp.tmp",),
    )
    done = snap({"step_3/.metadata": (5, 1), "step_3/__1_0.distcp": (100, 1)})
    assert tracker.observe(done, 101.0) == []
    assert paths(tracker.observe(done, 111.0)) == ["step_3"]


def test_directory_inside_a_checkpoint_is_part_of_it_not_a_second_checkpoint() -> None:
    files = {
        "step_1/.metadata": (5, 1),
        "step_1/extra_2/COMMITTED": (0, 1),
        # Sorts between step_1 and step_1/...: must not hide that step_1/extra_2 is inside step_1.
        "step_1.orbax-checkpoint-tmp-9/x": (1, 1),
        "step_2/_CHECKPOINT_METADATA": (5, 1),
        "step_2/default/ocdbt.process_0/.metadata": (5, 1),
    }
    assert paths(find_committed(snap(files))) == ["step_1", "step_2"]


@pytest.mark.parametrize(
    ("name", "step"),
    [("step_100", 100), ("checkpoint-2000", 2000), ("100", 100), ("step_000300", 300), ("global_step7", 7)],
)
def test_default_step_pattern_reads_the_trailing_number(name: str, step: int) -> None:
    assert find_committed(snap({f"ckpt/{name}/.metadata": (5, 1)})) == [
        CandidateCheckpoint(step, f"ckpt/{name}", CommitKind.DCP)
    ]


def test_committed_directory_without_a_step_is_not_reported() -> None:
    assert find_committed(snap({"ckpt/latest/.metadata": (5, 1), "ckpt/step_x/COMMITTED": (0, 1)})) == []


def test_custom_step_pattern_selects_only_matching_directories() -> None:
    files = {"ckpt_5_final/.metadata": (5, 1), "ckpt_6_partial/.metadata": (5, 1)}
    assert paths(find_committed(snap(files), DEFAULT_RULES, r"^ckpt_(\d+)_final$")) == ["ckpt_5_final"]


@pytest.mark.parametrize("pattern", [r"\d+$", r"(\d+)_(\d+)$"])
def test_step_pattern_must_have_exactly_one_group(pattern: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        compile_step_pattern(pattern)


def test_marker_name_must_be_a_plain_file_name() -> None:
    with pytest.raises(ValueError, match="plain file name"):
        CommitRule.marker_file("sub/COMMITTED")


def test_checkpoints_come_out_in_step_order() -> None:
    files = {f"run/step_{n}/.metadata": (5, 1) for n in (30, 4, 200)}
    tracker = CommitTracker(settle_seconds=0)
    assert [c.step for c in tracker.observe(snap(files), 0.0)] == [4, 30, 200]


def test_checkpoints_reported_before_a_restart_are_not_reported_again() -> None:
    tracker = CommitTracker(settle_seconds=0, reported=["step_1", "step_gone_5"])
    files = {"step_1/.metadata": (5, 1), "step_2/.metadata": (5, 1)}
    assert paths(tracker.observe(snap(files), 0.0)) == ["step_2"]
    assert tracker.reported == frozenset({"step_1", "step_2"})


def test_is_settled_needs_an_identical_listing_for_the_whole_settle_time() -> None:
    before = snap({"a": (10, 1), "b": (20, 2)})
    assert is_settled(before, snap({"a": (10, 1), "b": (20, 2)}), 10.0, 10.0)
    assert not is_settled(before, before, 9.99, 10.0)
    assert not is_settled(before, snap({"a": (10, 1), "b": (21, 2)}), 60.0, 10.0), "size changed"
    assert not is_settled(before, snap({"a": (10, 1), "b": (20, 3)}), 60.0, 10.0), "mtime changed"
    assert not is_settled(before, snap({"a": (10, 1)}), 60.0, 10.0), "file removed"
    assert not is_settled(before, snap({"a": (10, 1), "b": (20, 2), "c": (0, 4)}), 60.0, 10.0), "file added"
    assert not is_settled(snap({"x.partial": (1, 1)}), snap({"x.partial": (1, 1)}), 60.0, 10.0)
    with pytest.raises(ValueError):
        is_settled(before, before, 1.0, -1.0)


def test_snapshot_order_does_not_matter() -> None:
    entries = [FileStat("b", 1, 1, False), FileStat("a", 2, 2, False)]
    assert DirSnapshot(tuple(entries)) == DirSnapshot(tuple(reversed(entries)))


# --- the real filesystem -------------------------------------------------------------------------


def write(path: Path, data: bytes, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_snapshot_tree_lists_sizes_and_mtimes_and_does_not_follow_symlinks(tmp_path: Path) -> None:
    write(tmp_path / "step_1" / "__0_0.distcp", b"x" * 1000, 1_000_000_000)
    write(tmp_path / "outside" / "big", b"y" * 5000, 2_000_000_000)
    (tmp_path / "step_1" / "link").symlink_to(tmp_path / "outside")
    snapshot = snapshot_tree(tmp_path)
    by_path = {e.path: e for e in snapshot.entries}
    assert by_path["step_1/__0_0.distcp"] == FileStat("step_1/__0_0.distcp", 1000, 1_000_000_000, False)
    assert not by_path["step_1/link"].is_dir
    assert "step_1/link/big" not in by_path
    assert snapshot.subtree("step_1").total_bytes == 1000 + by_path["step_1/link"].size


def test_snapshot_tree_lists_skipped_directories_without_entering_them(tmp_path: Path) -> None:
    write(tmp_path / "step_1" / ".metadata", b"m", 1)
    write(tmp_path / "step_2" / ".metadata", b"m", 1)
    listed = {e.path for e in snapshot_tree(tmp_path, skip={"step_1"}).entries}
    assert listed == {"step_1", "step_2", "step_2/.metadata"}


def test_tracker_over_a_real_dcp_write_reports_only_after_the_last_shard_settles(tmp_path: Path) -> None:
    tracker = CommitTracker(settle_seconds=SETTLE)
    step = tmp_path / "job" / "step_100"
    write(step / "__0_0.distcp", b"a" * 4096, 1_000)
    assert tracker.observe(snapshot_tree(tmp_path), 0.0) == []
    write(step / ".metadata", b"meta", 2_000)
    write(step / "__1_0.distcp", b"b" * 1024, 3_000)  # a rank still flushing after the marker
    assert tracker.observe(snapshot_tree(tmp_path), 1.0) == []
    write(step / "__1_0.distcp", b"b" * 4096, 4_000)
    assert tracker.observe(snapshot_tree(tmp_path), 5.0) == []
    assert tracker.observe(snapshot_tree(tmp_path), 5.0 + SETTLE - 1) == []
    assert tracker.observe(snapshot_tree(tmp_path), 5.0 + SETTLE) == [
        CandidateCheckpoint(100, "job/step_100", CommitKind.DCP)
    ]
    assert tracker.observe(snapshot_tree(tmp_path, skip=tracker.reported), 100.0) == []


def test_the_next_look_is_due_the_moment_a_committed_checkpoint_would_have_settled() -> None:
    """The watcher looks again then, not a whole poll period later: commit-to-record is the settle
    time plus at most one period (the first sighting), whatever the period and settle are."""
    tracker = CommitTracker(settle_seconds=5.0)
    assert tracker.next_ready_at() is None
    committed = snap({**dcp_shards("step_7", {0: 4096}), "step_7/.metadata": (512, 2)})
    assert tracker.observe(committed, now=100.0) == []
    assert tracker.next_ready_at() == 105.0
    rewritten = snap({**dcp_shards("step_7", {0: 4096}, mtime=9), "step_7/.metadata": (512, 2)})
    assert tracker.observe(rewritten, now=103.0) == []
    assert tracker.next_ready_at() == 108.0, "a change starts the settle time again"
    assert paths(tracker.observe(rewritten, now=108.0)) == ["step_7"]
    assert tracker.next_ready_at() is None
