"""When is a checkpoint finished? Pure rules over a snapshot of a volume's directory tree.

Detection polls: `snapshot_tree` lists the volume (names, sizes, mtimes; no file contents) and
everything else here decides from that listing alone, so each rule is a unit test away from proof.

A checkpoint is reported once it is both
- **committed**: its directory carries the writer's own "done" signal (`CommitRule`), and
- **settled**: nothing beneath it changed across two snapshots at least `settle_seconds` apart,
  and no in-progress name (`*.tmp`, ...) is left in it (`is_settled`).

The second condition covers writers that put the marker down before every rank has finished
writing (a hand-rolled `COMMITTED` touched by rank 0, a shard still flushing on another rank).
It costs `settle_seconds` of latency on every checkpoint, which only delays the upload, never the
trainer.

Commit rules, and why each is what it is:
- DCP: PyTorch's distributed checkpoint writes every `__<rank>_<n>.distcp` shard first and the
  `.metadata` file last (via `.metadata.tmp` and a rename in recent releases), from the coordinator
  after all ranks have finished. A directory holding `.metadata` is committed.
- MARKER: a directory holding a named file (`COMMITTED` by default).
- ORBAX: on a POSIX volume Orbax writes into `<name>.orbax-checkpoint-tmp[-<digits>]` and renames
  it to `<name>` when every host is done, so a directory under its final name is complete. The name
  alone cannot tell Orbax's renamed directory from any other writer's half-written `step_100/`,
  though, and the rules are meant to be combined in one policy. So by default the rule also wants
  `_CHECKPOINT_METADATA`, which recent Orbax releases create inside the temporary directory: under
  a final name, only the rename can have put it there. `CommitRule.orbax(require_metadata=False)`
  accepts the bare rename for older Orbax, and is safe only when Orbax is the only writer on the
  volume. Orbax's other mode, a `commit_success.txt` written into the final directory (its default on
  object stores, on POSIX only on request), has `_CHECKPOINT_METADATA` there from the start: a
  policy for it should use MARKER `commit_success.txt` and not ORBAX.

A checkpoint's step comes from the step pattern applied to its directory name. A committed
directory whose name has no step is not reported: retention and the Checkpoint object need one.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# The policy's rule names are the detector's kinds: one name for one thing.
from cairn.api.checkpoint import CommitRule as CommitKind
from cairn.step_pattern import DEFAULT_STEP_PATTERN, StepPattern, compile_step_pattern

DEFAULT_MARKER = "COMMITTED"
DCP_METADATA = ".metadata"
ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
# Old releases append "-<timestamp>", new ones do not; both mean "not finished".
ORBAX_TMP_NAME = re.compile(r"\.orbax-checkpoint-tmp(-\d+)?$")
IN_PROGRESS_PATTERNS: tuple[str, ...] = ("*.tmp", "*.partial", "*.incomplete", "*.orbax-checkpoint-tmp*")
"""Names that writers use for files still being written. One of these inside a committed
checkpoint holds it back: a writer that renames shards into place is evidently not done. A stale
one left by a crashed writer holds it back forever, which `CommitTracker.waiting` makes visible."""


@dataclass(frozen=True)
class FileStat:
    path: str
    """POSIX path relative to the snapshot root, without a leading './'."""
    size: int
    mtime_ns: int
    is_dir: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


@dataclass(frozen=True)
class DirSnapshot:
    """A directory tree as listed at one moment: every entry beneath the root, sorted by path."""

    entries: tuple[FileStat, ...] = ()

    def __post_init__(self) -> None:
        # Lookups bisect on path order, and equality of two listings must not depend on scan order.
        if any(a.path >= b.path for a, b in zip(self.entries, self.entries[1:], strict=False)):
            object.__setattr__(self, "entries", tuple(sorted(set(self.entries), key=lambda e: e.path)))

    @classmethod
    def of(cls, entries: Iterable[FileStat]) -> DirSnapshot:
        return cls(tuple(entries))

    @cached_property
    def _paths(self) -> list[str]:
        return [e.path for e in self.entries]

    @cached_property
    def _children(self) -> dict[str, dict[str, FileStat]]:
        children: dict[str, dict[str, FileStat]] = {}
        for entry in self.entries:
            children.setdefault(_parent(entry.path), {})[entry.name] = entry
        return children

    def children(self, directory: str) -> Mapping[str, FileStat]:
        """Direct children of `directory` ("" is the root), by name."""
        return self._children.get(directory, {})

    def directories(self) -> list[str]:
        return [e.path for e in self.entries if e.is_dir]

    def has_directory(self, path: str) -> bool:
        index = bisect.bisect_left(self._paths, path)
        return index < len(self.entries) and self.entries[index].path == path and self.entries[index].is_dir

    def subtree(self, directory: str) -> DirSnapshot:
        """Everything beneath `directory`, with paths relative to it."""
        prefix = directory + "/"
        # Paths sharing a prefix are contiguous in sorted order, and directory + "0" ("0" follows "/")
        # is the first string past them, so two bisections find them all.
        start = bisect.bisect_left(self._paths, prefix)
        end = bisect.bisect_left(self._paths, directory + "0")
        cut = len(prefix)
        inside = self.entries[start:end]
        return DirSnapshot(tuple(FileStat(e.path[cut:], e.size, e.mtime_ns, e.is_dir) for e in inside))

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if not e.is_dir)


def snapshot_tree(root: Path | str, *, skip: Container[str] = frozenset()) -> DirSnapshot:
    """List everything beneath `root` without following symlinks.

    Directories named in `skip` (relative paths) are listed but not entered: checkpoints that
    were already reported need no re-reading on every poll. Entries that vanish while being
    listed are left out; a writer deleting files is not an error.
    """
    entries: list[FileStat] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            scanner = os.scandir(os.path.join(root, relative) if relative else root)
        except (FileNotFoundError, NotADirectoryError):
            if not relative:
                raise
            continue
        with scanner:
            for entry in scanner:
                path = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    # Symlinks are recorded as they are, never followed: a link may point out of
                    # the volume or loop, and a checkpoint is the bytes it holds itself.
                    stat = entry.stat(follow_symlinks=False)
                    is_dir = entry.is_dir(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append(FileStat(path, 0 if is_dir else stat.st_size, stat.st_mtime_ns, is_dir))
                if is_dir and path not in skip:
                    pending.append(path)
    return DirSnapshot.of(entries)


@dataclass(frozen=True)
class CommitRule:
    kind: CommitKind
    marker: str = DEFAULT_MARKER
    """The file name a MARKER rule looks for."""
    require_metadata: bool = True
    """ORBAX only: also want `_CHECKPOINT_METADATA` (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.kind is CommitKind.MARKER and (not self.marker or "/" in self.marker or "\0" in self.marker):
            raise ValueError(f"commit marker {self.marker!r} must be a plain file name, e.g. COMMITTED")

    @classmethod
    def dcp(cls) -> CommitRule:
        return cls(CommitKind.DCP)

    @classmethod
    def marker_file(cls, name: str = DEFAULT_MARKER) -> CommitRule:
        return cls(CommitKind.MARKER, marker=name)

    @classmethod
    def orbax(cls, *, require_metadata: bool = True) -> CommitRule:
        return cls(CommitKind.ORBAX, require_metadata=require_metadata)

    def is_committed(self, name: str, children: Mapping[str, FileStat]) -> bool:
        """Does a directory called `name` with these direct children satisfy this rule?"""
        match self.kind:
            case CommitKind.DCP:
                return _is_file(children.get(DCP_METADATA))
            case CommitKind.MARKER:
                return _is_file(children.get(self.marker))
            case CommitKind.ORBAX:
                if is_orbax_tmp_name(name):
                    return False
                return not self.require_metadata or _is_file(children.get(ORBAX_STEP_METADATA))


DEFAULT_RULES: tuple[CommitRule, ...] = (CommitRule.dcp(), CommitRule.marker_file(), CommitRule.orbax())


def _is_file(entry: FileStat | None) -> bool:
    return entry is not None and not entry.is_dir


def is_orbax_tmp_name(name: str) -> bool:
    return ORBAX_TMP_NAME.search(name) is not None


@dataclass(frozen=True, order=True)
class CandidateCheckpoint:
    step: int
    path: str
    """The checkpoint directory, relative to the snapshot root."""
    rule: CommitKind


def find_committed(
    root_snapshot: DirSnapshot,
    rules: Sequence[CommitRule] = DEFAULT_RULES,
    pattern: str | StepPattern = DEFAULT_STEP_PATTERN,
) -> list[CandidateCheckpoint]:
    """Every committed checkpoint directory in the snapshot, by step then path.

    Committed is not yet ready: see `is_settled`. The outermost match wins: a directory inside a
    checkpoint (an Orbax item, `ocdbt.process_0`) is part of it, not another checkpoint. Nothing
    inside an Orbax temporary directory counts, since all of it is unfinished.
    """
    step_pattern = pattern if isinstance(pattern, StepPattern) else compile_step_pattern(pattern)
    found: list[CandidateCheckpoint] = []
    closed: set[str] = set()  # directories whose subtree is decided; sorted order visits parents first
    for directory in root_snapshot.directories():
        if _has_ancestor_in(directory, closed):
            continue
        name = directory.rpartition("/")[2]
        if is_orbax_tmp_name(name):
            closed.add(directory)
            continue
        step = step_pattern.step_of(name)
        if step is None:
            continue
        children = root_snapshot.children(directory)
        for rule in rules:
            if rule.is_committed(name, children):
                found.append(CandidateCheckpoint(step, directory, rule.kind))
                closed.add(directory)
                break
    return sorted(found)


def _has_ancestor_in(path: str, directories: set[str]) -> bool:
    parent = _parent(path)
    while parent:
        if parent in directories:
            return True
        parent = _parent(parent)
    return False


def in_progress_names(snapshot: DirSnapshot, patterns: Sequence[str] = IN_PROGRESS_PATTERNS) -> list[str]:
    return [e.path for e in snapshot.entries if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)]


