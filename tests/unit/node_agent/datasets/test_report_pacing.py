"""How often a node writes its entry in a Dataset's status: phase changes at once, progress paced."""

from __future__ import annotations

from cairn.api.dataset import DatasetNodeStatus, NodePhase
from cairn.node_agent.datasets.steps import MIN_PROGRESS_SECONDS, progress_interval, report_due

DOWNLOADING = DatasetNodeStatus(phase=NodePhase.DOWNLOADING, progress=0.2, bytes_from_peers=10)


def test_progress_waits_longer_the_more_targets_share_the_object() -> None:
    assert progress_interval(1) == MIN_PROGRESS_SECONDS
    assert progress_interval(1000) == 500.0  # 1,000 targets still make 2 progress writes a second
    ahead = DOWNLOADING.model_copy(update={"progress": 0.5, "bytes_from_peers": 99})
    assert not report_due(DOWNLOADING, ahead, targets=1000, seconds_since_written=60)
    assert report_due(DOWNLOADING, ahead, targets=1000, seconds_since_written=500)
    assert report_due(DOWNLOADING, ahead, targets=4, seconds_since_written=MIN_PROGRESS_SECONDS)
    assert not report_due(DOWNLOADING, ahead, targets=4, seconds_since_written=1)


def test_a_phase_change_or_a_first_report_is_written_at_once() -> None:
    ready = DOWNLOADING.model_copy(update={"phase": NodePhase.READY, "progress": 1.0, "digest": "d"})
    assert report_due(DOWNLOADING, ready, targets=1000, seconds_since_written=0.1)
    failed = DOWNLOADING.model_copy(update={"phase": NodePhase.FAILED, "reason": "HashMismatch"})
    assert report_due(DOWNLOADING, failed, targets=1000, seconds_since_written=0.1)
    assert report_due(None, DOWNLOADING, targets=1000, seconds_since_written=None)
    # A restarted agent writes once, whatever it wrote before it stopped.
    assert report_due(DOWNLOADING, DOWNLOADING, targets=1000, seconds_since_written=None)


def test_nothing_new_is_never_written() -> None:
    stamped = DOWNLOADING.model_copy(update={"updated_at": None})
    assert not report_due(DOWNLOADING, stamped, targets=2, seconds_since_written=10_000)


def test_targets_that_began_together_report_progress_spread_over_the_interval() -> None:
    targets = [f"gpu-{i:04d}" for i in range(1000)]
    base = progress_interval(len(targets))
    intervals = sorted(progress_interval(len(targets), node) for node in targets)
    assert intervals[0] >= base and intervals[-1] < 2 * base  # never more often than the budget
    # A burst would put them all in one second; spread, no 5% of the interval holds more than 10%.
    window = 0.05 * base
    busiest = max(sum(1 for t in intervals if start <= t < start + window) for start in intervals)
    assert busiest <= 100
    # Fixed per node: the same on every pass, so its own reports stay evenly spaced.
    assert progress_interval(1000, "gpu-0007") == progress_interval(1000, "gpu-0007")
    ahead = DOWNLOADING.model_copy(update={"progress": 0.9})
    own = progress_interval(1000, "gpu-0007")
    assert not report_due(DOWNLOADING, ahead, 1000, own - 1, "gpu-0007")
    assert report_due(DOWNLOADING, ahead, 1000, own, "gpu-0007")
