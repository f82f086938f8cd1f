"""The seeder's split of a dataset into parts: whole files, largest first, bounded in number."""

from __future__ import annotations

from dataclasses import dataclass

from cairn.node_agent.datasets.parts import (
    MAX_PARTS,
    MIN_PART_BYTES,
    STRANDED_SECONDS,
    first_hop,
    part_peers,
    part_target_bytes,
    plan_parts,
    stranded,
)

MiB = 1024 * 1024


@dataclass(frozen=True)
class File:
    path: str
    size: int


def test_every_file_lands_in_exactly_one_part_whole() -> None:
    files = [File(f"shard-{i:03d}.tar", (i % 7 + 1) * 3 * MiB) for i in range(100)]
    parts = plan_parts(files)
    flat = [f for part in parts for f in part]
    assert sorted(flat, key=lambda f: f.path) == sorted(files, key=lambda f: f.path)


def test_files_are_read_largest_first_so_the_last_part_is_small() -> None:
    files = [File("big", 96 * MiB), *(File(f"small-{i}", 1 * MiB) for i in range(16)), File("mid", 40 * MiB)]
    parts = plan_parts(files)
    assert parts[0] == [File("big", 96 * MiB)]
    order = [f.size for part in parts for f in part]
    assert order == sorted(order, reverse=True)
    assert sum(f.size for f in parts[-1]) <= part_target_bytes(sum(f.size for f in files))


def test_parts_hold_about_a_32nd_of_the_data_and_never_less_than_the_floor() -> None:
    even = [File(f"f{i:02d}", 16 * MiB) for i in range(64)]  # 1 GiB: 32 MiB a part
    assert [len(p) for p in plan_parts(even)] == [2] * 32
    tiny = [File(f"t{i}", 1 * MiB) for i in range(20)]  # 20 MiB: the 8 MiB floor rules
    assert [sum(f.size for f in p) for p in plan_parts(tiny)] == [8 * MiB, 8 * MiB, 4 * MiB]
    assert part_target_bytes(0) == MIN_PART_BYTES


def test_many_small_files_never_make_more_parts_than_the_status_can_list() -> None:
    files = [File(f"x{i:06d}", 4096 + i) for i in range(200_000)]
    parts = plan_parts(files)
    assert len(parts) <= MAX_PARTS
    assert sum(len(p) for p in parts) == len(files)


TARGETS = ["a", "b", "c", "d"]
READING = {"stalled": False, "origin_read": False}
"""The seeder is still reading the origin and no part has stalled."""


def test_the_seeder_sends_each_part_to_one_first_hop_and_the_hop_rotates() -> None:
    hops = [first_hop("a", TARGETS, index) for index in range(6)]
    assert hops == ["b", "c", "d", "b", "c", "d"]
    first_hops = [part_peers("a", "a", TARGETS, index, **READING) for index in range(3)]
    assert first_hops == [["b"], ["c"], ["d"]]


def test_other_nodes_reach_the_seeder_only_as_first_hop_or_when_stalled() -> None:
    assert part_peers("b", "a", TARGETS, 0, **READING) == ["a", "c", "d"]  # b is part 0's hop
    assert part_peers("c", "a", TARGETS, 0, **READING) == ["b", "d"]
    assert part_peers("c", "a", TARGETS, 0, stalled=True, origin_read=False) == ["a", "b", "d"]


def test_once_the_origin_is_read_the_seeder_serves_everyone() -> None:
    assert part_peers("a", "a", TARGETS, 0, stalled=False, origin_read=True) == ["b", "c", "d"]
    assert part_peers("c", "a", TARGETS, 0, stalled=False, origin_read=True) == ["a", "b", "d"]


def test_a_lone_node_or_a_seeder_that_is_no_target_still_works() -> None:
    assert part_peers("a", "a", ["a"], 0, **READING) == []
    assert part_peers("b", "a", ["a", "b"], 0, **READING) == ["a"]  # the only other node is the hop
    # A seeder that is not a target any more is never dialled; the targets share among themselves.
    assert part_peers("b", "z", ["b", "c"], 0, stalled=True, origin_read=True) == ["c"]


def test_a_part_is_stranded_only_with_nobody_connected_for_long() -> None:
    assert stranded(0, STRANDED_SECONDS)
    assert not stranded(0, STRANDED_SECONDS - 1)  # peers may still be connecting
    assert not stranded(1, 10 * STRANDED_SECONDS)  # a slow peer is still a peer
