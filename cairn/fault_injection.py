"""Crash points for the crash-matrix test: a process kills itself with SIGKILL at a named step.

A real crash (power loss, OOM kill, `kill -9`) cannot be aimed at "after the LV exists and before
its status says so" from outside; the crash-matrix e2e test (tests/e2e/test_crash_matrix.py) needs
exactly that. Set `CAIRN_FAULT_CRASH_AT=<point>[:<n>]` and the process dies, unwarned and unflushed,
the n-th time (default the first) it reaches `<point>`. Unset, a crash point is one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter

CRASH_AT_ENV = "CAIRN_FAULT_CRASH_AT"

log = logging.getLogger("cairn.fault_injection")
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def crash_point(point: str) -> None:
    wanted = os.environ.get(CRASH_AT_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    with _lock:
        _hits[point] += 1
        reached = _hits[point]
    if reached >= int(nth or 1):
        log.critical("fault injection: killing this process at %s (hit %d)", point, reached)
        os.kill(os.getpid(), signal.SIGKILL)
