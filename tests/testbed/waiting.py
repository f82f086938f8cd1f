"""Waiting for the cluster to reach a state, the one way every bed test does it."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    context: Callable[[], str] = lambda: "",
) -> float:
    """Poll until `predicate` holds and return the seconds it took; fail naming `what` otherwise.

    `context` adds what helps to diagnose a timeout (component logs, say) to the failure.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    details = context()
    raise AssertionError(f"not within {timeout:.0f}s: {what}" + (f"\n{details}" if details else ""))
