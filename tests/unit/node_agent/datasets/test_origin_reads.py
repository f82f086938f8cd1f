"""The seeder's concurrent read of an origin: ranges in place, parts handed over in order, whole."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cairn.node_agent.datasets.origin import DirectoryOrigin, OriginError, OriginFile
from cairn.node_agent.datasets.origin_reads import fetch_parts, spans_of
from cairn.node_agent.datasets.parts import plan_parts
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
