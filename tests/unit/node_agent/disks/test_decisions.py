"""Disk class, identity and safety, decided from recorded udev/sysfs property sets of real devices.

Every recorded disk is also checked as it looks on a node without udevd (kernel uevent keys only,
no by-path): classification and identity must still work, and dirty disks must still be refused.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from cairn.api.disk import DiskState
from cairn.api.volume import PoolClass
from cairn.node_agent.disks.classify import ClassOverrides, classify, parse_class_overrides
from cairn.node_agent.disks.facts import DiskFacts
from cairn.node_agent.disks.identity import (
    DiskIdentity,
    disk_identity,
    localdisk_name,
    normalise_wwn,
    resolve_duplicates,
)
from cairn.node_agent.disks.safety import REASONS, Assessment, assess, wipe_allowed
from tests.unit.node_agent.disks.recorded import fixture_names, load_disk

GiB = 1024**3
NVME, SSD, HDD = PoolClass.NVME, PoolClass.SSD, PoolClass.HDD
ALL_CLASSES = {NVME, SSD, HDD}
UDEV = pytest.mark.parametrize("udev", [True, False], ids=["with-udev", "without-udev"])
# Kubernetes object names: a lowercase RFC 1123 DNS subdomain.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check(
    facts: DiskFacts,
    *,
    claimed: set[PoolClass] | None = None,
    allow_loop: bool = False,
    opted_out: bool = False,
    min_bytes: int = GiB,
) -> Assessment:
    return assess(
        facts,
        allow_loop=allow_loop,
        opted_out=opted_out,
        claimed_classes=ALL_CLASSES if claimed is None else claimed,
        disk_class=classify(facts).disk_class,
        min_bytes=min_bytes,
    )


def clean(fixture: str, *, udev: bool = True, **changes: object) -> DiskFacts:
    """The recorded disk with nothing on it (the used SSD's GPT removed)."""
    facts = load_disk(fixture, udev=udev)
    udev_props = {k: v for k, v in facts.udev.items() if not k.startswith(("ID_PART_TABLE", "ID_FS"))}
    blank: dict[str, object] = {"udev": udev_props, "signatures": (), "partitions": ()}
    return replace(facts, **{**blank, **changes})  # type: ignore[arg-type]


def cairn_pv(*, udev: bool = True, **changes: object) -> DiskFacts:
    """The PM9A3 as a physical volume of Cairn's nvme pool."""
    pv: dict[str, object] = {"signatures": ("LVM2_member",), "lvm_vg": "cairn-nvme", "lvm_vg_is_cairns": True}
    return clean("samsung_pm9a3_nvme", udev=udev, **{**pv, **changes})


# -- fixtures themselves ----------------------------------------------------------------------


def test_every_fixture_says_what_device_it_models() -> None:
    names = fixture_names()
    assert len(names) >= 9
    for name in names:
        load_disk(name)  # raises without a comment


# -- class ------------------------------------------------------------------------------------

EXPECTED_CLASS = {
    "samsung_pm9a3_nvme": (NVME, "transport:nvme"),
    "vmware_nvme_rotational": (NVME, "transport:nvme"),
    "intel_s4610_sata_ssd": (SSD, "rotational=0"),
    "samsung_860evo_used": (SSD, "rotational=0"),
    "seagate_exos_sas_hdd": (HDD, "rotational=1"),
    "wd_red_sata_hdd": (HDD, "rotational=1"),
    "virtio_blk_vda": (HDD, "rotational=1"),
    "usb_bridge_pair_sdd": (HDD, "rotational=1"),
    "usb_bridge_pair_sde": (HDD, "rotational=1"),
    "loop_device": (HDD, "rotational=1"),
}


def test_every_fixture_has_an_expected_class() -> None:
    assert set(EXPECTED_CLASS) == set(fixture_names())


@UDEV
@pytest.mark.parametrize("fixture", sorted(EXPECTED_CLASS))
def test_each_recorded_disk_gets_its_class_with_or_without_udev(fixture: str, udev: bool) -> None:
    result = classify(load_disk(fixture, udev=udev))
    assert (result.disk_class, result.source) == EXPECTED_CLASS[fixture]


@UDEV
def test_nvme_in_a_vm_reporting_rotational_is_still_nvme(udev: bool) -> None:
    facts = load_disk("vmware_nvme_rotational", udev=udev)
    assert facts.sysfs["queue/rotational"] == "1"
    assert classify(facts).disk_class == NVME


@pytest.mark.parametrize(
    "evidence",
    [
        {"subsystems": ("nvme", "pci")},
        {"udev": {"ID_PATH": "pci-0000:c1:00.0-nvme-1"}},
        {"udev": {"ID_BUS": "nvme"}},
        {"sysfs": {"queue/rotational": "1", "device/transport": "tcp"}},
        {"sysfs": {"queue/rotational": "1", "device/transport": "rdma"}},
    ],
    ids=["subsystem", "udev-path", "udev-bus", "nvme-tcp", "nvme-rdma"],
)
def test_nvme_is_recognised_by_how_it_is_attached_not_only_by_its_name(evidence: dict[str, object]) -> None:
    anonymous = DiskFacts(
        name="xvdb", device="/dev/xvdb", size_bytes=100 * GiB, sysfs={"queue/rotational": "1"}
    )
    result = classify(replace(anonymous, **evidence))  # type: ignore[arg-type]
    assert (result.disk_class, result.source) == (NVME, "transport:nvme")


def test_a_scsi_disk_behind_a_pci_hba_is_not_nvme() -> None:
    assert classify(load_disk("seagate_exos_sas_hdd")).disk_class == HDD


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("intel_s4610_sata_ssd", (SSD, "udev:rotation-rate=0")),
        ("wd_red_sata_hdd", (HDD, "udev:rotation-rate=5400")),
    ],
)
def test_ata_rotation_rate_decides_when_sysfs_lacks_rotational(
    fixture: str, expected: tuple[PoolClass, str]
) -> None:
    facts = load_disk(fixture)
    facts = replace(facts, sysfs={k: v for k, v in facts.sysfs.items() if k != "queue/rotational"})
    result = classify(facts)
    assert (result.disk_class, result.source) == expected


