"""The memory pool in the API: a pool for volumes, never a disk class or a Dataset's home."""

from __future__ import annotations

import pytest

from cairn.api.dataset import DatasetSpec
from cairn.api.volume import DISK_CLASSES, PoolClass


def test_memory_is_a_pool_but_not_a_disk_class() -> None:
    assert PoolClass.MEMORY not in DISK_CLASSES
    assert set(DISK_CLASSES) | {PoolClass.MEMORY} == set(PoolClass)


def test_a_dataset_cannot_ask_for_the_memory_pool() -> None:
    source = {"s3": {"url": "s3://bucket/prefix/", "endpoint": "http://s3.internal:9000"}}
    with pytest.raises(ValueError, match="not memory"):
        DatasetSpec.model_validate({"source": source, "pool": "memory"})
    assert DatasetSpec.model_validate({"source": source, "pool": "ssd"}).pool == PoolClass.SSD
