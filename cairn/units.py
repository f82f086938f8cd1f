"""Byte sizes for humans, one way everywhere (messages, printer columns, metrics labels)."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_UNITS = [("Ti", TiB), ("Gi", GiB), ("Mi", MiB), ("Ki", KiB)]


def human_bytes(value: int) -> str:
    """3.1Gi, 512Mi, 100: Kubernetes quantity suffixes, one decimal where it matters."""
    for suffix, size in _UNITS:
        if value >= size:
            amount = value / size
            text = f"{amount:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(value)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