def test_a_disk_nothing_is_known_about_is_hdd_by_default() -> None:
    result = classify(DiskFacts(name="sdz", device="/dev/sdz", size_bytes=100 * GiB))
    assert (result.disk_class, result.source) == (HDD, "default")


def test_per_disk_override_beats_the_node_default_which_beats_detection() -> None:
    overrides = parse_class_overrides(["default=ssd", "wwn-eui.36344830526001230025384500000001=hdd"])
    pm9a3 = classify(load_disk("samsung_pm9a3_nvme"), overrides)
    exos = classify(load_disk("seagate_exos_sas_hdd"), overrides)
    assert (pm9a3.disk_class, pm9a3.source) == (HDD, "override:disk")
    assert (exos.disk_class, exos.source) == (SSD, "override:node")


@UDEV
def test_override_by_device_glob_makes_the_test_beds_loop_devices_nvme(udev: bool) -> None:
    overrides = parse_class_overrides(["/dev/loop*=nvme"])
    result = classify(load_disk("loop_device", udev=udev), overrides)
    assert (result.disk_class, result.source) == (NVME, "override:disk")
    assert classify(load_disk("virtio_blk_vda", udev=udev), overrides).source == "rotational=1"


@pytest.mark.parametrize("key", ["sda", "sd?", "/dev/sda", "wwn-0x55cd2e415012abcd", "wwn-0x55cd*"])
def test_override_names_a_disk_by_kernel_name_device_or_disk_id(key: str) -> None:
    result = classify(load_disk("intel_s4610_sata_ssd", udev=False), parse_class_overrides([f"{key}=hdd"]))
    assert (result.disk_class, result.source) == (HDD, "override:disk")


def test_an_exact_override_beats_a_glob_whatever_the_order() -> None:
    overrides = parse_class_overrides(["/dev/sd*=hdd", "wwn-0x55cd2e415012abcd=nvme"])
    assert classify(load_disk("intel_s4610_sata_ssd"), overrides).disk_class == NVME
    assert classify(load_disk("wd_red_sata_hdd"), overrides).disk_class == HDD


def test_override_can_use_the_callers_resolved_disk_id() -> None:
    overrides = ClassOverrides(by_disk={"serial-Generic_0123456789ABCDEF@pci-0000:00:14.0-usb-0:2*": SSD})
    sde = load_disk("usb_bridge_pair_sde")
    resolved = resolve_duplicates({f.name: disk_identity(f) for f in (load_disk("usb_bridge_pair_sdd"), sde)})
    assert classify(sde, overrides, disk_id=resolved["sde"][0]).disk_class == SSD
    assert classify(sde, overrides).disk_class == HDD


