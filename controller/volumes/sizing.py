"""Volume sizes: CSI capacity ranges resolved against a pool's extent size."""

from __future__ import annotations

from cairn.csi.errors import InvalidArgument, OutOfRange
from cairn.units import GiB, human_bytes, round_up

DEFAULT_VOLUME_BYTES = 1 * GiB


def resolve_size(required_bytes: int, limit_bytes: int, extent_bytes: int) -> int:
    """The size to allocate: at least `required`, a whole number of extents, and never over `limit`.

    0 means "not set" for both bounds, as in the CSI spec.
    """
    if required_bytes < 0 or limit_bytes < 0:
        raise InvalidArgument("capacity_range bytes must not be negative")
    if limit_bytes and required_bytes > limit_bytes:
        raise InvalidArgument(
            f"capacity_range is empty: required {human_bytes(required_bytes)} exceeds "
            f"limit {human_bytes(limit_bytes)}"
        )
    wanted = required_bytes or (
        min(DEFAULT_VOLUME_BYTES, limit_bytes) if limit_bytes else DEFAULT_VOLUME_BYTES
    )
    size = round_up(wanted, extent_bytes)
    if limit_bytes and size > limit_bytes:
        # Rounding overshot the limit; the largest whole-extent size below it still works if it
        # meets the requirement.
        size = (limit_bytes // extent_bytes) * extent_bytes
        if size == 0 or size < required_bytes:
            raise OutOfRange(
                f"no whole number of {human_bytes(extent_bytes)} extents fits between required "
                f"{human_bytes(required_bytes)} and limit {human_bytes(limit_bytes)}"
            )
    return size


def size_fits_range(size_bytes: int, required_bytes: int, limit_bytes: int) -> bool:
    """Whether an existing volume satisfies a repeated CreateVolume's capacity range."""
    return size_bytes >= required_bytes and (not limit_bytes or size_bytes <= limit_bytes)
