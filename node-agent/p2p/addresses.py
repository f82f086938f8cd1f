"""Peer addresses as StorageNodes publish them: "host:port", or "[v6]:port"."""

from __future__ import annotations


def split_address(address: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") into its parts; a clear error for anything else."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)
