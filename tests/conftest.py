"""Session-wide guards shared by unit and e2e tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.testbed.leaks import SystemSnapshot, find_leaks, new_run_id


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need root fail loudly instead of skipping when run without it in CI."""
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
    if os.geteuid() == 0:
        return
    for item in items:
        if "root" in item.keywords or "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root (loop devices, LVM, netns); run as root"))


@pytest.fixture(scope="session")
def run_id() -> str:
    return new_run_id()


@pytest.fixture(scope="session", autouse=True)
def leak_check(run_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if anything it created (process, mount, loop, netns, link) outlives it."""
    if os.geteuid() != 0:
        yield
        return
    before = SystemSnapshot.take()
    yield
    leaks = find_leaks(run_id, before, owned_dirs=[tmp_path_factory.getbasetemp()])
    if leaks:
        pytest.fail("the test run leaked:\n  " + "\n  ".join(leaks), pytrace=False)
