"""Fetching a part's .torrent from the agents that hold it, over their peer servers."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable

from cairn.api.dataset import Dataset
from cairn.api.disk import StorageNode

log = logging.getLogger("cairn.node.datasets")
MAX_TORRENT_BYTES = 64 * 1024 * 1024


def torrent_holders(nodes: list[StorageNode], me: str, dataset: Dataset) -> list[tuple[str, str]]:
    """(node, peer server address) of the targets that may serve a part's .torrent, seeder first.

    The seeder has every published part; a node that joined a part serves it too.
    """
    holders = sorted(
        (
            n
            for n in nodes
            if n.spec.node_name != me
            and n.spec.node_name in dataset.status.target_nodes
            and n.status.endpoints.peer_restore_address
        ),
        key=lambda n: n.spec.node_name != dataset.status.seeder,
    )
    return [(n.spec.node_name, str(n.status.endpoints.peer_restore_address)) for n in holders]


def fetch_part_torrent(
    holders: list[tuple[str, str]],
    namespace: str,
    name: str,
    index: int,
    expected: str,
    info_hash_of: Callable[[bytes], str | None],
) -> bytes | None:
    """The first .torrent a holder serves whose info-hash is `expected`; None if nobody has it yet."""
    for node, address in holders:
        url = f"http://{address}/v1/datasets/{namespace}/{name}/parts/{index}/torrent"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data: bytes = response.read(MAX_TORRENT_BYTES)
        except OSError as error:
            log.debug("dataset %s/%s: no torrent from %s: %s", namespace, name, node, error)
            continue
        if info_hash_of(data) != expected:
            log.warning(
                "dataset %s/%s: %s served a torrent for part %d that is not %s; ignored",
                namespace,
                name,
                node,
                index,
                expected,
            )
            continue
        return data
    log.info("dataset %s/%s: no node served part %d's torrent yet", namespace, name, index)
    return None