def is_settled(
    previous: DirSnapshot,
    current: DirSnapshot,
    elapsed: float,
    settle_seconds: float,
    *,
    in_progress: Sequence[str] = IN_PROGRESS_PATTERNS,
) -> bool:
    """Has a checkpoint directory stopped changing?

    `previous` and `current` are the same directory's subtree, taken `elapsed` seconds apart.
    Identical names, sizes and mtimes over at least `settle_seconds` mean no write landed in
    between. ext4 and xfs keep mtimes in nanoseconds, advanced at clock-tick granularity (a few ms),
    so a same-size rewrite shows unless it lands in the very tick of the write before it.
    """
    if settle_seconds < 0:
        raise ValueError(f"settle_seconds must be 0 or more, got {settle_seconds}")
    return (
        elapsed >= settle_seconds
        and previous.entries == current.entries
        and not in_progress_names(current, in_progress)
    )


@dataclass(frozen=True)
class WaitingCheckpoint:
    """A committed checkpoint that is not reported yet, and why."""

    candidate: CandidateCheckpoint
    unchanged_since: float
    """Time of the first snapshot with the current listing."""
    in_progress: tuple[str, ...]
    """In-progress names holding it back, relative to the checkpoint; empty when it is just settling."""


@dataclass
class _Baseline:
    candidate: CandidateCheckpoint
    listing: DirSnapshot
    since: float


