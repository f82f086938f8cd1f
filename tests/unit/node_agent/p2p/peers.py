"""Real peer identities and real TLS peer servers on 127.0.0.1, for the tests that talk to one."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cairn.api.disk import AgentEndpoints, StorageNode, StorageNodeSpec, StorageNodeStatus
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.node_agent.p2p.peer_server import PeerDirectory, PeerServer


class Identities:
    """One key pair per node name, made on first use under a test's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, PeerIdentity] = {}

    def __getitem__(self, node: str) -> PeerIdentity:
        if node not in self._made:
            self._made[node] = PeerIdentity.create(node, self.root / node)
        return self._made[node]


def published(
    name: str, address: str | None, identity: PeerIdentity | None, *, ready: bool = True
) -> StorageNode:
    """A StorageNode as its agent publishes it: address and certificate."""
    endpoints = AgentEndpoints(
        peer_restore_address=address, peer_certificate=identity.certificate_pem if identity else None
    )
    return StorageNode(
        spec=StorageNodeSpec(node_name=name), status=StorageNodeStatus(ready=ready, endpoints=endpoints)
    )


@contextmanager
def peer_server(
    identities: Identities, node: str, clients: list[str], locate: Any, **options: Any
) -> Iterator[PeerServer]:
    """`node`'s peer server, trusting the published certificates of `clients`."""
    nodes = [published(c, None, identities[c]) for c in clients]
    server = PeerServer(
        "127.0.0.1:0", identities[node], PeerDirectory(lambda: nodes), locate, **options
    ).serve_in_background()
    try:
        yield server
    finally:
        server.close()


def get(
    server: PeerServer,
    path: str,
    identity: PeerIdentity,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    """GET `path` from `server` as the node `identity` speaks for."""
    host, port = split_address(server.address)
    connection = http.client.HTTPSConnection(
        host, port, timeout=timeout, context=identity.client_context(server.identity.certificate_pem)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
