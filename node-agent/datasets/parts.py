"""How the seeder splits a dataset into parts, one torrent each, so the swarm starts before it is done.

A v2 torrent carries the Merkle root of every file, so it exists only once every byte of it has been
read. With one torrent per dataset, no node could fetch a byte before the seeder had read all of
the origin, and the whole took twice F/R (the read, then the swarm). With one torrent per part,
published the moment the seeder holds it, the swarm copies part k while the seeder reads part k+1,
and what is left after the origin read is the last part's trip through the swarm.

Pure: no I/O. The policy:
- parts are groups of whole files (a torrent cannot hold part of a file whose hash it must carry),
  so a file is the smallest unit the swarm can start on;
- files are read largest first, so the part left for the end is the smallest;
- a part closes once it holds `part_target_bytes`: about 1/TARGET_PARTS of the dataset, at least
  MIN_PART_BYTES, because every part costs a torrent (its metadata fetched by every node, a
  connection to every peer) and a status entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from cairn.units import MiB

TARGET_PARTS = 32
MAX_PARTS = 64
"""With the target below, never more than this many: the status (an etcd object) lists each part."""
MIN_PART_BYTES = 8 * MiB


class Sized(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...


F = TypeVar("F", bound=Sized)


def part_target_bytes(total_bytes: int) -> int:
    return max(MIN_PART_BYTES, -(-total_bytes // TARGET_PARTS))


def plan_parts(files: Sequence[F]) -> list[list[F]]:
    """The files grouped into parts, in the order the seeder reads and publishes them."""
    total = sum(f.size for f in files)
    target = part_target_bytes(total)
    parts: list[list[F]] = []
    current: list[F] = []
    held = 0
    for file in sorted(files, key=lambda f: (-f.size, f.path)):
        current.append(file)
        held += file.size
        if held >= target:
            parts.append(current)
            current, held = [], 0
    if current:
        parts.append(current)
    assert len(parts) <= MAX_PARTS, "a part holds at least 1/TARGET_PARTS of the bytes"
    return parts


def first_hop(seeder: str | None, targets: Sequence[str], index: int) -> str | None:
    """The one node the seeder sends part `index` to; the others get it from each other.

    While the seeder reads the origin, its uplink has exactly the origin's rate to spare: every
    piece it sends twice is a piece some node waits longer for. Left to choose, leechers asked it
    for the same pieces (it sent 1.7-1.8x the data in bench.p2p_seed) and the swarm ran at the
    speed of its uplink's unique bytes. One first hop per part, rotating, sends each piece out
    once and spreads the forwarding over every node.
    """
    others = sorted(t for t in targets if t != seeder)
    return others[index % len(others)] if others else None


def part_peers(
    me: str, seeder: str | None, targets: Sequence[str], index: int, *, stalled: bool, origin_read: bool
) -> list[str]:
    """The nodes `me` connects to for part `index`.

    Until the seeder has read the whole origin (`origin_read`), it connects to the part's first hop
    only, and the others to every other target, and to the seeder only as the first hop or once
    `stalled` (no progress for a while: the first hop is down, or no other node holds what this
    one lacks, as for a node joining alone). After that, the seeder's uplink has nothing else to
    do, and it serves everyone.
    """
    others = [t for t in targets if t not in (me, seeder)]
    if me == seeder:
        if origin_read:
            return sorted(others)
        hop = first_hop(seeder, targets, index)
        return [hop] if hop else []
    wants_seeder = stalled or origin_read or me == first_hop(seeder, targets, index)
    if seeder is not None and seeder in targets and wants_seeder:
        others.append(seeder)
    return sorted(others)


STRANDED_SECONDS = 20.0
"""A part with no peer connected that gained nothing for this long rejoins its swarm afresh."""


def stranded(connected_peers: int, idle_seconds: float) -> bool:
    """Whether a downloading part waits on a swarm that will never answer.

    libtorrent keeps trying the peers it knows, but never one it banned (it now and then bans a
    good peer that shared a failed piece with a corrupt one) nor one it gave up on after
    `max_failcount` failed connects. With nobody connected for this long, only rejoining with those
    forgotten can finish the download.
    """
    return connected_peers == 0 and idle_seconds >= STRANDED_SECONDS
