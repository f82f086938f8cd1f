"""The seeder's concurrent read of an origin: ranges in place, parts handed over in order, whole."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cairn.node_agent.datasets.origin import DirectoryOrigin, OriginError, OriginFile
from cairn.node_agent.datasets.origin_reads import _read_span, fetch_parts, spans_of
from cairn.node_agent.datasets.parts import plan_parts
from cairn.node_agent.host.rate_limit import TokenBucket
from cairn.node_agent.manifests import build_manifest

MiB = 1024 * 1024


def make_source(root: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def test_spans_cover_a_file_exactly_once() -> None:
    file = OriginFile("a", 20 * MiB + 5, "a")
    spans = spans_of(file, ranged=True)
    assert [s.start for s in spans] == [0, 8 * MiB, 16 * MiB]
    assert sum(s.length for s in spans) == file.size
    assert spans_of(file, ranged=False) == [spans_of(file, ranged=False)[0]]
    assert spans_of(OriginFile("e", 0, "e"), ranged=True)[0].length == 0


def test_every_part_is_handed_over_in_order_with_the_bytes_of_the_origin(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"big.bin": 19 * MiB + 3, "dir/mid.bin": 9 * MiB, "small.txt": 100, "empty": 0})
    origin = DirectoryOrigin(source)
    plan = plan_parts(origin.list_files())
    handed: list[int] = []
    counted: list[int] = []
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            counted.append(n)

    def on_part(index: int, entries: list) -> None:
        handed.append(index)
        for entry in entries:  # a part is complete on disk when it is handed over
            assert (data / entry.path).read_bytes() == (source / entry.path).read_bytes()

    fetch_parts(origin, plan, data, count, on_part, streams=3)
    assert handed == list(range(len(plan))) and len(plan) >= 2
    assert sum(counted) == sum(f.size for f in origin.list_files())
    assert build_manifest(data).digest == build_manifest(source).digest


def test_a_file_shorter_than_listed_fails_the_fetch(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"a.bin": 10 * MiB})
    origin = DirectoryOrigin(source)
    files = origin.list_files()
    (source / "a.bin").write_bytes(b"shrunk")  # the origin changed between listing and reading
    # The source is a tenant's volume: the file is checked against its listing before a byte is read.
    with pytest.raises(
        OriginError, match=r"a\.bin changed since it was listed.*size 10485760 listed, 6 now"
    ) as caught:
        fetch_parts(origin, plan_parts(files), data, lambda n: None, lambda i, e: None)
    assert caught.value.reason == "OriginChanged"


class FlakyOriginForFaultInjection:
    """A ranged origin over a directory whose streams break after `break_after` bytes, `breaks`
    times: a connection reset mid-body, which no real origin does on demand."""

    ranged = True

    def __init__(self, root: Path, breaks: int, break_after: int = 3 * MiB) -> None:
        self.inner = DirectoryOrigin(root)
        self.breaks = breaks
        self.break_after = break_after
        self.asked: list[tuple[int, int | None]] = []

    def list_files(self) -> list[OriginFile]:
        return self.inner.list_files()

    def open(self, file: OriginFile, start: int = 0, length: int | None = None):
        self.asked.append((start, length))
        stream = self.inner.open(file, start, length)
        if self.breaks <= 0:
            return stream
        self.breaks -= 1
        return _BreakingStream(stream, self.break_after)


class _BreakingStream:
    def __init__(self, inner, allowed: int) -> None:
        self.inner, self.allowed = inner, allowed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.inner.close()

    def read(self, size: int) -> bytes:
        if self.allowed <= 0:
            raise ConnectionResetError("connection reset by peer")
        chunk = self.inner.read(min(size, self.allowed))
        self.allowed -= len(chunk)
        return chunk


def test_a_broken_read_resumes_where_it_stopped_and_keeps_what_arrived(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"a.bin": 8 * MiB})
    origin = FlakyOriginForFaultInjection(source, breaks=2)
    counted: list[int] = []
    waits: list[float] = []
    [span] = spans_of(origin.list_files()[0], ranged=True)
    data.mkdir()
    (data / "a.bin").write_bytes(b"\0" * span.length)
    _read_span(origin, span, data, counted.append, sleep=waits.append)
    assert (data / "a.bin").read_bytes() == (source / "a.bin").read_bytes()
    assert origin.asked == [(0, 8 * MiB), (3 * MiB, 5 * MiB), (6 * MiB, 2 * MiB)]
    assert sum(counted) == 8 * MiB, "bytes that arrived were asked for again"
    assert waits == [1.0, 2.0]


def test_an_origin_that_keeps_breaking_fails_the_seeding_with_a_reason(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"a.bin": 8 * MiB})
    origin = FlakyOriginForFaultInjection(source, breaks=100, break_after=MiB)
    [span] = spans_of(origin.list_files()[0], ranged=True)
    data.mkdir()
    (data / "a.bin").write_bytes(b"\0" * span.length)
    waits: list[float] = []
    with pytest.raises(OriginError, match=r"a\.bin: bytes 4194304-8388607 could not be read in 4 attempts"):
        _read_span(origin, span, data, lambda n: None, attempts=4, sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0], "no backoff between attempts"
    assert len(origin.asked) == 4


def test_a_background_fetch_keeps_to_its_rate_and_its_threads_yield(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"a.bin": 3 * MiB, "b.bin": 3 * MiB})
    origin = DirectoryOrigin(source)
    niceness: set[int] = set()
    lock = threading.Lock()

    def count(_: int) -> None:
        with lock:
            niceness.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    started = time.monotonic()
    fetch_parts(
        origin, plan_parts(origin.list_files()), data, count, lambda *_: None, bucket=TokenBucket(4 * MiB)
    )
    took = time.monotonic() - started
    # 6 MiB at 4 MiB/s, 1 MiB of burst: at least 1.25 s; unthrottled it is a few milliseconds.
    assert took >= 1.1
    assert niceness == {19}, "the reading threads run at the lowest CPU priority"
    assert build_manifest(data).digest == build_manifest(source).digest


def test_a_normal_fetch_is_not_slowed(tmp_path: Path) -> None:
    source, data = tmp_path / "source", tmp_path / "data"
    make_source(source, {"a.bin": 6 * MiB})
    origin = DirectoryOrigin(source)
    started = time.monotonic()
    fetch_parts(origin, plan_parts(origin.list_files()), data, lambda _: None, lambda *_: None)
    assert time.monotonic() - started < 1.0
