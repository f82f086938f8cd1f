"""What the agent knows about one of its node's volumes, and why a volume could not be filled.

Every feature that touches a volume (the CSI Node service, the reconciler, datasets, populate) shares
these, so they live apart from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.volume import VolumeAccess


@dataclass(frozen=True)
class StagedVolume:
    """What the node service needs to know about one of its node's volumes."""

    name: str
    device: str
    access: VolumeAccess
    fs_type: str | None
    pool: str
    read_only: bool = False
    """Staged and published read-only whatever the CO asks: a Dataset's copy is shared, verified data."""


class PopulateError(Exception):
    """A volume cannot be filled from its source; `reason` goes on the claim's Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
