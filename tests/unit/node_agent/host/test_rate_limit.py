"""The token bucket that caps uploads and background dataset reads."""

from __future__ import annotations

import threading
import time

from cairn.node_agent.host.rate_limit import TokenBucket


def _acquire_in_thread(bucket: TokenBucket, amount: int, limit_s: float, times: int = 1) -> float | None:
    """Seconds `times` calls of `acquire(amount)` took, or None if not done after `limit_s`."""
    took: list[float] = []

    def run() -> None:
        started = time.monotonic()
        for _ in range(times):
            bucket.acquire(amount)
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    return took[0] if took else None


def test_a_request_larger_than_the_burst_is_paced_not_refused_for_ever() -> None:
    # 1 MiB/s has a burst of 256 KiB. Two reads of 1 MiB: the first takes the full bucket and
    # leaves 768 KiB of debt, the second waits for that and for its own 256 KiB, about 1 s.
    bucket = TokenBucket(1024 * 1024)
    took = _acquire_in_thread(bucket, 1024 * 1024, limit_s=5.0, times=2)
    assert took is not None, "acquire of more than the burst never returned"
    assert 0.8 <= took <= 2.5


def test_the_rate_holds_across_threads() -> None:
    bucket = TokenBucket(4 * 1024 * 1024)  # burst 1 MiB
    started = time.monotonic()
    threads = [threading.Thread(target=bucket.acquire, args=(1024 * 1024,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # 5 MiB at 4 MiB/s with 1 MiB of burst: at least 1 s.
    assert time.monotonic() - started >= 0.9


def test_a_rate_of_zero_is_unlimited() -> None:
    assert _acquire_in_thread(TokenBucket(0), 10**12, limit_s=1.0) is not None