def test_class_overrides_parse_from_cli_strings() -> None:
    parsed = parse_class_overrides(
        ["default=ssd", "/dev/loop*=nvme", "wwn-0x5000c500a1b2c3d4 = HDD", "nvme.1b36-abc-00000001=nvme"]
    )
    assert parsed.node_default == SSD
    assert parsed.by_disk == {
        "/dev/loop*": NVME,
        "wwn-0x5000c500a1b2c3d4": HDD,
        "nvme.1b36-abc-00000001": NVME,
    }
    assert parse_class_overrides([]) == ClassOverrides()


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["nvme"], "expected WHAT=CLASS"),
        (["=ssd"], "expected WHAT=CLASS"),
        (["/dev/sdb=fast"], "class must be one of nvme, ssd, hdd"),
        (["default=memory"], "class must be one of nvme, ssd, hdd"),
        (["default=ssd", "default=hdd"], "node default is already set to ssd"),
        (["/dev/sdb=ssd", "/dev/sdb=hdd"], "/dev/sdb is already overridden to ssd"),
    ],
)
def test_bad_class_overrides_are_rejected_with_a_message_naming_the_flag(
    specs: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match="--class-override") as error:
        parse_class_overrides(specs)
    assert message in str(error.value)


# -- identity ---------------------------------------------------------------------------------

EXPECTED_WWN_ID = {
    "samsung_pm9a3_nvme": "wwn-eui.36344830526001230025384500000001",
    "intel_s4610_sata_ssd": "wwn-0x55cd2e415012abcd",
    "seagate_exos_sas_hdd": "wwn-0x5000c500d7a1b2c3",
    "wd_red_sata_hdd": "wwn-0x50014ee2b1234567",
    "samsung_860evo_used": "wwn-0x5002538e40a1b2c3",
    "vmware_nvme_rotational": "wwn-nvme.15ad-564d77617265204e564d455f30303030-"
    "564d77617265205669727475616c204e564d65204469736b-00000001",
}


@UDEV
@pytest.mark.parametrize("fixture", sorted(EXPECTED_WWN_ID))
def test_a_disk_with_a_wwn_keeps_the_same_id_with_or_without_udev(fixture: str, udev: bool) -> None:
    identity = disk_identity(load_disk(fixture, udev=udev))
    assert (identity.id, identity.source) == (EXPECTED_WWN_ID[fixture], "wwn")


@UDEV
def test_nvme_serial_and_model_padding_is_stripped(udev: bool) -> None:
    identity = disk_identity(load_disk("samsung_pm9a3_nvme", udev=udev))
    assert identity.serial == "S64HNE0R600123"
    assert identity.model == "SAMSUNG MZQL23T8HCLS-00A07"
    assert identity.wwn == "eui.36344830526001230025384500000001"


def test_a_sas_disk_reports_the_serial_on_its_label_not_its_naa_id() -> None:
    identity = disk_identity(load_disk("seagate_exos_sas_hdd"))
    assert identity.serial == "ZR5ABC120000C123XYZ0"
    assert identity.wwn == "0x5000c500d7a1b2c3"


@UDEV
def test_virtio_disk_is_identified_by_its_serial_with_or_without_udev(udev: bool) -> None:
    identity = disk_identity(load_disk("virtio_blk_vda", udev=udev))
    assert (identity.id, identity.source, identity.serial) == ("serial-overlayblk", "serial", "overlayblk")


def test_serial_id_is_the_same_whether_the_model_comes_from_udev_or_sysfs() -> None:
    with_udev = load_disk("samsung_pm9a3_nvme", udev=True, sysfs={}, subsystems=())
    with_udev = replace(with_udev, udev={k: v for k, v in with_udev.udev.items() if k != "ID_WWN"})
    sysfs_only = load_disk("samsung_pm9a3_nvme", udev=False)
    sysfs_only = replace(sysfs_only, sysfs={k: v for k, v in sysfs_only.sysfs.items() if k != "wwid"})
    ids = {disk_identity(with_udev).id, disk_identity(sysfs_only).id}
    assert ids == {"serial-SAMSUNG_MZQL23T8HCLS-00A07_S64HNE0R600123"}


