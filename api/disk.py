"""LocalDisk and StorageNode: what each node agent found and what it built from it."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from .base import CairnModel, Condition, PrinterColumn, Resource, age_column
from .volume import PoolClass


class DiskState(StrEnum):
    AVAILABLE = "Available"
    CLAIMED = "Claimed"
    UNAVAILABLE = "Unavailable"
    MISSING = "Missing"


class LocalDiskSpec(CairnModel):
    node_name: str
    disk_id: str = Field(description="Stable identity: WWN, else serial plus model, else by-path.")


class LocalDiskStatus(CairnModel):
    device: str | None = Field(default=None, description="Current kernel device path, e.g. /dev/nvme0n1.")
    disk_class: PoolClass | None = Field(default=None, alias="class")
    capacity: str | None = Field(default=None, description="Human-readable size, e.g. 3.5Ti.")
    capacity_bytes: int | None = None
    state: DiskState | None = None
    reason: str | None = Field(default=None, description="Why the disk is Unavailable, for the column.")
    serial: str | None = None
    wwn: str | None = None
    model: str | None = None
    by_path: str | None = None
    volume_group: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class LocalDisk(Resource):
    KIND: ClassVar[str] = "LocalDisk"
    PLURAL: ClassVar[str] = "localdisks"
    SHORT_NAMES: ClassVar[list[str]] = ["ld"]
    NAMESPACED: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = (
        "A block device found on a node, with its class and whether Cairn may use it."
    )
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="Node", json_path=".spec.nodeName"),
        PrinterColumn(name="Device", json_path=".status.device"),
        PrinterColumn(name="Class", json_path=".status.class"),
        PrinterColumn(name="Capacity", json_path=".status.capacity"),
        PrinterColumn(name="State", json_path=".status.state"),
        PrinterColumn(name="Reason", json_path=".status.reason"),
        age_column(),
    ]

    spec: LocalDiskSpec
    status: LocalDiskStatus = Field(default_factory=LocalDiskStatus)


class PoolStatus(CairnModel):
    pool_class: PoolClass = Field(alias="class")
    volume_group: str = Field(
        description="The pool's LVM volume group; for memory, the name the agent answers to."
    )
    total_bytes: int
    free_bytes: int
    extent_size_bytes: int
    volume_count: int = 0
    disks: list[str] = Field(default_factory=list)


class AgentEndpoints(CairnModel):
    csi_socket: str | None = None
    p2p_address: str | None = Field(default=None, description="host:port of the BitTorrent listener.")
    peer_restore_address: str | None = Field(default=None, description="host:port serving checkpoints.")
    peer_certificate: str | None = Field(
        default=None,
        max_length=8192,
        description="PEM certificate the agent presents on the peer plane; peers trust exactly this.",
    )
    metrics_address: str | None = None


class FreeByClass(CairnModel):
    """Human-readable free space per pool class, for the printer columns."""

    nvme: str | None = None
    ssd: str | None = None
    hdd: str | None = None
    memory: str | None = None


class StorageNodeSpec(CairnModel):
    node_name: str


AGENT_LEASE_CONDITION = "AgentLease"
"""False (set by the controller) once the node's agent Lease stopped being renewed."""


class StorageNodeStatus(CairnModel):
    pools: list[PoolStatus] = Field(default_factory=list)
    free: FreeByClass = Field(default_factory=FreeByClass)
    disk_count: int = 0
    ready: bool = False
    endpoints: AgentEndpoints = Field(default_factory=AgentEndpoints)
    conditions: list[Condition] = Field(default_factory=list)

    def agent_gone(self) -> bool:
        """The controller found the agent's Lease expired (or the node lost): not merely quiet."""
        return not self.ready and any(
            c.type == AGENT_LEASE_CONDITION and c.status == "False" for c in self.conditions
        )


class StorageNode(Resource):
    KIND: ClassVar[str] = "StorageNode"
    PLURAL: ClassVar[str] = "storagenodes"
    SHORT_NAMES: ClassVar[list[str]] = ["sn"]
    NAMESPACED: ClassVar[bool] = False
    DESCRIPTION: ClassVar[str] = "A node's pools, free space and agent endpoints, as its agent reports them."
    PRINTER_COLUMNS: ClassVar[list[PrinterColumn]] = [
        PrinterColumn(name="NVMe-Free", json_path=".status.free.nvme"),
        PrinterColumn(name="SSD-Free", json_path=".status.free.ssd"),
        PrinterColumn(name="HDD-Free", json_path=".status.free.hdd"),
        PrinterColumn(name="Memory-Free", json_path=".status.free.memory"),
        PrinterColumn(name="Disks", json_path=".status.diskCount", type="integer"),
        PrinterColumn(name="Ready", json_path=".status.ready", type="boolean"),
        age_column(),
    ]

    spec: StorageNodeSpec
    status: StorageNodeStatus = Field(default_factory=StorageNodeStatus)
