"""A tenant's origin URL cannot lead the root agent to loopback, cloud metadata or the cluster."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from cairn.egress import EgressPolicy, cluster_ranges
from cairn.node_agent.datasets.origin import HttpOrigin, OriginError


def node(address: str, pod_cidr: str) -> client.V1Node:
    return client.V1Node(
        spec=client.V1NodeSpec(pod_cidrs=[pod_cidr]),
        status=client.V1NodeStatus(addresses=[client.V1NodeAddress(type="InternalIP", address=address)]),
    )


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "0.0.0.0",
        "10.0.0.7",
        "10.244.3.9",
    ],
)
def test_loopback_metadata_and_the_clusters_ranges_are_refused(address: str) -> None:
    policy = EgressPolicy.build(cluster_ranges([node("10.0.0.7", "10.244.3.0/24")], ["10.96.0.0/12"]))
    assert policy.refusal(ipaddress.ip_address(address)) is not None


def test_other_addresses_and_allowed_ranges_pass() -> None:
    policy = EgressPolicy.build(["10.96.0.0/12"], allowed=["10.96.0.10/32"])
    assert policy.refusal(ipaddress.ip_address("203.0.113.5")) is None
    assert policy.refusal(ipaddress.ip_address("10.96.0.10")) is None  # allowed back by the chart
    assert policy.refusal(ipaddress.ip_address("10.96.0.11")) is not None


class Redirecting(BaseHTTPRequestHandler):
    target = ""

    def do_HEAD(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirecting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_origin_on_loopback_is_refused_before_any_connection(redirecting_server: str) -> None:
    with pytest.raises(OriginError) as refused:
        HttpOrigin([f"{redirecting_server}/weights.bin"], EgressPolicy.build()).list_files()
    assert refused.value.reason == "OriginRefused" and "127.0.0.0/8" in str(refused.value)


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:1/x"])
def test_a_redirect_to_a_refused_address_is_not_followed(redirecting_server: str, target: str) -> None:
    Redirecting.target = target
    # The first hop is allowed here (standing in for a real server); the redirect is not.
    policy = EgressPolicy.build(allowed=["127.0.0.1/32"])
    with pytest.raises(OriginError) as refused:
        HttpOrigin([f"{redirecting_server}/weights.bin"], policy).list_files()
    assert refused.value.reason == "OriginRefused"
    assert target.split("/")[2].split(":")[0] in str(refused.value)