@UDEV
def test_a_disk_without_serial_falls_back_to_its_slot_then_its_kernel_name(udev: bool) -> None:
    facts = load_disk("virtio_blk_vda", udev=udev)
    facts = replace(
        facts,
        udev={k: v for k, v in facts.udev.items() if k != "ID_SERIAL"},
        sysfs={k: v for k, v in facts.sysfs.items() if k != "serial"},
    )
    identity = disk_identity(facts)
    expected = ("path-pci-0000:00:02.0", "by-path") if udev else ("kname-vda", "kernel-name")
    assert (identity.id, identity.source) == expected
    assert identity.serial is None


@UDEV
def test_loop_device_is_identified_by_its_backing_file(udev: bool) -> None:
    facts = load_disk("loop_device", udev=udev)
    identity = disk_identity(facts)
    assert identity.source == "loop-backing"
    assert re.fullmatch(r"loop-[0-9a-f]{16}", identity.id)
    renamed = replace(facts, name="loop7", device="/dev/loop7")
    assert disk_identity(renamed).id == identity.id
    other = replace(
        facts, sysfs={**facts.sysfs, "loop/backing_file": "/var/lib/cairn-testbed/node-a/disk-2.img"}
    )
    assert disk_identity(other).id != identity.id


@pytest.mark.parametrize(
    "bogus", ["0x0000000000000000", "naa.00000000000000000000000000000000", "eui.0000000000000000"]
)
def test_an_all_zero_wwn_identifies_nothing(bogus: str) -> None:
    facts = load_disk("intel_s4610_sata_ssd", sysfs={"device/wwid": bogus})
    facts = replace(facts, udev={**facts.udev, "ID_WWN": bogus, "ID_WWN_WITH_EXTENSION": bogus})
    identity = disk_identity(facts)
    assert (identity.source, identity.wwn) == ("serial", None)
    assert identity.id == "serial-INTEL_SSDSC2KG960G8_PHYG123400AB960CGN"


def test_a_scsi_t10_id_is_not_taken_for_a_wwn() -> None:
    assert normalise_wwn("t10.ATA     QEMU HARDDISK                           QM00001") is None
    assert normalise_wwn("  NAA.5000C500D7A1B2C3 ") == "0x5000c500d7a1b2c3"


@UDEV
def test_identity_ids_are_safe_to_store_and_to_name_in_a_flag(udev: bool) -> None:
    for fixture in fixture_names():
        identity = disk_identity(load_disk(fixture, udev=udev))
        assert re.fullmatch(r"[A-Za-z0-9._:+-]+", identity.id), identity.id


def test_two_disks_sharing_a_serial_stay_two_disks_with_a_warning() -> None:
    sdd, sde = load_disk("usb_bridge_pair_sdd"), load_disk("usb_bridge_pair_sde")
    identities = {f.name: disk_identity(f) for f in (sdd, sde)}
    assert identities["sdd"].id == identities["sde"].id == "serial-Generic_0123456789ABCDEF"

    resolved = resolve_duplicates(identities)
    assert resolved == {
        "sdd": ("serial-Generic_0123456789ABCDEF@pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0", True),
        "sde": ("serial-Generic_0123456789ABCDEF@pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0", True),
    }
    assert localdisk_name("gpu-7", resolved["sdd"][0]) != localdisk_name("gpu-7", resolved["sde"][0])


def test_disks_sharing_an_id_and_no_slot_are_told_apart_by_kernel_name() -> None:
    same = DiskIdentity("serial-Generic_0123456789ABCDEF", "serial", serial="0123456789ABCDEF")
    resolved = resolve_duplicates({"sdb": same, "sda": same, "nvme0n1": DiskIdentity("wwn-0x5", "wwn")})
    assert resolved == {
        "sda": ("serial-Generic_0123456789ABCDEF@sda", True),
        "sdb": ("serial-Generic_0123456789ABCDEF@sdb", True),
        "nvme0n1": ("wwn-0x5", False),
    }


def test_duplicate_resolution_does_not_depend_on_discovery_order() -> None:
    sdd, sde = load_disk("usb_bridge_pair_sdd"), load_disk("usb_bridge_pair_sde")
    forward = resolve_duplicates({f.name: disk_identity(f) for f in (sdd, sde)})
    backward = resolve_duplicates({f.name: disk_identity(f) for f in (sde, sdd)})
    assert forward == backward


