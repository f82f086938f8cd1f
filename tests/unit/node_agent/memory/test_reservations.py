"""Shares of the memory pool: never more than the reservation, in whole pages."""

from __future__ import annotations

import pytest

from cairn.node_agent.memory.reservations import (
    PAGE_BYTES,
    PoolExhausted,
    admit,
    is_full,
    page_rounded,
    usage,
)

MiB = 1024 * 1024


def test_a_share_is_whole_pages_and_must_be_positive() -> None:
    assert page_rounded(1) == PAGE_BYTES and page_rounded(PAGE_BYTES) == PAGE_BYTES
    with pytest.raises(ValueError, match="positive size"):
        page_rounded(0)


def test_shares_never_add_up_to_more_than_the_pool() -> None:
    shares = {"a": 60 * MiB, "b": 30 * MiB}
    assert admit(100 * MiB, shares, "c", 10 * MiB) == 10 * MiB
    with pytest.raises(PoolExhausted) as full:
        admit(100 * MiB, shares, "c", 10 * MiB + 1)
    assert (full.value.free_bytes, full.value.needed_bytes) == (10 * MiB, 10 * MiB + PAGE_BYTES)
    assert "memory pool has 10Mi free of 100Mi; volume c needs" in str(full.value)
    assert usage(100 * MiB, shares).free_bytes == 10 * MiB


def test_growing_takes_only_the_difference_and_shrinking_is_refused() -> None:
    shares = {"a": 60 * MiB, "b": 30 * MiB}
    assert admit(100 * MiB, shares, "b", 40 * MiB) == 40 * MiB
    with pytest.raises(PoolExhausted):
        admit(100 * MiB, shares, "b", 41 * MiB)
    with pytest.raises(ValueError, match="cannot shrink"):
        admit(100 * MiB, shares, "b", 20 * MiB)


def test_a_memory_volume_is_full_with_no_room_left_or_nearly_every_byte_used() -> None:
    assert is_full(used_bytes=8 * MiB, total_bytes=8 * MiB, available_bytes=0)
    assert is_full(used_bytes=96, total_bytes=100, available_bytes=4)
    assert not is_full(used_bytes=90, total_bytes=100, available_bytes=10)
    assert not is_full(used_bytes=0, total_bytes=0, available_bytes=0)
