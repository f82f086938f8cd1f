"""The import contracts in pyproject hold for the tree, and a forbidden import breaks them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.testbed.tools import REPO_ROOT

_spec = importlib.util.spec_from_file_location("lint", REPO_ROOT / "tools" / "lint.py")
assert _spec and _spec.loader
lint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint)


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    mirror = tmp_path / "src"
    result = lint.check_contracts(lint.build_mirror(mirror), mirror)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_a_dataset_module_importing_checkpoints_breaks_the_lint(tmp_path: Path) -> None:
    mirror = tmp_path / "src"
    folders = lint.build_mirror(mirror)
    # Only the mirror gets the offending module; the tree itself is not touched.
    probe = mirror / "cairn" / "node_agent" / "datasets" / "probe_reads_checkpoints.py"
    probe.write_text("from cairn.node_agent.checkpoints.retention import plan_retention\n")
    result = lint.check_contracts(folders, mirror)
    assert result.returncode != 0
    assert (
        "Features stay apart: checkpoints, datasets and disks never import one another BROKEN"
        in result.stdout
    )
    assert "cairn.node_agent.datasets.probe_reads_checkpoints -> cairn.node_agent.checkpoints.retention" in (
        result.stdout
    )


def test_a_decision_module_reaching_the_cluster_breaks_the_lint(tmp_path: Path) -> None:
    mirror = tmp_path / "src"
    folders = lint.build_mirror(mirror)
    parts = mirror / "cairn" / "node_agent" / "datasets" / "parts.py"
    text = parts.read_text()
    parts.unlink()  # a symlink to the real file: replace it, never write through it
    parts.write_text(text + "\nimport kubernetes  # noqa\n")
    result = lint.check_contracts(folders, mirror)
    assert result.returncode != 0
    assert "Decisions are pure: they reach no cluster, disk, network or process BROKEN" in result.stdout