def test_the_usb_pair_without_udev_falls_back_to_distinct_kernel_names() -> None:
    disks = [load_disk("usb_bridge_pair_sdd", udev=False), load_disk("usb_bridge_pair_sde", udev=False)]
    resolved = resolve_duplicates({f.name: disk_identity(f) for f in disks})
    assert resolved == {"sdd": ("kname-sdd", False), "sde": ("kname-sde", False)}


def test_a_disk_with_a_unique_identity_keeps_its_plain_id() -> None:
    disks = [load_disk(name) for name in ("samsung_pm9a3_nvme", "intel_s4610_sata_ssd", "virtio_blk_vda")]
    resolved = resolve_duplicates({f.name: disk_identity(f) for f in disks})
    assert resolved == {
        "nvme0n1": ("wwn-eui.36344830526001230025384500000001", False),
        "sda": ("wwn-0x55cd2e415012abcd", False),
        "vda": ("serial-overlayblk", False),
    }


@pytest.mark.parametrize("node", ["gpu-node-7", "Worker.Rack3.Example.COM", "n" * 300, "node_with_under-"])
def test_localdisk_names_are_valid_kubernetes_object_names(node: str) -> None:
    name = localdisk_name(node, "wwn-0x55cd2e415012abcd")
    assert len(name) <= 253
    assert DNS_SUBDOMAIN.match(name), name
    assert re.search(r"-[0-9a-f]{12}$", name)


def test_localdisk_name_is_the_node_and_a_hash_of_the_id() -> None:
    assert localdisk_name("gpu-7", "wwn-0x55cd2e415012abcd") == localdisk_name(
        "gpu-7", "wwn-0x55cd2e415012abcd"
    )
    assert localdisk_name("gpu-7", "wwn-0x55cd2e415012abcd").startswith("gpu-7-")
    assert localdisk_name("gpu-7", "a") != localdisk_name("gpu-7", "b")


# -- safety -----------------------------------------------------------------------------------


@UDEV
@pytest.mark.parametrize("fixture", ["samsung_pm9a3_nvme", "intel_s4610_sata_ssd", "seagate_exos_sas_hdd"])
def test_a_clean_disk_of_a_claimed_class_is_available(fixture: str, udev: bool) -> None:
    result = check(load_disk(fixture, udev=udev))
    assert (result.state, result.reason) == (DiskState.AVAILABLE, None)


@UDEV
@pytest.mark.parametrize(
    ("signatures", "reason", "named"),
    [
        (("gpt", "gpt", "PMBR"), "HasPartitionTable", "gpt"),
        (("dos",), "HasPartitionTable", "dos"),
        (("ext4",), "HasFilesystem", "ext4"),
        (("xfs",), "HasFilesystem", "xfs"),
        (("swap",), "HasFilesystem", "swap"),
        (("crypto_LUKS",), "HasFilesystem", "crypto_LUKS"),
        (("zfs_member",), "HasFilesystem", "zfs_member"),
        (("linux_raid_member",), "HasRaidSignature", "linux_raid_member"),
        (("isw_raid_member",), "HasRaidSignature", "isw_raid_member"),
        (("ddf_raid_member",), "HasRaidSignature", "ddf_raid_member"),
        (("LVM2_member",), "ForeignLvmPhysicalVolume", "no volume group"),
        (("ceph_bluestore",), "HasSignature", "ceph_bluestore"),
        (("unreadable:wipefs: error: /dev/sda: probing initialization failed",), "HasSignature", "probing"),
    ],
)
def test_dirty_disk_is_never_available_even_without_udev(
    signatures: tuple[str, ...], reason: str, named: str, udev: bool
) -> None:
    facts = clean("intel_s4610_sata_ssd", udev=udev, signatures=signatures)
    result = check(facts)
    assert (result.state, result.reason) == (DiskState.UNAVAILABLE, reason)
    assert named in result.message


@UDEV
def test_the_recorded_used_ssd_is_refused_for_its_partition_table(udev: bool) -> None:
    result = check(load_disk("samsung_860evo_used", udev=udev))
    assert (result.state, result.reason) == (DiskState.UNAVAILABLE, "HasPartitionTable")
    assert "gpt" in result.message and "sdf1, sdf2" in result.message
    assert "cairn.dev/wipe" in result.message


