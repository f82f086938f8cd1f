"""Fetching a part's .torrent from the agents that hold it, over their peer servers (mutual TLS)."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cairn.api.dataset import Dataset
from cairn.api.disk import StorageNode
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.identity import PeerIdentity

log = logging.getLogger("cairn.node.datasets")
MAX_TORRENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Holder:
    node: str
    address: str
    certificate: str


def torrent_holders(nodes: list[StorageNode], me: str, dataset: Dataset) -> list[Holder]:
    """The targets that may serve a part's .torrent, seeder first; only agents that publish a certificate.

    The seeder has every published part; a node that joined a part serves it too.
    """
    holders = sorted(
        (
            n
            for n in nodes
            if n.spec.node_name != me
            and n.spec.node_name in dataset.status.target_nodes
            and n.status.endpoints.peer_restore_address
            and n.status.endpoints.peer_certificate
        ),
        key=lambda n: n.spec.node_name != dataset.status.seeder,
    )
    return [
        Holder(
            n.spec.node_name,
            str(n.status.endpoints.peer_restore_address),
            str(n.status.endpoints.peer_certificate),
        )
        for n in holders
    ]


def fetch_part_torrent(
    identity: PeerIdentity,
    holders: list[Holder],
    namespace: str,
    name: str,
    index: int,
    expected: str,
    info_hash_of: Callable[[bytes], str | None],
) -> bytes | None:
    """The first .torrent a holder serves whose info-hash is `expected`; None if nobody has it yet."""
    for holder in holders:
        path = f"/v1/datasets/{namespace}/{name}/parts/{index}/torrent"
        try:
            host, port = split_address(holder.address)
            connection = http.client.HTTPSConnection(
                host, port, timeout=10, context=identity.client_context(holder.certificate)
            )
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                data: bytes = response.read(MAX_TORRENT_BYTES)
            finally:
                connection.close()
        except (OSError, ValueError, http.client.HTTPException) as error:
            log.debug("dataset %s/%s: no torrent from %s: %s", namespace, name, holder.node, error)
            continue
        if response.status != 200:
            log.debug(
                "dataset %s/%s: %s answered %d for part %d",
                namespace,
                name,
                holder.node,
                response.status,
                index,
            )
            continue
        if info_hash_of(data) != expected:
            log.warning(
                "dataset %s/%s: %s served a torrent for part %d that is not %s; ignored",
                namespace,
                name,
                holder.node,
                index,
                expected,
            )
            continue
        return data
    log.info("dataset %s/%s: no node served part %d's torrent yet", namespace, name, index)
    return None