class CommitTracker:
    """Feeds on snapshots of one volume; reports each checkpoint once, when committed and settled.

    Pure: the caller supplies the snapshots and the (monotonic) times they were taken.
    A reported checkpoint is remembered for as long as its directory exists, so it is never reported
    twice; if the directory disappears it is forgotten, and a new directory of the same name later is
    a new checkpoint. Pass the directories reported before a restart as `reported`.
    """

    def __init__(
        self,
        rules: Sequence[CommitRule] = DEFAULT_RULES,
        pattern: str | StepPattern = DEFAULT_STEP_PATTERN,
        settle_seconds: float = 10.0,
        *,
        in_progress: Sequence[str] = IN_PROGRESS_PATTERNS,
        reported: Iterable[str] = (),
    ) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be 0 or more, got {settle_seconds}")
        self._rules = tuple(rules)
        self._pattern = pattern if isinstance(pattern, StepPattern) else compile_step_pattern(pattern)
        self._settle_seconds = settle_seconds
        self._in_progress = tuple(in_progress)
        self._reported: set[str] = set(reported)
        self._baselines: dict[str, _Baseline] = {}

    @property
    def reported(self) -> frozenset[str]:
        """Directories already reported; pass them to `snapshot_tree(skip=...)` to poll cheaply."""
        return frozenset(self._reported)

    def observe(self, snapshot: DirSnapshot, now: float) -> list[CandidateCheckpoint]:
        """The checkpoints that became ready with this snapshot, by step then path."""
        self._reported = {path for path in self._reported if snapshot.has_directory(path)}
        committed = {
            c.path: c
            for c in find_committed(snapshot, self._rules, self._pattern)
            if c.path not in self._reported
        }
        # A marker that was removed again, or a directory that vanished, starts from scratch.
        self._baselines = {p: b for p, b in self._baselines.items() if p in committed}
        ready: list[CandidateCheckpoint] = []
        for path, candidate in committed.items():
            listing = snapshot.subtree(path)
            baseline = self._baselines.get(path)
            if baseline is None or baseline.listing != listing:
                baseline = _Baseline(candidate, listing, now)
                self._baselines[path] = baseline
            quiet_for = now - baseline.since
            patterns = self._in_progress
            if is_settled(baseline.listing, listing, quiet_for, self._settle_seconds, in_progress=patterns):
                ready.append(candidate)
                self._reported.add(path)
                del self._baselines[path]
        return sorted(ready)

    def retry(self, path: str) -> None:
        """A reported checkpoint whose record could not be written: it settles and is offered again."""
        self._reported.discard(path)

    def next_ready_at(self) -> float | None:
        """The earliest moment (on the clock `observe` is given) a settling checkpoint could be
        reported, if nothing changes in it: the next look is worth taking then, not a period later."""
        if not self._baselines:
            return None
        return min(baseline.since for baseline in self._baselines.values()) + self._settle_seconds

    def waiting(self) -> list[WaitingCheckpoint]:
        """Committed checkpoints not reported yet: for status, logs and "why is step 100 not tiered"."""
        return sorted(
            (
                WaitingCheckpoint(
                    b.candidate, b.since, tuple(in_progress_names(b.listing, self._in_progress))
                )
                for b in self._baselines.values()
            ),
            key=lambda w: w.candidate,
        )
