"""DiskFacts from the recorded property sets in tests/fixtures/disks, as disks.probe would build them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from cairn.node_agent.disks.facts import DiskFacts
from tests.testbed.tools import REPO_ROOT

FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "disks"
# What pyudev still reports without udevd: the kernel's uevent (recorded on the dev VM).
KERNEL_UEVENT_KEYS = frozenset({"DEVPATH", "DEVNAME", "DEVTYPE", "DISKSEQ", "MAJOR", "MINOR", "SUBSYSTEM"})


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURE_DIR.glob("*.json"))


def load_disk(fixture: str, *, udev: bool = True, **changes: Any) -> DiskFacts:
    """The recorded disk; udev=False is the same disk on a node where no udevd runs."""
    raw = json.loads((FIXTURE_DIR / f"{fixture}.json").read_text())
    if not raw.get("comment"):
        raise ValueError(f"fixture {fixture} does not say what device it models")
    properties: dict[str, str] = raw["udev"]
    if not udev:
        properties = {k: v for k, v in properties.items() if k in KERNEL_UEVENT_KEYS}
    facts = DiskFacts(
        name=raw["name"],
        device=raw["device"],
        size_bytes=raw["size_bytes"],
        udev=properties,
        sysfs=raw["sysfs"],
        subsystems=tuple(raw["subsystems"]),
        # disks.probe takes by-path from udev's ID_PATH, so it is gone without udevd too.
        by_path=properties.get("ID_PATH"),
        partitions=tuple(raw.get("partitions", ())),
        holders=tuple(raw.get("holders", ())),
        mountpoints=tuple(raw.get("mountpoints", ())),
        swap=raw.get("swap", False),
        signatures=tuple(raw.get("signatures", ())),
        lvm_vg=raw.get("lvm_vg"),
        lvm_vg_is_cairns=raw.get("lvm_vg_is_cairns", False),
        holds_root=raw.get("holds_root", False),
    )
    return replace(facts, **changes)
