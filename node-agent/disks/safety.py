"""May Cairn use this disk, and may it wipe it: pure decisions over DiskFacts.

Signatures come from probing the device (facts.signatures). udev's ID_FS_TYPE and
ID_PART_TABLE_TYPE are added on top, never relied on alone: udev's database is missing in many
containers and was seen to hide GPT, ext4 and LVM signatures. Anything that is not a Cairn PV
keeps a disk from being Available.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.disk import DiskState
from cairn.api.names import OPT_OUT_LABEL, WIPE_ANNOTATION
from cairn.api.volume import PoolClass
from cairn.node_agent.disks.facts import DiskFacts
from cairn.node_agent.disks.identity import DiskIdentity
from cairn.units import GiB, human_bytes

MIN_DISK_BYTES = 1 * GiB

# Reasons, as shown in the LocalDisk Reason column. The first group is in use, the second
# carries data, the third is clean but not for Cairn.
HOLDS_ROOT_FILESYSTEM = "HoldsRootFilesystem"
MOUNTED = "Mounted"
IN_USE_AS_SWAP = "InUseAsSwap"
HAS_HOLDERS = "HasHolders"
HAS_PARTITION_TABLE = "HasPartitionTable"
FOREIGN_LVM_PHYSICAL_VOLUME = "ForeignLvmPhysicalVolume"
HAS_RAID_SIGNATURE = "HasRaidSignature"
HAS_FILESYSTEM = "HasFilesystem"
HAS_SIGNATURE = "HasSignature"
READ_ONLY = "ReadOnly"
LOOP_DEVICE_NOT_ALLOWED = "LoopDeviceNotAllowed"
TOO_SMALL = "TooSmall"
OPTED_OUT = "OptedOut"
CLASS_NOT_CLAIMED = "ClassNotClaimed"
REASONS = (
    HOLDS_ROOT_FILESYSTEM, MOUNTED, IN_USE_AS_SWAP, HAS_HOLDERS,
    HAS_PARTITION_TABLE, FOREIGN_LVM_PHYSICAL_VOLUME, HAS_RAID_SIGNATURE, HAS_FILESYSTEM, HAS_SIGNATURE,
    READ_ONLY, LOOP_DEVICE_NOT_ALLOWED, TOO_SMALL, OPTED_OUT, CLASS_NOT_CLAIMED,
)  # fmt: skip
"""In the order assess() checks them."""

# Compared lowercased. Names as blkid/wipefs print them.
PARTITION_TABLES = frozenset(
    {"gpt", "dos", "pmbr", "atari", "bsd", "mac", "sgi", "sun", "solaris", "unixware", "aix"}
)
LVM_MEMBERS = frozenset({"lvm2_member", "lvm1_member"})
# fmt: off
FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "ext4dev", "jbd", "xfs", "xfs_external_log", "btrfs", "bcachefs", "f2fs",
    "vfat", "exfat", "ntfs", "hfs", "hfsplus", "apfs", "iso9660", "udf", "squashfs", "erofs", "cramfs",
    "romfs", "jfs", "reiserfs", "reiser4", "nilfs2", "ocfs2", "gfs2", "minix", "ufs", "vxfs", "zonefs",
    # A ZFS pool member is a whole filesystem's data, not just a RAID leg.
    "zfs_member",
    # Not mounted, but someone's swap or encrypted data: as precious as a filesystem.
    "swap", "swsuspend", "crypto_luks", "bitlocker",
})
# fmt: on
_UNREADABLE_PREFIX = "unreadable:"
_WIPE_OFFER = (
    f"erase it by hand (wipefs --all) or annotate this LocalDisk {WIPE_ANNOTATION}=<its serial or WWN> "
    "for Cairn to wipe it"
)


@dataclass(frozen=True)
class Assessment:
    state: DiskState
    reason: str | None
    """CamelCase, for the kubectl column; None when Available or Claimed."""
    message: str
    """What was found and what to do about it."""


def assess(
    facts: DiskFacts,
    *,
    allow_loop: bool,
    opted_out: bool,
    claimed_classes: set[PoolClass],
    disk_class: PoolClass,
    min_bytes: int = MIN_DISK_BYTES,
) -> Assessment:
    # First match wins, and the order ranks what a user must know first: a disk the running
    # system uses (root, mounts, swap, holders) before one that merely holds data (partition
    # table, LVM, RAID, filesystem, other signatures), before a clean disk Cairn just may not
    # take (read-only, loop, size, opt-out, class). A Cairn PV sits among the data checks: its
    # LVM signature is the only data a disk may carry and still be Cairn's.
    dev = facts.device
    found = found_signatures(facts)
    lowered = [s.lower() for s in found]
    cairn_pv = is_cairn_pv(facts)

    if facts.holds_root:
        return _unavailable(HOLDS_ROOT_FILESYSTEM, f"{dev} holds the root filesystem; Cairn never uses it")
    if facts.mountpoints:
        where = ", ".join(facts.mountpoints)
        return _unavailable(
            MOUNTED,
            f"{dev} (or a partition of it) is mounted at {where}; unmount it and remove it from "
            "/etc/fstab if Cairn should use it",
        )
    if facts.swap:
        return _unavailable(
            IN_USE_AS_SWAP,
            f"{dev} (or a partition of it) is in use as swap; swapoff it and remove it "
            "from /etc/fstab if Cairn should use it",
        )
    # The device-mapper devices of Cairn's own LVs hold Cairn's PVs; those are expected.
    foreign_holders = [h for h in facts.holders if not (cairn_pv and h.startswith("dm-"))]
    if foreign_holders:
        return _unavailable(
            HAS_HOLDERS,
            f"{dev} is held by {', '.join(foreign_holders)} (device-mapper, md RAID or "
            "similar); tear that down first if Cairn should use the disk",
        )
    tables = [s for s, low in zip(found, lowered, strict=True) if low in PARTITION_TABLES]
    if tables or facts.partitions:
        what = f"a {'/'.join(tables)} partition table" if tables else "partitions"
        parts = f" ({', '.join(facts.partitions)})" if facts.partitions else ""
        return _unavailable(
            HAS_PARTITION_TABLE, f"{dev} has {what}{parts}; if its data is not needed, {_WIPE_OFFER}"
        )
    if cairn_pv:
        return Assessment(
            DiskState.CLAIMED, None, f"{dev} is a physical volume of Cairn's volume group {facts.lvm_vg}"
        )
    if any(low in LVM_MEMBERS for low in lowered):
        vg = f"of volume group {facts.lvm_vg}, which is not Cairn's" if facts.lvm_vg else "in no volume group"
        return _unavailable(
            FOREIGN_LVM_PHYSICAL_VOLUME,
            f"{dev} is an LVM physical volume {vg}; remove it from LVM "
            f"(vgreduce, pvremove) or, if its data is not needed, {_WIPE_OFFER}",
        )
    raid = [s for s, low in zip(found, lowered, strict=True) if low.endswith("_raid_member")]
    if raid:
        return _unavailable(
            HAS_RAID_SIGNATURE,
            f"{dev} is a member of a RAID set ({', '.join(raid)}); stop the array, "
            f"then, if its data is not needed, {_WIPE_OFFER}",
        )
    filesystems = [s for s, low in zip(found, lowered, strict=True) if low in FILESYSTEMS]
    if filesystems:
        return _unavailable(
            HAS_FILESYSTEM, f"{dev} holds {', '.join(filesystems)}; if its data is not needed, {_WIPE_OFFER}"
        )
    if found:
        unreadable = [s for s in found if s.startswith(_UNREADABLE_PREFIX)]
        if unreadable:
            detail = unreadable[0][len(_UNREADABLE_PREFIX) :].strip() or "no detail"
            return _unavailable(
                HAS_SIGNATURE,
                f"{dev} could not be probed for signatures ({detail}), so it is treated "
                "as holding data; check the device and the agent's access to it",
            )
        return _unavailable(
            HAS_SIGNATURE,
            f"{dev} carries {', '.join(found)}, which Cairn does not recognise; "
            f"if its data is not needed, {_WIPE_OFFER}",
        )
    if facts.sysfs.get("ro", "").strip() == "1":
        return _unavailable(
            READ_ONLY,
            f"{dev} is clean but read-only (sysfs ro=1); check its write-protect switch or how the "
            "hypervisor or SAN exports it",
        )
    if facts.name.startswith("loop") and not allow_loop:
        return _unavailable(
            LOOP_DEVICE_NOT_ALLOWED,
            f"{dev} is a clean loop device; loop devices are used only when the "
            "agent runs with --allow-loop-devices (test clusters)",
        )
    if facts.size_bytes < min_bytes:
        return _unavailable(
            TOO_SMALL,
            f"{dev} is clean but holds {human_bytes(facts.size_bytes)}; Cairn uses disks of at "
            f"least {human_bytes(min_bytes)} (--min-disk-bytes)",
        )
    if opted_out:
        return _unavailable(
            OPTED_OUT,
            f"{dev} is clean but labelled {OPT_OUT_LABEL}=true; remove the label to let Cairn use it",
        )
    if disk_class not in claimed_classes:
        claimed = ", ".join(sorted(c.value for c in claimed_classes)) or "no"
        return _unavailable(
            CLASS_NOT_CLAIMED,
            f"{dev} is a clean {disk_class.value} disk, but this node claims only "
            f"{claimed} disks; add {disk_class.value} to --claim-classes to use it",
        )
    return Assessment(
        DiskState.AVAILABLE, None, f"{dev} is clean; Cairn may claim it for pool {disk_class.value}"
    )


def found_signatures(facts: DiskFacts) -> list[str]:
    """The probe's signatures plus any udev still remembers, each once, in the order found."""
    extra = (facts.udev.get("ID_PART_TABLE_TYPE"), facts.udev.get("ID_FS_TYPE"))
    merged: dict[str, str] = {}
    for signature in (*facts.signatures, *extra):
        value = (signature or "").strip()
        if value:
            merged.setdefault(value.lower(), value)
    return list(merged.values())


