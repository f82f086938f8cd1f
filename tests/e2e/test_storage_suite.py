"""Kubernetes' own external storage e2e suite against Cairn on kubelet nodes: the subset CI runs.

CI runs every External Storage spec that is not [Slow], [Serial] or [Disruptive], not an expansion
spec (those run one at a time, see tools/conformance.py), and not one of those `make conformance`
leaves out (README.md says why); `make conformance` runs them all.
"""

from __future__ import annotations

from pathlib import Path

from tests.testbed.user_cluster import UserCluster
from tools.conformance import FOCUS, NOT_HERE, ONE_AT_A_TIME, Summary, run_suite

# 39 specs ran in this subset when it was chosen; a drop means specs are being skipped that ran.
AT_LEAST = 35


def test_the_fast_external_storage_specs_pass(user_cluster: UserCluster, tmp_path: Path) -> None:
    skip = "|".join([*ONE_AT_A_TIME, r"\[Slow\]", *NOT_HERE])
    run_suite(user_cluster, tmp_path, focus=FOCUS, skip=skip, procs=4, serial=False)
    summary = Summary()
    summary.add_report(tmp_path / "junit-parallel.xml")
    print("\n" + summary.render())
    assert summary.failed == [], summary.render()
    assert summary.ran >= AT_LEAST, summary.render()
