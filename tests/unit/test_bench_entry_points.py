"""The benchmarks' entry points start: `make bench` is not in CI, so a broken import would go unseen."""

from __future__ import annotations

import ast
import importlib.util
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


def test_every_import_in_the_benchmarks_names_a_module_that_exists() -> None:
    """Benchmarks import lazily (after a bed is up), so a wrong name shows only minutes into a run."""
    missing = []
    for path in sorted((REPO_ROOT / "bench").rglob("*.py")):
        package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if path.name != "__init__.py":
            package = package.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                name = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if importlib.util.find_spec(name) is None:
                    missing.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}")
    assert missing == []
