"""The benchmarks' entry points start: `make bench` is not in CI, so a broken import would go unseen."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.testbed.tools import REPO_ROOT


@pytest.mark.parametrize("bench", ["p2p_loopback", "p2p_seed"])
def test_a_bad_libtorrent_override_is_refused_by_name_before_anything_starts(bench: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--set", "no_such_setting=1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--set no_such_setting: not a libtorrent setting" in result.stderr, result.stderr
