"""Gathers DiskFacts: pyudev for the device list, sysfs for attributes, and the devices themselves.

This is the side-effect half of discovery; every decision lives in classify, identity
and safety (and the scan's plan). Signatures are read by probing the disk (wipefs), never from udev's cache,
which is missing in many containers and was seen to hide GPT, ext4 and LVM signatures.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyudev

from cairn.node_agent.disks.facts import DiskFacts, ProbeScope

log = logging.getLogger("cairn.node.disks")
SYS_BLOCK = Path("/sys/block")
# Kernel devices that look like disks but never are one Cairn may use.
SYSFS_ATTRIBUTES = (
    "queue/rotational",
    "removable",
    "ro",
    "serial",
    "wwid",
    "device/wwid",
    "device/model",
    "device/serial",
    "device/vendor",
    "device/transport",
    "device/device/transport",
    "loop/backing_file",
)
# SCSI and SATA disks expose their serial only in VPD page 0x80; without udev it is the one source.
VPD_SERIAL = "device/vpd_pg80"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _sysfs(name: str) -> dict[str, str]:
    base = SYS_BLOCK / name
    found = {}
    for attribute in SYSFS_ATTRIBUTES:
        value = _read(base / attribute)
        if value is not None:
            found[attribute] = value
    if "device/serial" not in found:
        serial = _vpd_serial(base / VPD_SERIAL)
        if serial:
            found["device/serial"] = serial
    return found


def _vpd_serial(path: Path) -> str | None:
    """The unit serial number from a raw VPD page 0x80: a 4-byte header, then ASCII."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) < 4 or raw[1] != 0x80:
        return None
    length = int.from_bytes(raw[2:4], "big")
    return raw[4 : 4 + length].decode("ascii", errors="replace").strip() or None


def _partitions(name: str) -> tuple[str, ...]:
    base = SYS_BLOCK / name
    return tuple(sorted(p.name for p in base.iterdir() if (p / "partition").exists()))


def _holders(name: str, partitions: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for path in [SYS_BLOCK / name / "holders", *(SYS_BLOCK / name / p / "holders" for p in partitions)]:
        try:
            found += sorted(os.listdir(path))
        except OSError:
            continue
    return tuple(found)


def _dev_numbers(name: str, partitions: tuple[str, ...]) -> set[str]:
    numbers = {_read(SYS_BLOCK / name / "dev")}
    numbers |= {_read(SYS_BLOCK / name / p / "dev") for p in partitions}
    return {n for n in numbers if n}


@dataclass(frozen=True)
class MountTable:
    by_device: dict[str, tuple[str, ...]]
    """major:minor -> mount points."""
    root_device: str | None

    @classmethod
    def read(cls) -> MountTable:
        by_device: dict[str, list[str]] = {}
        root = None
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            numbers, mount_point = fields[2], fields[4]
            by_device.setdefault(numbers, []).append(mount_point)
            if mount_point == "/":
                root = numbers
        return cls({k: tuple(v) for k, v in by_device.items()}, root)


def swap_devices() -> set[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return {os.path.realpath(line.split()[0]) for line in lines if line.strip()}


def signatures(device: str) -> tuple[str, ...]:
    """Signature types on the device itself (partition tables, filesystems, RAID, LVM)."""
    result = subprocess.run(
        ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", device],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        # Unreadable is not clean: report it as a signature so the disk is never claimed.
        return (f"unreadable:{result.stderr.strip()[:80]}",)
    return tuple(line.strip() for line in result.stdout.splitlines() if line.strip())


PvLookup = Callable[[str], tuple[str | None, bool]]
"""device -> (VG name, VG is Cairn's) for an LVM physical volume."""


def disks_in_scope(scope: ProbeScope) -> list[tuple[pyudev.Device, dict[str, str]]]:
    """This node's disks with their sysfs attributes, enumerated once for a whole scan."""
    context = pyudev.Context()
    found = []
    # /sys/block holds exactly the whole disks. Only what decides the scope is read for each: a
    # host may carry hundreds (the test bed's loop devices, a storage server's), and a udev device
    # with all its attributes for each of them, every scan, was most of an idle agent's CPU.
    for name in sorted(os.listdir(SYS_BLOCK)):
        backing = _read(SYS_BLOCK / name / "loop/backing_file") if name.startswith("loop") else None
        if not scope.includes(name, backing):
            continue
        try:
            device = pyudev.Devices.from_sys_path(context, str(SYS_BLOCK / name))
        except pyudev.DeviceNotFoundError:
            continue  # gone since the listing
        if device.device_type == "disk":
            found.append((device, _sysfs(name)))
    return found


def device_nodes(disks: list[tuple[pyudev.Device, dict[str, str]]]) -> list[str]:
    """Device nodes of `disks`: what lvm should be allowed to look at."""
    return [d.device_node or f"/dev/{d.sys_name}" for d, _ in disks]


def probe_disks(
    scope: ProbeScope,
    pv_lookup: PvLookup,
    disks: list[tuple[pyudev.Device, dict[str, str]]] | None = None,
) -> list[DiskFacts]:
    """Facts about every disk of this node, as the kernel and the devices report them now;
    `disks` from `disks_in_scope` saves enumerating them again."""
    mounts = MountTable.read()
    swaps = swap_devices()
    facts: list[DiskFacts] = []
    for device, sysfs in disks_in_scope(scope) if disks is None else disks:
        name = device.sys_name
        size = int(sysfs.get("size", _read(SYS_BLOCK / name / "size") or "0")) * 512
        if size == 0:
            continue  # an empty slot: an unattached loop, a card reader without a card
        node = device.device_node or f"/dev/{name}"
        partitions = _partitions(name)
        numbers = _dev_numbers(name, partitions)
        found = signatures(node)
        vg, vg_is_cairns = pv_lookup(node) if "LVM2_member" in found else (None, False)
        facts.append(
            DiskFacts(
                name=name,
                device=node,
                size_bytes=size,
                udev={k: v for k, v in device.properties.items()},
                sysfs=sysfs,
                subsystems=tuple(a.subsystem for a in device.ancestors if a.subsystem),
                by_path=device.properties.get("ID_PATH"),
                partitions=partitions,
                holders=_holders(name, partitions),
                mountpoints=tuple(m for n in sorted(numbers) for m in mounts.by_device.get(n, ())),
                swap=node in swaps or any(f"/dev/{p}" in swaps for p in partitions),
                signatures=found,
                lvm_vg=vg,
                lvm_vg_is_cairns=vg_is_cairns,
                holds_root=mounts.root_device in numbers,
            )
        )
    return facts