def is_cairn_pv(facts: DiskFacts) -> bool:
    """Only an LVM signature, in a VG that carries Cairn's tag."""
    lowered = {s.lower() for s in found_signatures(facts)}
    return facts.lvm_vg_is_cairns and lowered == {"lvm2_member"}


def wipe_allowed(facts: DiskFacts, annotation_value: str | None, identity: DiskIdentity) -> tuple[bool, str]:
    """Wiping erases a disk for good, so it needs a value only someone reading this disk would type.

    The annotation must equal the disk's serial or its WWN, exactly. Both are burnt into the disk,
    unlike a kernel name or slot, which another disk can take after a reboot. The WWN is accepted
    even when a serial is known because without udevd a SCSI disk's serial is not readable while
    its WWN is, and the confirmation must not depend on udev. A loop device has neither; its id
    (derived from its backing file) stands in. Disks with none of these are never wiped by Cairn.
    In-use checks come first and no annotation overrides them.
    """
    dev = facts.device
    if facts.holds_root:
        return False, f"{dev} holds the root filesystem; Cairn never wipes it"
    if facts.mountpoints:
        return (
            False,
            f"{dev} is mounted at {', '.join(facts.mountpoints)}; unmount it before asking for a wipe",
        )
    if facts.swap:
        return False, f"{dev} is in use as swap; swapoff it before asking for a wipe"
    if is_cairn_pv(facts):
        return False, (
            f"{dev} is a physical volume of Cairn's pool {facts.lvm_vg}; remove it from the pool "
            "before asking for a wipe"
        )
    if facts.holders:
        return False, f"{dev} is held by {', '.join(facts.holders)}; tear those down before asking for a wipe"
    if facts.sysfs.get("ro", "").strip() == "1":
        return False, f"{dev} is read-only (sysfs ro=1); it cannot be wiped"

    accepted = {
        value: label for value, label in ((identity.serial, "serial"), (identity.wwn, "WWN")) if value
    }
    if identity.source == "loop-backing":
        accepted[identity.id] = "disk id"
    if not accepted:
        return False, (
            f"{dev} has no serial or WWN to confirm a wipe against; erase it by hand (wipefs --all {dev}) "
            "if its data is not needed"
        )
    expected = " or ".join(f"its {label} {value!r}" for value, label in accepted.items())
    if not annotation_value:
        return False, f"{WIPE_ANNOTATION} is empty; to wipe {dev}, set it to {expected}"
    label = accepted.get(annotation_value)
    if label is None:
        return False, (
            f"{WIPE_ANNOTATION}={annotation_value!r} does not match {dev}: set it to {expected} to "
            "confirm the wipe"
        )
    signatures = ", ".join(found_signatures(facts)) or "no signatures"
    return True, f"{WIPE_ANNOTATION} matches the {label} of {dev}; erasing {signatures}"


def _unavailable(reason: str, message: str) -> Assessment:
    return Assessment(DiskState.UNAVAILABLE, reason, message)
