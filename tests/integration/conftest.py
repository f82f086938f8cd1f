"""Fixtures of the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.node_agent.memory.pool import TmpfsPool
from tests.integration.memory_pool import VG, MiB


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[TmpfsPool]:
    """A 64 MiB memory pool on real tmpfs mounts under the test's directory."""
    pool = TmpfsPool(tmp_path / "memory", 64 * MiB, VG)
    yield pool
    # Whatever a failed test left mounted, deepest first.
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in sorted((m for m in mounted if m.startswith(str(tmp_path))), reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
