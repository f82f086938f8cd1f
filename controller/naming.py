"""Deterministic LocalVolume names: the same CSI name always maps to the same object."""

from __future__ import annotations

import hashlib
import re

_PREFIX = "lv-"
_DIGEST_CHARS = 32
_NAME_RE = re.compile(rf"^{_PREFIX}[0-9a-f]{{{_DIGEST_CHARS}}}$")


def volume_name(csi_name: str) -> str:
    """A valid Kubernetes object name and LVM LV name, whatever characters the CO used."""
    return _PREFIX + hashlib.sha256(csi_name.encode()).hexdigest()[:_DIGEST_CHARS]


def is_volume_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))
