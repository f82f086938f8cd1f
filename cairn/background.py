"""Background work that coalesces bursts of triggers into one run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("cairn.background")


class Coalescing:
    """Runs `action` in its own thread after `trigger()`, at most once per `min_interval` seconds,
    and also every `period` seconds when given (a safety net for missed triggers)."""

    def __init__(
        self,
        name: str,
        action: Callable[[], object],
        stop: threading.Event,
        *,
        min_interval: float = 0.5,
        period: float | None = None,
    ) -> None:
        self._name = name
        self._action = action
        self._stop = stop
        self._min_interval = min_interval
        self._period = period
        self._dirty = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Coalescing:
        self._thread.start()
        return self

    def trigger(self) -> None:
        self._dirty.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            fired = self._dirty.wait(timeout=self._period if self._period else 1.0)
            if not fired and not self._period:
                continue
            self._dirty.clear()
            try:
                self._action()
            except Exception:  # the next trigger or period retries
                log.warning("%s failed; will retry", self._name, exc_info=True)
            self._stop.wait(self._min_interval)


def backoff_seconds(attempt: int, cap: float = 30.0) -> float:
    """1, 2, 4 ... `cap` seconds before attempt n+1: patient with a peer that is away, never hammering it."""
    return float(min(2 ** (attempt - 1), cap))
