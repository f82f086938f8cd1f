"""What the node agent knows about one block device: plain data, gathered by disks/probe.py.

Every decision about disks (class, identity, safety) is a pure function of these facts, so it
can be tested against recorded property sets of real hardware without root or the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiskFacts:
    name: str
    """Kernel name: nvme0n1, sda, vda, loop3."""
    device: str
    """Device node: /dev/nvme0n1."""
    size_bytes: int
    udev: dict[str, str] = field(default_factory=dict)
    """udev properties (ID_SERIAL, ID_WWN, ID_BUS, ID_PATH, ...); empty where no udevd runs."""
    sysfs: dict[str, str] = field(default_factory=dict)
    """sysfs attributes relative to /sys/block/<name>: queue/rotational, device/model, device/serial,
    wwid, device/wwid, removable, ro, device/transport, loop/backing_file, ..."""
    subsystems: tuple[str, ...] = ()
    """Subsystems of the device's ancestors, nearest first: ("nvme", "pci") or ("scsi", "pci")."""
    by_path: str | None = None
    partitions: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    mountpoints: tuple[str, ...] = ()
    """Where the device or any of its partitions is mounted."""
    swap: bool = False
    signatures: tuple[str, ...] = ()
    """Signature types found by probing the device itself (wipefs): gpt, ext4, LVM2_member, ..."""
    lvm_vg: str | None = None
    """For an LVM PV: its VG, when lvm could read it."""
    lvm_vg_is_cairns: bool = False
    """That VG carries Cairn's tag."""
    holds_root: bool = False
    """The filesystem mounted at / lives on this disk (or a partition of it)."""


VIRTUAL_PREFIXES = ("ram", "zram", "sr", "fd", "dm-", "md", "nbd", "drbd")


@dataclass(frozen=True)
class ProbeScope:
    """Which block devices belong to this node's agent.

    allow_loop is a test setting: loop devices are not disks. loop_backing_prefix narrows them to
    one simulated node's disks, because the test bed's nodes share one kernel.
    """

    allow_loop: bool = False
    loop_backing_prefix: str | None = None

    def includes(self, name: str, backing_file: str | None) -> bool:
        if name.startswith(VIRTUAL_PREFIXES):
            return False
        if name.startswith("loop"):
            if not self.allow_loop or not backing_file:
                return False
            return self.loop_backing_prefix is None or backing_file.startswith(self.loop_backing_prefix)
        return True
