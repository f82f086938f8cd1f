"""How much of the memory pool a volume may take: pure.

The pool is a fixed reservation of host memory (`--memory-pool-bytes`). Each memory volume is a
tmpfs whose size limit is its share; the shares never add up to more than the reservation, so the
pool cannot take more than it was given however the volumes fill. Sizes are whole pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cairn.units import human_bytes

PAGE_BYTES = 4096


class PoolExhausted(Exception):
    """The reservation cannot hold the request; the message gives both figures."""

    def __init__(self, message: str, *, free_bytes: int, needed_bytes: int) -> None:
        super().__init__(message)
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes


@dataclass(frozen=True)
class PoolUsage:
    total_bytes: int
    reserved_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.reserved_bytes)


def page_rounded(size_bytes: int) -> int:
    if size_bytes <= 0:
        raise ValueError(f"a memory volume needs a positive size, not {size_bytes}")
    return -(-size_bytes // PAGE_BYTES) * PAGE_BYTES


def usage(total_bytes: int, shares: Mapping[str, int]) -> PoolUsage:
    return PoolUsage(total_bytes, sum(shares.values()))


def admit(total_bytes: int, shares: Mapping[str, int], volume: str, size_bytes: int) -> int:
    """The share `volume` gets for `size_bytes` (page-rounded), given the others' shares.

    A volume that already holds a share is asked again for its new size: growing takes only the
    difference, and shrinking is refused (a tmpfs holding more than its new limit would keep it).
    """
    wanted = page_rounded(size_bytes)
    held = shares.get(volume, 0)
    if wanted < held:
        raise ValueError(
            f"memory volume {volume} holds {human_bytes(held)}; it cannot shrink to {human_bytes(wanted)}"
        )
    others = sum(size for name, size in shares.items() if name != volume)
    free = max(0, total_bytes - others - held)
    if wanted - held > free:
        raise PoolExhausted(
            f"memory pool has {human_bytes(free)} free of {human_bytes(total_bytes)}; volume {volume} "
            f"needs {human_bytes(wanted - held)} more",
            free_bytes=free,
            needed_bytes=wanted - held,
        )
    return wanted


FULL_RATIO = 0.95
"""A memory volume this full is reported: the next checkpoint likely fails with ENOSPC."""


def is_full(used_bytes: int, total_bytes: int, available_bytes: int) -> bool:
    """Whether a memory volume is full enough to warn of: nearly every byte used, or none left."""
    return total_bytes > 0 and (available_bytes == 0 or used_bytes >= FULL_RATIO * total_bytes)
