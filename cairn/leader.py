"""Leader election on a coordination.k8s.io Lease, for loops that must run once per cluster.

The controller's CSI service runs in every replica (each replica's sidecars talk to their own),
but the dataset and populator loops would do everything twice. They start only in the replica
holding the Lease. A leader that cannot renew before its deadline exits rather than risk a second
leader acting alongside it; its Deployment restarts it as a follower.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.lease_watch import LeaseSighting, LeaseWatch

log = logging.getLogger("cairn.leader")


class LeaseElector:
    """client-go's rules, on monotonic clocks only.

    A follower takes the Lease only after watching its record stay unchanged for a whole lease
    duration on its own clock. A leader stops acting once `renew_deadline_seconds` (shorter than
    the duration) has passed since it *sent* its last successful renewal, whether the renewals
    since then failed or hang: each is cut off at that deadline, and a watchdog stops the leader
    even if a call ignores its timeout. The follower's wait starts after that renewal was
    written, so it ends after the leader stopped; no clock's setting enters.
    """

    def __init__(
        self,
        coordination: client.CoordinationV1Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_seconds: float = 2.0,
        renew_deadline_seconds: float | None = None,
        on_lost: Callable[[], None] = lambda: os._exit(1),
    ) -> None:
        self.api = coordination
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.renew_deadline_seconds = renew_deadline_seconds or lease_seconds * 2 / 3
        if not renew_seconds < self.renew_deadline_seconds < lease_seconds:
            raise ValueError("need renew interval < renew deadline < lease duration")
        self.on_lost = on_lost
        self._seen = LeaseWatch(lease_seconds)
        self._last_renewal: float | None = None
        self._lost = threading.Event()
        self._lost_once = threading.Lock()

    def run(self, on_elected: Callable[[], None], stop: threading.Event) -> None:
        """Block until elected, call `on_elected` once, then keep renewing until `stop`."""
        while not stop.is_set() and not self._lost.is_set():
            started = time.monotonic()
            try:
                held = self._try_hold(started, self._budget(started))
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                # a conflict (someone else won the write), the API away, or a call cut off
                log.debug("lease %s/%s: %s", self.namespace, self.name, error)
                held = False
            if held:
                elected = self._last_renewal is not None
                self._last_renewal = started
                if not elected:
                    log.info("elected leader as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                    threading.Thread(
                        target=self._watchdog, args=(stop,), name="leader-watchdog", daemon=True
                    ).start()
                    on_elected()
            elif self._past_deadline(time.monotonic()):
                self._give_up()
                return
            stop.wait(self.renew_seconds)

    def _budget(self, now: float) -> tuple[float, float] | None:
        """The timeout for this attempt's calls: a leader's may not run past its renew deadline."""
        if self._last_renewal is None:
            return None  # a follower has no deadline; the client's default bounds it
        left = max(0.1, self._last_renewal + self.renew_deadline_seconds - now)
        return (min(left, 5.0), left)

    def _past_deadline(self, now: float) -> bool:
        return self._last_renewal is not None and now - self._last_renewal > self.renew_deadline_seconds

    def _watchdog(self, stop: threading.Event) -> None:
        while not stop.wait(0.25) and not self._lost.is_set():
            if self._past_deadline(time.monotonic()):
                self._give_up()
                return

    def _give_up(self) -> None:
        with self._lost_once:
            if self._lost.is_set():
                return
            self._lost.set()
        log.error(
            "could not renew the lease %s/%s within %.1fs; stopping so no second leader acts",
            self.namespace,
            self.name,
            self.renew_deadline_seconds,
        )
        self.on_lost()

    def _try_hold(self, now: float, timeout: tuple[float, float] | None) -> bool:
        wall = datetime.now(UTC)  # written for people to read; no decision uses it
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(wall, acquired=wall),
            )
            self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
            return True
        spec = lease.spec or client.V1LeaseSpec()
        mine = spec.holder_identity == self.identity
        if not mine and spec.holder_identity:
            marker = f"{spec.holder_identity}|{lease.metadata.resource_version}"
            self._seen.observe(
                self.name, LeaseSighting(marker, spec.lease_duration_seconds or self.lease_seconds), now
            )
            if not self._seen.expired(self.name, now):
                return False
        if not mine and self._last_renewal is not None:
            return False  # another took it: this replica's leadership is over, never resumed
        acquired = spec.acquire_time if mine else wall
        lease.spec = self._spec(wall, acquired=acquired)
        # Replace with the read resourceVersion: if another replica wrote in between, this is a 409.
        self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=timeout)
        return True

    def _spec(self, now: datetime, acquired: datetime | None) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired,
            renew_time=now,
        )
