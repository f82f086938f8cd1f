"""Is a Lease still being renewed? Judged by watching it change on the watcher's own clock.

Never by comparing the renew time another host wrote with this host's wall clock: skew between
the two cannot make a live holder look dead, or a dead one live. Agents' node Leases and the
controller's leader Lease are both judged this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.api.names import DEFAULT_NODE_LEASE_SECONDS


@dataclass(frozen=True)
class LeaseSighting:
    marker: str
    """Changes with every renewal (the renew time as written, or the resourceVersion)."""
    duration_seconds: int


@dataclass
class _Seen:
    marker: str | None
    changed_at: float
    duration_seconds: int


@dataclass
class LeaseWatch:
    """Which holders' Leases (by key: a node, a lock) stopped changing for longer than their duration.

    A key first seen (with or without a Lease) gets a full duration from that moment: a watcher
    that just started declares no holder dead before it could have seen one renewal.
    """

    default_duration_seconds: int = DEFAULT_NODE_LEASE_SECONDS
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, key: str, sighting: LeaseSighting | None, now: float) -> None:
        marker = sighting.marker if sighting else None
        duration = sighting.duration_seconds if sighting else self.default_duration_seconds
        seen = self._seen.get(key)
        if seen is None or seen.marker != marker:
            self._seen[key] = _Seen(marker, now, duration)
        else:
            seen.duration_seconds = duration

    def expired(self, key: str, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and now - seen.changed_at > seen.duration_seconds

    def forget(self, keep: set[str]) -> None:
        self._seen = {key: seen for key, seen in self._seen.items() if key in keep}
