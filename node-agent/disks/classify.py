"""Which pool class a disk belongs to: nvme, ssd or hdd.

NVMe is decided by how the disk is attached (kernel name, subsystem, udev bus/path, controller
transport), never by queue/rotational: hypervisors often present NVMe and SSD-backed disks as
rotational (hwameistor/hwameistor#770 files an NVMe disk in a VMware VM as HDD that way).
Rotational only separates ssd from hdd among the rest, and an operator's override beats all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from cairn.api.volume import DISK_CLASSES, PoolClass
from cairn.node_agent.disks.facts import DiskFacts
from cairn.node_agent.disks.identity import disk_identity

NODE_DEFAULT_KEY = "default"
# /sys/class/nvme/nvmeX/transport: every way Linux attaches an NVMe controller.
NVME_TRANSPORTS = frozenset({"pcie", "tcp", "rdma", "fc", "loop"})
_TRANSPORT_ATTRIBUTES = ("device/transport", "device/device/transport")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class ClassOverrides:
    node_default: PoolClass | None = None
    """Class for every disk of this node that no per-disk override names."""
    by_disk: dict[str, PoolClass] = field(default_factory=dict)
    """fnmatch pattern over the disk id, kernel name or device path -> class."""


@dataclass(frozen=True)
class Classification:
    disk_class: PoolClass
    source: str
    """How it was decided: override:disk, override:node, transport:nvme, rotational=0, rotational=1,
    udev:rotation-rate=<rpm>, default."""


def classify(
    facts: DiskFacts, overrides: ClassOverrides | None = None, *, disk_id: str | None = None
) -> Classification:
    """disk_id is the disk's resolved id when the caller has it; otherwise it is derived here."""
    if overrides is not None:
        forced = _disk_override(facts, overrides.by_disk, disk_id)
        if forced is not None:
            return Classification(forced, "override:disk")
        if overrides.node_default is not None:
            return Classification(overrides.node_default, "override:node")
    if is_nvme(facts):
        return Classification(PoolClass.NVME, "transport:nvme")
    rotational = facts.sysfs.get("queue/rotational", "").strip()
    if rotational == "0":
        return Classification(PoolClass.SSD, "rotational=0")
    if rotational == "1":
        return Classification(PoolClass.HDD, "rotational=1")
    rpm = facts.udev.get("ID_ATA_ROTATION_RATE_RPM", "").strip()
    if rpm.isdigit():
        disk_class = PoolClass.SSD if int(rpm) == 0 else PoolClass.HDD
        return Classification(disk_class, f"udev:rotation-rate={rpm}")
    # Nothing says what the medium is. Guessing hdd at worst leaves a fast disk in the slow pool;
    # guessing ssd could hand a volume that asked for ssd latency a spinning disk.
    return Classification(PoolClass.HDD, "default")


def is_nvme(facts: DiskFacts) -> bool:
    if facts.name.startswith("nvme") or "nvme" in facts.subsystems:
        return True
    if facts.udev.get("ID_BUS") == "nvme" or "-nvme-" in facts.udev.get("ID_PATH", ""):
        return True
    # Only NVMe controllers carry a "transport" attribute; SCSI hosts and virtio do not.
    return any(
        facts.sysfs.get(attribute, "").strip() in NVME_TRANSPORTS for attribute in _TRANSPORT_ATTRIBUTES
    )


def _disk_override(facts: DiskFacts, by_disk: dict[str, PoolClass], disk_id: str | None) -> PoolClass | None:
    """An exact key beats a glob, so `/dev/sd*=hdd` plus `wwn-0x5000...=ssd` does what it reads as;
    among globs the first listed wins."""
    subjects = [facts.device, facts.name, disk_id or disk_identity(facts).id]
    for exact in (True, False):
        for pattern, disk_class in by_disk.items():
            if _is_glob(pattern) != exact and _matches(pattern, subjects):
                return disk_class
    return None


def _is_glob(pattern: str) -> bool:
    return any(char in _GLOB_CHARS for char in pattern)


def _matches(pattern: str, subjects: Iterable[str]) -> bool:
    return any(fnmatchcase(subject, pattern) for subject in subjects)


def parse_class_overrides(specs: list[str]) -> ClassOverrides:
    """`--class-override` values: `default=ssd`, `/dev/loop*=nvme`, `wwn-0x5000c500a1b2c3d4=hdd`."""
    node_default: PoolClass | None = None
    by_disk: dict[str, PoolClass] = {}
    allowed = ", ".join(c.value for c in DISK_CLASSES)
    for spec in specs:
        key, equals, value = spec.rpartition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(
                f"--class-override {spec!r}: expected WHAT=CLASS, e.g. default=ssd or /dev/sdb=hdd"
            )
        try:
            disk_class = PoolClass(value.strip().lower())
            if disk_class not in DISK_CLASSES:
                raise ValueError(disk_class)
        except ValueError:
            raise ValueError(f"--class-override {spec!r}: class must be one of {allowed}") from None
        if key == NODE_DEFAULT_KEY:
            if node_default is not None:
                raise ValueError(
                    f"--class-override {spec!r}: the node default is already set to {node_default}"
                )
            node_default = disk_class
            continue
        if key in by_disk:
            raise ValueError(f"--class-override {spec!r}: {key} is already overridden to {by_disk[key]}")
        by_disk[key] = disk_class
    return ClassOverrides(node_default=node_default, by_disk=by_disk)
