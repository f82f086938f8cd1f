"""LocalVolume: one LVM logical volume on one node, the unit the CSI controller asks for."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from .base import CairnModel, Condition, PrinterColumn, Resource, age_column


class PoolClass(StrEnum):
    NVME = "nvme"
    SSD = "ssd"
    HDD = "hdd"
    MEMORY = "memory"
    """Host memory the agent sets aside (`--memory-pool-bytes`): one size-limited tmpfs per volume."""


DISK_CLASSES: tuple[PoolClass, ...] = (PoolClass.NVME, PoolClass.SSD, PoolClass.HDD)
"""The pools made of disks: what a disk may be classed as, and what a Dataset's copy may sit on."""


class VolumeAccess(StrEnum):
    MOUNT = "mount"
    BLOCK = "block"


class VolumePhase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class PopulateSource(CairnModel):
    """Data copied into a new volume before it is Ready: a Checkpoint restored, or a Dataset copied."""

    kind: Literal["Checkpoint", "Dataset"] = "Checkpoint"
    namespace: str
    name: str


class LocalVolumeSpec(CairnModel):
    # What a volume is filled from is also what lets its node read another node's copy of that
    # checkpoint (the peer server checks it), so nobody may change it once the volume exists.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.populateFrom) == has(oldSelf.populateFrom) && "
                    "(!has(self.populateFrom) || self.populateFrom == oldSelf.populateFrom)",
                    "message": "populateFrom is immutable",
                }
            ]
        }
    )

    csi_name: str = Field(description="The CSI CreateVolume name this LocalVolume was created for.")
    node_name: str = Field(description="The node whose agent owns and carves this volume.")
    pool: PoolClass = Field(
        default=PoolClass.NVME, description="The pool to carve from: a disk class, or memory."
    )
    size_bytes: int = Field(ge=1, description="Requested size; the agent rounds up to the extent size.")
    access: VolumeAccess = VolumeAccess.MOUNT
    fs_type: str | None = Field(default=None, description="ext4 or xfs for mount volumes.")
    checkpoint_policy: str | None = Field(
        default=None, description="CheckpointPolicy named by the StorageClass, if any."
    )
    pvc_name: str | None = None
    pvc_namespace: str | None = None
    source_volume: str | None = Field(
        default=None, description="LocalVolume to clone: its bytes are copied in before the volume is Ready."
    )
    populate_from: PopulateSource | None = Field(
        default=None, description="Checkpoint restored into the new volume before it is Ready."
    )


class LocalVolumeStatus(CairnModel):
    phase: VolumePhase = VolumePhase.PENDING
    volume_group: str | None = None
    logical_volume: str | None = None
    capacity_bytes: int | None = None
    reason: str | None = Field(default=None, description="CamelCase reason when Failed.")
    message: str | None = None
    expansion_error: str | None = Field(
        default=None, description="Why the last extension to spec.sizeBytes failed; the volume stays usable."
    )
    conditions: list[Condition] = Field(default_factory=list)


class LocalVolume(Resource):
    KIND: ClassVar[str] = "LocalVolume"
    PLURAL: ClassVar[str] = "localvolumes"
    SHORT_NAMES: ClassVar[list[str]] = ["lvol"]
    NAMESPACED: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = "A logical volume carved from a node's pool for one CSI volume."
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="Node", json_path=".spec.nodeName"),
        PrinterColumn(name="Pool", json_path=".spec.pool"),
        PrinterColumn(name="Size", json_path=".status.capacityBytes", type="integer"),
        PrinterColumn(name="Phase", json_path=".status.phase"),
        PrinterColumn(name="Reason", json_path=".status.reason"),
        age_column(),
    ]

    spec: LocalVolumeSpec
    status: LocalVolumeStatus = Field(default_factory=LocalVolumeStatus)
