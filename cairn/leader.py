"""Leader election on a coordination.k8s.io Lease, for loops that must run once per cluster.

The controller's CSI service runs in every replica (each replica's sidecars talk to their own),
but the dataset and populator loops would do everything twice. They start only in the replica
holding the Lease. A leader that cannot renew in time exits rather than risk a second leader
acting alongside it; its Deployment restarts it as a follower.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("cairn.leader")


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    renewed: datetime | None
    duration_seconds: int


def may_take(lease: LeaseView | None, identity: str, now: datetime) -> bool:
    """Whether `identity` may hold the Lease now: it is free, already ours, or its holder let it lapse."""
    if lease is None or not lease.holder or lease.holder == identity:
        return True
    if lease.renewed is None:
        return True
    return now > lease.renewed + timedelta(seconds=lease.duration_seconds)


class LeaseElector:
    def __init__(
        self,
        coordination: client.CoordinationV1Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        on_lost: Callable[[], None] = lambda: os._exit(1),
    ) -> None:
        self.api = coordination
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_lost = on_lost

    def run(self, on_elected: Callable[[], None], stop: threading.Event) -> None:
        """Block until elected, call `on_elected` once, then keep renewing until `stop`."""
        elected = False
        last_renewal = 0.0
        while not stop.is_set():
            try:
                held = self._try_hold()
            except ApiException as error:  # a conflict (someone else won the write) or the API away
                log.debug("lease %s/%s: %s", self.namespace, self.name, error.reason)
                held = False
            now = time.monotonic()
            if held:
                last_renewal = now
                if not elected:
                    elected = True
                    log.info("elected leader as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                    on_elected()
            elif elected and now - last_renewal > self.lease_seconds:
                log.error(
                    "lost the lease %s/%s; stopping so no second leader acts", self.namespace, self.name
                )
                self.on_lost()
                return
            stop.wait(self.renew_seconds)

    def _try_hold(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, acquired=now),
            )
            self.api.create_namespaced_lease(self.namespace, body)
            return True
        spec = lease.spec or client.V1LeaseSpec()
        view = LeaseView(
            spec.holder_identity, spec.renew_time, spec.lease_duration_seconds or self.lease_seconds
        )
        if not may_take(view, self.identity, now):
            return False
        acquired = spec.acquire_time if spec.holder_identity == self.identity else now
        lease.spec = self._spec(now, acquired=acquired)
        # Replace with the read resourceVersion: if another replica wrote in between, this is a 409.
        self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        return True

    def _spec(self, now: datetime, acquired: datetime | None) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired,
            renew_time=now,
        )