@pytest.mark.parametrize(
    ("udev_props", "reason"),
    [({"ID_FS_TYPE": "ext4"}, "HasFilesystem"), ({"ID_PART_TABLE_TYPE": "dos"}, "HasPartitionTable")],
)
def test_udev_remembering_data_is_enough_to_refuse_a_disk_the_probe_calls_clean(
    udev_props: dict[str, str], reason: str
) -> None:
    facts = clean("intel_s4610_sata_ssd")
    result = check(replace(facts, udev={**facts.udev, **udev_props}))
    assert (result.state, result.reason) == (DiskState.UNAVAILABLE, reason)


def test_partitions_the_kernel_sees_mean_a_partition_table_even_if_no_signature_was_found() -> None:
    result = check(clean("intel_s4610_sata_ssd", udev=False, partitions=("sda1",)))
    assert (result.state, result.reason) == (DiskState.UNAVAILABLE, "HasPartitionTable")


def test_the_most_urgent_reason_wins() -> None:
    # Strip one problem at a time off a disk that has them all; the reasons must come in order.
    facts = clean(
        "loop_device",
        holds_root=True,
        mountpoints=("/",),
        swap=True,
        holders=("md127",),
        partitions=("loop3p1",),
        signatures=("gpt", "LVM2_member", "linux_raid_member", "ext4", "ceph_bluestore"),
        sysfs={"ro": "1", "queue/rotational": "1", "loop/backing_file": "/var/lib/cairn-testbed/a.img"},
        size_bytes=GiB // 2,
    )
    removals: list[dict[str, object]] = [
        {"holds_root": False},
        {"mountpoints": ()},
        {"swap": False},
        {"holders": ()},
        {"partitions": (), "signatures": ("LVM2_member", "linux_raid_member", "ext4", "ceph_bluestore")},
        {"signatures": ("linux_raid_member", "ext4", "ceph_bluestore")},
        {"signatures": ("ext4", "ceph_bluestore")},
        {"signatures": ("ceph_bluestore",)},
        {"signatures": ()},
        {"sysfs": {"ro": "0", "queue/rotational": "1"}},
        {"name": "sdx", "device": "/dev/sdx"},
        {"size_bytes": 10 * GiB},
    ]
    seen = [check(facts, claimed={NVME}, opted_out=True).reason]
    for change in removals:
        facts = replace(facts, **change)  # type: ignore[arg-type]
        seen.append(check(facts, claimed={NVME}, opted_out=True).reason)
    seen.append(check(facts, claimed={NVME}).reason)
    assert seen == list(REASONS)
    assert check(facts, claimed={HDD}).state == DiskState.AVAILABLE


def test_a_mounted_disk_says_where() -> None:
    result = check(clean("intel_s4610_sata_ssd", partitions=("sda1",), mountpoints=("/var/lib/containerd",)))
    assert result.reason == "Mounted"
    assert "/var/lib/containerd" in result.message


def test_holders_are_named() -> None:
    result = check(clean("seagate_exos_sas_hdd", holders=("md127",), signatures=("linux_raid_member",)))
    assert result.reason == "HasHolders"
    assert "md127" in result.message


@UDEV
def test_cairns_own_physical_volume_is_claimed_even_while_its_lvs_hold_it(udev: bool) -> None:
    result = check(cairn_pv(udev=udev, holders=("dm-0", "dm-3")))
    assert (result.state, result.reason) == (DiskState.CLAIMED, None)
    assert "cairn-nvme" in result.message


def test_a_cairn_pv_held_by_something_else_is_not_claimed() -> None:
    assert check(cairn_pv(holders=("md0",))).reason == "HasHolders"


def test_a_cairn_pv_with_another_signature_is_not_claimed() -> None:
    assert check(cairn_pv(signatures=("LVM2_member", "ext4"))).state == DiskState.UNAVAILABLE


def test_a_foreign_physical_volume_names_its_volume_group() -> None:
    result = check(clean("intel_s4610_sata_ssd", signatures=("LVM2_member",), lvm_vg="ubuntu-vg"))
    assert result.reason == "ForeignLvmPhysicalVolume"
    assert "ubuntu-vg" in result.message


