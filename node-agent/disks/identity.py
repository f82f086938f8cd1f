"""Which physical disk is this: a stable id that survives reboots, renames (sda <-> sdb) and udev.

The id names the LocalDisk object, so it must come out the same whether or not udevd runs: the
udev and sysfs spellings of the same WWN or serial are normalised to one form. Ids are built from
the most durable fact available: the WWN (burnt into the device), then serial plus model, then the
slot (by-path), then a loop device's backing file, and last the kernel name, which can change on
every boot and is only there so that a disk without any identity is still reported.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from cairn.node_agent.disks.facts import DiskFacts

IdentitySource = Literal["wwn", "serial", "by-path", "loop-backing", "kernel-name"]

# Ids are stored in spec.diskId and typed into --class-override flags: keep them to characters
# that need no quoting in YAML, shells or fnmatch. "@" is left out so only duplicate suffixes use it.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:+-]+")
_MODEL_SEPARATORS = re.compile(r"[\s_]+")
_HEX = re.compile(r"^[0-9a-f]+$")
_DNS_UNSAFE = re.compile(r"[^a-z0-9.-]+")
_MAX_OBJECT_NAME = 253
_NAME_HASH_CHARS = 12


@dataclass(frozen=True)
class DiskIdentity:
    id: str
    source: IdentitySource
    serial: str | None = None
    wwn: str | None = None
    model: str | None = None
    by_path: str | None = None
    """The slot the disk sits in (udev ID_PATH); tells apart disks whose ids collide."""


def disk_identity(facts: DiskFacts) -> DiskIdentity:
    wwn = _wwn(facts)
    serial = _serial(facts)
    model = _model(facts)
    by_path = _by_path(facts)
    if wwn:
        return DiskIdentity(f"wwn-{_safe(wwn)}", "wwn", serial, wwn, model, by_path)
    if serial:
        # udev spells ATA models with underscores, sysfs with spaces: one separator keeps the id
        # the same with and without udevd.
        parts = [_MODEL_SEPARATORS.sub("_", model).strip("_")] if model else []
        return DiskIdentity(
            f"serial-{_safe('_'.join([*parts, serial]))}", "serial", serial, wwn, model, by_path
        )
    if by_path:
        return DiskIdentity(f"path-{_safe(by_path)}", "by-path", serial, wwn, model, by_path)
    backing = _clean(facts.sysfs.get("loop/backing_file"))
    if facts.name.startswith("loop") and backing:
        # The path may be long and hold any character; its hash is stable and safe to store.
        digest = hashlib.sha256(backing.encode()).hexdigest()[:16]
        return DiskIdentity(f"loop-{digest}", "loop-backing", serial, wwn, model, by_path)
    return DiskIdentity(f"kname-{_safe(facts.name)}", "kernel-name", serial, wwn, model, by_path)


def normalise_wwn(raw: str | None) -> str | None:
    """One spelling for a WWN from udev (0x5000c500...) or sysfs (naa.5000c500..., eui..., nvme....).

    Returns None for values that identify nothing: empty, all-zero (some USB bridges and cheap
    SSDs report that), and SCSI "t10." ids, which are only vendor, model and serial glued together.
    """
    value = _clean(raw)
    if not value:
        return None
    value = value.lower()
    if value.startswith("naa."):
        value = "0x" + value[4:]
    if value.startswith("t10."):
        return None
    if value.startswith("0x"):
        digits = value[2:]
    elif value.startswith("eui."):
        digits = value[4:]
    elif value.startswith("nvme."):
        # Linux builds nvme.<vendor>-<serial hex>-<model hex>-<nsid> when the namespace has no
        # EUI-64 or NGUID: as unique as the serial, and still per namespace.
        return value if len(value) > len("nvme.") else None
    else:
        digits = value
    if not digits or not _HEX.match(digits) or set(digits) == {"0"}:
        return None
    return value


def localdisk_name(node: str, identity_id: str) -> str:
    """`<node>-<12 hex of sha256(id)>`: a valid object name whatever characters the id holds."""
    digest = hashlib.sha256(identity_id.encode()).hexdigest()[:_NAME_HASH_CHARS]
    prefix = _DNS_UNSAFE.sub("-", node.lower())[: _MAX_OBJECT_NAME - _NAME_HASH_CHARS - 1]
    # A DNS subdomain starts and ends each label with an alphanumeric character.
    prefix = prefix.strip(".-")
    return f"{prefix}-{digest}" if prefix else digest


def resolve_duplicates(identities: dict[str, DiskIdentity]) -> dict[str, tuple[str, bool]]:
    """Kernel name -> (unique id, shares its identity with another disk).

    Cheap USB bridges and some hypervisors give every disk the same serial. Collapsing them would
    make two disks one LocalDisk, so each keeps its own id, suffixed with its slot (by-path), which
    survives reboots, or with its kernel name when the slot is unknown or shared too.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for kernel_name in sorted(identities):
        groups[identities[kernel_name].id].append(kernel_name)
    resolved: dict[str, tuple[str, bool]] = {}
    for base, members in groups.items():
        if len(members) == 1:
            resolved[members[0]] = (base, False)
            continue
        paths = [identities[m].by_path for m in members]
        for kernel_name, path in zip(members, paths, strict=True):
            suffix = path if path and paths.count(path) == 1 else kernel_name
            resolved[kernel_name] = (f"{base}@{_safe(suffix)}", True)
    return _make_unique(resolved)


def _make_unique(resolved: dict[str, tuple[str, bool]]) -> dict[str, tuple[str, bool]]:
    # Guards the unlikely case of a suffixed id equal to another disk's id; kernel names are unique.
    seen: dict[str, int] = defaultdict(int)
    for unique_id, _ in resolved.values():
        seen[unique_id] += 1
    return {
        name: (f"{unique_id}@{_safe(name)}", True) if seen[unique_id] > 1 else (unique_id, duplicated)
        for name, (unique_id, duplicated) in resolved.items()
    }


def _wwn(facts: DiskFacts) -> str | None:
    candidates = (
        facts.udev.get("ID_WWN_WITH_EXTENSION"),
        facts.udev.get("ID_WWN"),
        facts.sysfs.get("wwid"),
        facts.sysfs.get("device/wwid"),
    )
    for candidate in candidates:
        wwn = normalise_wwn(candidate)
        if wwn:
            return wwn
    return None


def _serial(facts: DiskFacts) -> str | None:
    # ID_SCSI_SERIAL is a SAS disk's unit serial (the one on its label); its ID_SERIAL_SHORT is
    # the WWN again. NVMe pads serials with spaces, virtio-blk keeps its serial on the disk itself.
    candidates = (
        facts.udev.get("ID_SCSI_SERIAL"),
        facts.udev.get("ID_SERIAL_SHORT"),
        facts.udev.get("ID_SERIAL"),
        facts.sysfs.get("device/serial"),
        facts.sysfs.get("serial"),
    )
    return next((value for value in map(_clean, candidates) if value), None)


def _model(facts: DiskFacts) -> str | None:
    candidates = (facts.udev.get("ID_MODEL"), facts.sysfs.get("device/model"))
    return next((value for value in map(_clean, candidates) if value), None)


def _by_path(facts: DiskFacts) -> str | None:
    value = _clean(facts.by_path) or _clean(facts.udev.get("ID_PATH"))
    return value.removeprefix("/dev/disk/by-path/") if value else None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip() or None


def _safe(value: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", value)
