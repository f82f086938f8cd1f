"""The disk manager's plan: which disks a scan claims and what each LocalDisk will say."""

from __future__ import annotations

from cairn.api.disk import DiskState
from cairn.api.names import pool_vg
from cairn.api.volume import PoolClass
from cairn.node_agent.disks.identity import disk_identity, localdisk_name
from cairn.node_agent.disks.plan import DiskPolicy, disk_status, outcome, plan_disk
from tests.unit.node_agent.disks.recorded import load_disk

NODE = "gpu-7"


def planned(fixture: str, *, opted_out: bool = False, policy: DiskPolicy | None = None, **changes: object):
    facts = load_disk(fixture, **changes)
    identity = disk_identity(facts)
    return plan_disk(facts, identity, identity.id, False, NODE, policy or DiskPolicy(), opted_out=opted_out)


def test_a_blank_nvme_disk_is_claimed_into_the_nvme_pool() -> None:
    disk = planned("samsung_pm9a3_nvme")
    assert disk.disk_class == PoolClass.NVME and disk.assessment.state == DiskState.AVAILABLE
    assert disk.claim
    assert disk.name == localdisk_name(NODE, disk.disk_id)
    ended = outcome(disk, claimed=True)
    assert (ended.state, ended.reason, ended.volume_group) == (DiskState.CLAIMED, None, pool_vg("nvme"))
    status = disk_status(disk, ended, conditions=[]).merge_patch()
    assert status["state"] == "Claimed" and status["volumeGroup"] == pool_vg("nvme")
    assert status["capacityBytes"] == disk.facts.size_bytes and status["class"] == "nvme"
    assert status["serial"] == disk.identity.serial and "reason" in status and status["reason"] is None


def test_a_disk_that_was_not_claimed_reports_what_the_assessment_found() -> None:
    disk = planned("samsung_pm9a3_nvme")
    ended = outcome(disk, claimed=False)  # pvcreate failed, or a signature appeared since the probe
    assert ended.state == DiskState.AVAILABLE and ended.volume_group is None


def test_a_disk_with_signatures_or_an_opt_out_is_never_claimed() -> None:
    used = planned("samsung_pm9a3_nvme", signatures=("ext4",))
    assert not used.claim and used.assessment.state == DiskState.UNAVAILABLE
    assert outcome(used, claimed=False).reason == used.assessment.reason
    assert not planned("samsung_pm9a3_nvme", opted_out=True).claim


def test_only_the_classes_the_policy_claims_are_claimed() -> None:
    hdd = planned("wd_red_sata_hdd")
    assert hdd.disk_class == PoolClass.HDD and not hdd.claim
    everything = DiskPolicy(claim_classes=frozenset(PoolClass))
    assert planned("wd_red_sata_hdd", policy=everything).claim