@pytest.mark.parametrize(
    ("fixture", "changes", "options", "reason"),
    [
        ("intel_s4610_sata_ssd", {"sysfs": {"ro": "1", "queue/rotational": "0"}}, {}, "ReadOnly"),
        ("loop_device", {}, {}, "LoopDeviceNotAllowed"),
        ("intel_s4610_sata_ssd", {"size_bytes": 512 * 1024**2}, {}, "TooSmall"),
        ("intel_s4610_sata_ssd", {}, {"opted_out": True}, "OptedOut"),
        ("intel_s4610_sata_ssd", {}, {"claimed": {NVME}}, "ClassNotClaimed"),
    ],
)
def test_clean_but_unusable_disks_say_they_are_clean_and_what_to_change(
    fixture: str, changes: dict[str, object], options: dict[str, object], reason: str
) -> None:
    result = check(clean(fixture, **changes), **options)  # type: ignore[arg-type]
    assert (result.state, result.reason) == (DiskState.UNAVAILABLE, reason)
    assert "clean" in result.message


def test_class_not_claimed_says_which_flag_to_change() -> None:
    result = check(load_disk("intel_s4610_sata_ssd"), claimed={NVME})
    assert "ssd" in result.message and "--claim-classes" in result.message


@UDEV
def test_a_loop_device_is_available_when_the_agent_allows_loop_devices(udev: bool) -> None:
    result = check(load_disk("loop_device", udev=udev), allow_loop=True)
    assert result.state == DiskState.AVAILABLE


def test_every_reason_fits_a_kubectl_column() -> None:
    for reason in REASONS:
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", reason), reason
        assert len(reason) <= 25


# -- wipe -------------------------------------------------------------------------------------


def wipe(facts: DiskFacts, value: str | None) -> tuple[bool, str]:
    return wipe_allowed(facts, value, disk_identity(facts))


def test_wipe_needs_the_exact_serial() -> None:
    used = load_disk("samsung_860evo_used")
    allowed, message = wipe(used, "S3Z1NB0K123456A")
    assert allowed, message
    assert "gpt" in message
    for near_miss in ("s3z1nb0k123456a", "S3Z1NB0K123456", " S3Z1NB0K123456A", "yes", "true", "/dev/sdf", ""):
        allowed, message = wipe(used, near_miss)
        assert not allowed, near_miss
        assert "S3Z1NB0K123456A" in message
    assert not wipe(used, None)[0]


@UDEV
def test_wipe_accepts_the_wwn_which_is_known_even_without_udev(udev: bool) -> None:
    exos = clean("seagate_exos_sas_hdd", udev=udev, signatures=("zfs_member",))
    assert wipe(exos, "0x5000c500d7a1b2c3")[0]
    assert wipe(exos, "ZR5ABC120000C123XYZ0")[0] is udev


@pytest.mark.parametrize(
    "in_use",
    [{"mountpoints": ("/mnt/scratch",)}, {"swap": True}, {"holders": ("dm-2",)}, {"holds_root": True}],
    ids=["mounted", "swap", "holders", "root"],
)
def test_wipe_is_refused_for_a_disk_in_use_whatever_the_annotation(in_use: dict[str, object]) -> None:
    facts = replace(load_disk("samsung_860evo_used"), **in_use)  # type: ignore[arg-type]
    allowed, message = wipe(facts, "S3Z1NB0K123456A")
    assert not allowed
    assert "sdf" in message


def test_wipe_is_refused_for_a_mounted_disk_whatever_the_annotation() -> None:
    facts = replace(load_disk("samsung_860evo_used"), mountpoints=("/home",))
    for value in ("S3Z1NB0K123456A", "0x5002538e40a1b2c3"):
        allowed, message = wipe(facts, value)
        assert not allowed
        assert "/home" in message and "unmount" in message


def test_wipe_is_refused_for_cairns_own_physical_volume() -> None:
    allowed, message = wipe(cairn_pv(), "S64HNE0R600123")
    assert not allowed
    assert "cairn-nvme" in message


def test_a_disk_without_serial_or_wwn_is_never_wiped_by_cairn() -> None:
    facts = load_disk("usb_bridge_pair_sdd", udev=False, signatures=("ntfs",))
    identity = disk_identity(facts)
    assert identity.source == "kernel-name"
    for value in (identity.id, "sdd", "/dev/sdd"):
        allowed, message = wipe(facts, value)
        assert not allowed
        assert "wipefs --all /dev/sdd" in message


def test_a_loop_device_wipe_is_confirmed_by_its_disk_id() -> None:
    facts = load_disk("loop_device", udev=False, signatures=("ext4",))
    identity = disk_identity(facts)
    assert wipe(facts, identity.id)[0]
    assert not wipe(facts, "loop3")[0]
