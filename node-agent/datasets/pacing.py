"""How fast a Dataset may move on this node: unlimited, or capped when it is seeded in the background.

A Background Dataset shares its nodes with a job that is training. libtorrent limits each torrent
(one per part) on its own, and a node moves many parts at once, so:
- Bytes in, which this node writes to disk and hashes: the cap is shared equally among the parts
  this node still lacks, set again on every pass (2 s). The seeder's origin reads draw on a token
  bucket of the same rate. So a node takes in at most its cap.
- CPU: while every Dataset moving on the node is Background (`urgent` says none is Normal),
  libtorrent's threads run at nice 19, as the seeder's origin streams always do for Background
  Datasets (their I/O class is idle too). Rates cap bytes; the TLS, hashing and TCP work per byte
  is the session's, and on a node with a job training it must come last.
- Bytes out: each part may send at the cap. Every peer receiving them is held to its own cap in,
  so a node sends at most the cap to each peer it serves at once.
Splitting the outbound cap among the parts too, by any rule, starved the swarm: libtorrent's
rate estimates trail a raised limit by seconds, so the shares of parts a peer had just begun
asking for grew by only half a share per pass. In the e2e test the peer's copy took 24-33 s
against the 12 s the cap allows, and 14 s with the rule above.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.dataset import Dataset, DatasetPhase, DatasetSpec, SeedPriority
from cairn.units import KiB, MiB

DEFAULT_BACKGROUND_BYTES_PER_SECOND = 100 * MiB
"""The agent's cap for a Background Dataset that names none (--background-bytes-per-second)."""
MIN_PART_BYTES_PER_SECOND = 64 * KiB
"""Below this a torrent's limiter hands out less than a block per tick and the part can stall."""


@dataclass(frozen=True)
class PartLimits:
    download: int
    upload: int
    """Bytes per second for one part's torrent; 0 is unlimited."""


UNLIMITED = PartLimits(0, 0)


def node_rate(spec: DatasetSpec, default_bytes_per_second: int) -> int:
    """This node's cap for the Dataset, in bytes per second each way; 0 when it is not Background."""
    if spec.priority != SeedPriority.BACKGROUND:
        return 0
    return spec.background_bytes_per_second or default_bytes_per_second


def part_limits(rate: int, lacking: int, complete: bool) -> PartLimits:
    """One part's limits under the node cap `rate`, with `lacking` parts still to come in."""
    if rate <= 0:
        return UNLIMITED
    download = 0 if complete else max(rate // max(1, lacking), MIN_PART_BYTES_PER_SECOND)
    return PartLimits(download=download, upload=rate)


def urgent(dataset: Dataset) -> bool:
    """A Dataset of priority Normal still moving: the node's libtorrent threads must not yield."""
    return dataset.spec.priority != SeedPriority.BACKGROUND and dataset.status.phase not in (
        DatasetPhase.READY,
        DatasetPhase.FAILED,
    )
