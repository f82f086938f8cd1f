"""What one scan decides for each disk, before anything is written: a pure plan.

The manager probes, wipes where an operator asked, claims, and writes LocalDisks; everything it
decides in between (class, identity, safety, whether to claim, the state to report) is here and
tested without a disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cairn.api.base import Condition
from cairn.api.disk import DiskState, LocalDiskStatus
from cairn.api.names import pool_vg
from cairn.api.volume import PoolClass
from cairn.node_agent.disks.classify import ClassOverrides, classify
from cairn.node_agent.disks.facts import DiskFacts, ProbeScope
from cairn.node_agent.disks.identity import DiskIdentity, localdisk_name
from cairn.node_agent.disks.safety import Assessment, assess
from cairn.units import GiB, human_bytes


@dataclass(frozen=True)
class DiskPolicy:
    claim_classes: frozenset[PoolClass] = frozenset({PoolClass.NVME})
    overrides: ClassOverrides = field(default_factory=ClassOverrides)
    scope: ProbeScope = field(default_factory=ProbeScope)
    min_bytes: int = 1 * GiB


@dataclass(frozen=True)
class PlannedDisk:
    """One disk as this scan sees it, and whether it should join a pool now."""

    facts: DiskFacts
    identity: DiskIdentity
    disk_id: str
    duplicated: bool
    """Another disk on the node reports the same identity; `disk_id` tells them apart by path."""
    name: str
    """Its LocalDisk's name."""
    disk_class: PoolClass
    assessment: Assessment
    claim: bool


@dataclass(frozen=True)
class DiskOutcome:
    state: DiskState
    reason: str | None
    message: str
    volume_group: str | None


def plan_disk(
    facts: DiskFacts,
    identity: DiskIdentity,
    disk_id: str,
    duplicated: bool,
    node_name: str,
    policy: DiskPolicy,
    *,
    opted_out: bool,
) -> PlannedDisk:
    classification = classify(facts, policy.overrides, disk_id=disk_id)
    assessment = assess(
        facts,
        allow_loop=policy.scope.allow_loop,
        opted_out=opted_out,
        claimed_classes=set(policy.claim_classes),
        disk_class=classification.disk_class,
        min_bytes=policy.min_bytes,
    )
    claim = assessment.state == DiskState.AVAILABLE and classification.disk_class in policy.claim_classes
    return PlannedDisk(
        facts,
        identity,
        disk_id,
        duplicated,
        localdisk_name(node_name, disk_id),
        classification.disk_class,
        assessment,
        claim,
    )


def outcome(planned: PlannedDisk, claimed: bool) -> DiskOutcome:
    """The state to report once claiming is over: `claimed` says whether the disk joined its pool."""
    if claimed:
        volume_group = pool_vg(planned.disk_class.value)
        message = f"claimed into pool {planned.disk_class.value} (volume group {volume_group})"
        return DiskOutcome(DiskState.CLAIMED, None, message, volume_group)
    assessment = planned.assessment
    return DiskOutcome(assessment.state, assessment.reason, assessment.message, planned.facts.lvm_vg)


def disk_status(
    planned: PlannedDisk, result: DiskOutcome, conditions: list[dict[str, Any]]
) -> LocalDiskStatus:
    """The LocalDisk status for `planned` ending in `result`; every field is set, so a patch clears
    what no longer holds (a serial udev stopped reporting, a VG the disk left)."""
    return LocalDiskStatus(
        device=planned.facts.device,
        disk_class=planned.disk_class,
        capacity=human_bytes(planned.facts.size_bytes),
        capacity_bytes=planned.facts.size_bytes,
        state=result.state,
        reason=result.reason,
        serial=planned.identity.serial,
        wwn=planned.identity.wwn,
        model=planned.identity.model,
        by_path=planned.facts.by_path,
        volume_group=result.volume_group,
        conditions=[Condition.model_validate(c) for c in conditions],
    )
