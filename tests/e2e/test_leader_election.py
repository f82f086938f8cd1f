"""cairn-controller replicas elect one leader through a real Lease, with the controller's own rights."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from kubernetes import client

from cairn.kube import load_api_client
from cairn.leader import LeaseElector, LeaseView, may_take
from tests.testbed.bed import TestBed
from tests.testbed.controlplane import CAIRN_NAMESPACE
from tests.testbed.waiting import wait_until


def test_may_take_a_free_own_or_lapsed_lease_only() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    assert may_take(None, "a", now)
    assert may_take(LeaseView("a", now, 15), "a", now)
    assert not may_take(LeaseView("b", now - timedelta(seconds=10), 15), "a", now)
    assert may_take(LeaseView("b", now - timedelta(seconds=16), 15), "a", now)


def test_one_replica_leads_and_a_standby_takes_over_when_it_stops(bed: TestBed) -> None:
    api = client.CoordinationV1Api(load_api_client(str(bed.control_plane.kubeconfigs["cairn-controller"])))
    elected: list[str] = []
    lost: list[str] = []
    stops = {name: threading.Event() for name in ("replica-a", "replica-b")}

    def replica(name: str) -> threading.Thread:
        elector = LeaseElector(
            api,
            CAIRN_NAMESPACE,
            "cairn-controller-test",
            name,
            lease_seconds=3,
            renew_seconds=0.5,
            on_lost=lambda: lost.append(name),
        )
        thread = threading.Thread(target=elector.run, args=(lambda: elected.append(name), stops[name]))
        thread.start()
        return thread

    first = replica("replica-a")
    wait_until(lambda: elected == ["replica-a"], 10, "replica-a to lead")
    second = replica("replica-b")
    time.sleep(2)
    assert elected == ["replica-a"], "two leaders at once"
    stops["replica-a"].set()
    first.join(5)
    wait_until(lambda: elected == ["replica-a", "replica-b"], 15, "replica-b to take over")
    holder = api.read_namespaced_lease("cairn-controller-test", CAIRN_NAMESPACE).spec.holder_identity
    assert holder == "replica-b" and lost == []
    stops["replica-b"].set()
    second.join(5)
    # The controller may not delete Leases (it never needs to); the test's admin cleans up.
    admin = client.CoordinationV1Api(load_api_client(str(bed.control_plane.kubeconfigs["admin"])))
    admin.delete_namespaced_lease("cairn-controller-test", CAIRN_NAMESPACE)
