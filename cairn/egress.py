"""Where a tenant may point the root agent: not at the node's own services, the cloud's metadata
endpoint, or the cluster's nodes, pods and services.

A Dataset's origin URL and S3 endpoint are tenant input, fetched by an agent on the host network.
Unchecked, `http://169.254.169.254/...` hands a tenant the node's cloud credentials and
`http://127.0.0.1:10250/` the kubelet. Every address a name resolves to is checked, the connection
goes to the address that was checked (a second lookup could answer differently), and a redirect
is a new connection, checked the same way. An operator can allow ranges back (an in-cluster
object store, say) through the chart.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_DENIED: tuple[str, ...] = (
    "0.0.0.0/8",  # "this host"
    "127.0.0.0/8",  # loopback: the kubelet, the agent's own ports
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "224.0.0.0/4",  # multicast
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
    "fd00:ec2::254/128",  # the IPv6 metadata endpoint of one large cloud
)


class EgressRefused(Exception):
    """A tenant's URL leads where the agent may not go; the message says where and why."""


def _network(text: str) -> Network:
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass(frozen=True)
class EgressPolicy:
    denied: tuple[Network, ...] = field(default_factory=lambda: tuple(_network(n) for n in ALWAYS_DENIED))
    allowed: tuple[Network, ...] = ()
    """Ranges an operator allows back, even inside a denied one."""

    @classmethod
    def build(cls, cluster_ranges: Iterable[str] = (), allowed: Iterable[str] = ()) -> EgressPolicy:
        """`cluster_ranges`: the node, pod and service ranges, denied as well as the fixed ones."""
        denied = [_network(n) for n in ALWAYS_DENIED] + [_network(n) for n in cluster_ranges if n.strip()]
        return cls(tuple(denied), tuple(_network(n) for n in allowed if n.strip()))

    def refusal(self, address: Address) -> str | None:
        """Why the agent may not connect to `address`; None when it may."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        checked = mapped or address
        if any(checked in network for network in self.allowed):
            return None
        hit = next((network for network in self.denied if checked in network), None)
        if hit is None:
            return None
        return f"{address} is in {hit}, which origins may not reach (allow it in the chart if it is meant)"

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """getaddrinfo results for host:port, all of them allowed, or EgressRefused."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise EgressRefused(f"{host} does not resolve: {error}") from None
        for *_, address in found:
            why = self.refusal(ipaddress.ip_address(str(address[0]).split("%")[0]))
            if why:
                raise EgressRefused(f"{host} resolves to {why}")
        return found

    def check_url(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EgressRefused(f"{url!r} is not an http(s) URL")
        self.resolve(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose every connection, redirects included, goes to a checked address."""
        policy = self

        def connect(self_: http.client.HTTPConnection) -> socket.socket:
            last: OSError | None = None
            for family, kind, proto, _, address in policy.resolve(self_.host, self_.port or 80):
                sock = socket.socket(family, kind, proto)
                sock.settimeout(self_.timeout if isinstance(self_.timeout, int | float) else None)
                try:
                    sock.connect(address)
                    return sock
                except OSError as error:
                    sock.close()
                    last = error
            raise last or OSError(f"cannot connect to {self_.host}")

        class CheckedHTTPConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = connect(self)

        class CheckedHTTPSConnection(http.client.HTTPSConnection):
            def connect(self) -> None:
                context = getattr(self, "_context", None) or ssl.create_default_context()
                self.sock = context.wrap_socket(connect(self), server_hostname=self.host)

        class CheckedHTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(CheckedHTTPConnection, req)

        class CheckedHTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(CheckedHTTPSConnection, req)

        opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.UnknownHandler(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPRedirectHandler(),
            urllib.request.HTTPErrorProcessor(),
            CheckedHTTPHandler(),
            CheckedHTTPSHandler(),
        ):
            opener.add_handler(handler)
        return opener


def cluster_ranges(nodes: Iterable[Any], service_cidrs: Iterable[str]) -> list[str]:
    """The node addresses and pod ranges of kubernetes Node objects, and the service ranges."""
    ranges: list[str] = []
    for node in nodes:
        for address in (node.status.addresses or []) if node.status else []:
            if address.type in ("InternalIP", "ExternalIP"):
                ranges.append(address.address)
        ranges += list((node.spec.pod_cidrs or []) if node.spec else [])
    return ranges + list(service_cidrs)
