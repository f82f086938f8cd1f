"""How a Background Dataset's per-node caps become each part's torrent limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cairn.api.dataset import Dataset, DatasetSpec, SeedPriority
from cairn.node_agent.datasets.pacing import (
    MIN_PART_BYTES_PER_SECOND,
    UNLIMITED,
    PartLimits,
    node_rate,
    part_limits,
    urgent,
)

MiB = 1024 * 1024
SOURCE = {"http": {"urls": ["https://data.example/a"]}}


def spec(**fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": SOURCE, **fields})


def test_a_normal_dataset_is_not_capped() -> None:
    assert spec().priority == SeedPriority.NORMAL
    assert node_rate(spec(), 50 * MiB) == 0
    assert node_rate(spec(backgroundBytesPerSecond=10 * MiB), 50 * MiB) == 0, "the cap is for Background only"
    assert part_limits(0, 4, complete=False) == UNLIMITED


def test_a_background_dataset_takes_its_own_cap_or_the_agents() -> None:
    assert node_rate(spec(priority="Background"), 50 * MiB) == 50 * MiB
    assert node_rate(spec(priority="Background", backgroundBytesPerSecond=10 * MiB), 50 * MiB) == 10 * MiB


def test_the_inbound_cap_is_shared_and_never_starves_a_part() -> None:
    assert part_limits(12 * MiB, 3, complete=False) == PartLimits(download=4 * MiB, upload=12 * MiB)
    assert part_limits(12 * MiB, 3, complete=True) == PartLimits(download=0, upload=12 * MiB)
    assert part_limits(MiB, 1000, complete=False).download == MIN_PART_BYTES_PER_SECOND


@pytest.mark.parametrize(
    "fields", [{"priority": "Idle"}, {"priority": "Background", "backgroundBytesPerSecond": 1000}]
)
def test_bad_priorities_and_caps_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        spec(**fields)


def dataset(priority: str, phase: str) -> Dataset:
    return Dataset.model_validate(
        {"spec": {"source": SOURCE, "priority": priority}, "status": {"phase": phase}}
    )


@pytest.mark.parametrize(
    ("priority", "phase", "expected"),
    [
        ("Normal", "Distributing", True),
        ("Normal", "Pending", True),
        ("Normal", "Ready", False),
        ("Normal", "Failed", False),
        ("Background", "Distributing", False),
    ],
)
def test_only_a_normal_dataset_still_moving_keeps_libtorrent_from_yielding(
    priority: str, phase: str, expected: bool
) -> None:
    assert urgent(dataset(priority, phase)) is expected
