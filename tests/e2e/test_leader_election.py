"""cairn-controller replicas elect one leader through a real Lease, with the controller's own rights."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from kubernetes import client

from cairn.kube import load_api_client
from cairn.leader import LeaseElector
from tests.testbed.bed import TestBed
from tests.testbed.controlplane import CAIRN_NAMESPACE
from tests.testbed.waiting import wait_until


def test_a_lease_that_keeps_being_renewed_is_never_taken_however_old_its_renew_time_reads(
    bed: TestBed,
) -> None:
    """The holder's clock is an hour behind: every renew time it writes looks long expired. A
    follower that compared those times with its own clock would take the Lease from a live leader."""
    api = client.CoordinationV1Api(load_api_client(str(bed.control_plane.kubeconfigs["cairn-controller"])))
    name = "cairn-controller-skew"
    renewing = threading.Event()
    renewing.set()

    body = client.V1Lease(metadata=client.V1ObjectMeta(name=name, namespace=CAIRN_NAMESPACE))
    first = api.create_namespaced_lease(CAIRN_NAMESPACE, body)

    def skewed_leader() -> None:
        lease = first
        while renewing.is_set():
            lease.spec = client.V1LeaseSpec(
                holder_identity="skewed",
                lease_duration_seconds=3,
                renew_time=datetime.now(UTC) - timedelta(hours=1),
            )
            lease = api.replace_namespaced_lease(name, CAIRN_NAMESPACE, lease)
            time.sleep(0.5)

    elected: list[str] = []
    stop = threading.Event()
    elector = LeaseElector(api, CAIRN_NAMESPACE, name, "follower", lease_seconds=3, renew_seconds=0.5)
    leader = threading.Thread(target=skewed_leader)
    leader.start()
    try:
        wait_until(
            lambda: api.read_namespaced_lease(name, CAIRN_NAMESPACE).spec.holder_identity,
            10,
            "the skewed leader",
        )
        follower = threading.Thread(target=elector.run, args=(lambda: elected.append("follower"), stop))
        follower.start()
        time.sleep(8)
        assert elected == [], "the follower took a Lease its holder kept renewing"
        renewing.clear()
        leader.join(5)
        took = wait_until(lambda: elected == ["follower"], 15, "the follower to take the abandoned Lease")
        assert took >= 2.5, "taken before a whole lease duration without renewals"
    finally:
        renewing.clear()
        stop.set()
        leader.join(5)
        admin = client.CoordinationV1Api(load_api_client(str(bed.control_plane.kubeconfigs["admin"])))
        admin.delete_namespaced_lease(name, CAIRN_NAMESPACE)


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
