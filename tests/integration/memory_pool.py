"""What the root-only memory pool tests share; their `pool` fixture is in conftest.py."""

from __future__ import annotations

MiB = 1024 * 1024
VG = "cairn-memory"
