"""The CSI Node service: stage (format + mount), publish (bind), expand and report volumes.

The hot paths (NodeStage, NodePublish) never ask LVM anything: they find the device in the
agent's in-memory index of its own volumes, and check mounts with a stat, not a table scan.
Their cost therefore stays flat however many volumes the node carries.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import grpc

from cairn import TOPOLOGY_KEY
from cairn.api.volume import VolumeAccess
from cairn.csi.errors import CsiError, FailedPrecondition, InvalidArgument, NotFound, require
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.node_agent.host import mounts
from cairn.node_agent.volumes.index import StagedVolume

log = logging.getLogger("cairn.node")
_RPC = csi_pb2.NodeServiceCapability.RPC
_Mode = csi_pb2.VolumeCapability.AccessMode
# Modes that allow one publication at a time on the node.
_EXCLUSIVE_MODES = {_Mode.SINGLE_NODE_SINGLE_WRITER}
DEFAULT_FS_TYPE = "ext4"


def stage_mount_flags(requested: Sequence[str], read_only: bool, fs_type: str = "") -> list[str]:
    """The options NodeStage mounts with: the CO's, with "ro" forced (and "rw" dropped) when read-only.

    Read-only at the staging mount too, not only at the bind mounts: the staging path is on the host,
    and whatever could write there would change the data every pod on the node reads.

    xfs gets "nouuid": a clone is a byte copy of its source, UUID included, and XFS refuses to mount
    a filesystem whose UUID is already mounted on the node. A clone of a mounted source also carries
    a log to replay, so giving it a new UUID at clone time (xfs_admin -U) is not possible.
    """
    flags = list(requested)
    if fs_type == "xfs" and "nouuid" not in flags:
        flags.append("nouuid")
    if not read_only:
        return flags
    return [*(flag for flag in flags if flag not in ("rw", "ro")), "ro"]


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(
        self,
        node_name: str,
        lookup: Callable[[str], StagedVolume | None],
        volume_health: Callable[[str], str | None],
        *,
        max_volumes: int = 0,
        on_staged: Callable[[str, str], None] = lambda volume, path: None,
        on_unstaged: Callable[[str], None] = lambda volume: None,
    ) -> None:
        self.on_staged = on_staged
        self.on_unstaged = on_unstaged
        self.node_name = node_name
        self.lookup = lookup
        self.volume_health = volume_health
        self.max_volumes = max_volumes
        # One lock per volume: the CO may retry a call while the first is still formatting.
        self._locks: dict[str, threading.Lock] = {}
        # Where each volume is published, so a single-writer volume is never published twice.
        self._published: dict[str, dict[str, int]] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, volume_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(volume_id, threading.Lock())

    def _volume(self, volume_id: str) -> StagedVolume:
        volume = self.lookup(volume_id)
        if volume is None:
            raise NotFound(f"volume {volume_id} is not on node {self.node_name}")
        return volume

    # -- stage -------------------------------------------------------------------------------

    def NodeStageVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodeStageVolume needs a volume_id")
        require(request.staging_target_path, "NodeStageVolume needs a staging_target_path")
        require(request.HasField("volume_capability"), "NodeStageVolume needs a volume_capability")
        volume = self._volume(request.volume_id)
        capability = request.volume_capability
        if capability.WhichOneof("access_type") == "block":
            if volume.access != VolumeAccess.BLOCK:
                raise InvalidArgument(f"volume {volume.name} is a mount volume, not a block one")
            return csi_pb2.NodeStageVolumeResponse()  # block volumes are published straight from the device
        if volume.access != VolumeAccess.MOUNT:
            raise InvalidArgument(f"volume {volume.name} is a block volume; it cannot be mounted")
        target = request.staging_target_path
        if volume.directory:
            self._stage_directory(volume, target)
            self.on_staged(volume.name, target)
            return csi_pb2.NodeStageVolumeResponse()
        fs_type = capability.mount.fs_type or volume.fs_type or DEFAULT_FS_TYPE
        with self._lock(volume.name):
            if mounts.is_mount_point(target):
                if mounts.is_mounted_from(target, volume.device):
                    self.on_staged(volume.name, target)
                    return csi_pb2.NodeStageVolumeResponse()
                raise CsiError(
                    f"staging path {target} already holds another filesystem", grpc.StatusCode.ALREADY_EXISTS
                )
            found = mounts.probe_filesystem(volume.device)
            if found is None:
                log.info("formatting %s (%s) as %s", volume.name, volume.device, fs_type)
                mounts.make_filesystem(volume.device, fs_type)
            elif found != fs_type:
                # Never reformat: whatever is there may be someone's data.
                raise FailedPrecondition(
                    f"volume {volume.name} already holds a {found} filesystem, not {fs_type}; "
                    "Cairn never reformats a device that holds data"
                )
            mounts.ensure_directory(target)
            flags = stage_mount_flags(capability.mount.mount_flags, volume.read_only, fs_type)
            mounts.mount(volume.device, target, fs_type, flags)
        self.on_staged(volume.name, target)
        return csi_pb2.NodeStageVolumeResponse()

    def _stage_directory(self, volume: StagedVolume, target: str) -> None:
        """A memory volume is staged by checking its tmpfs is there; nothing is mounted at `target`.

        The agent already holds the tmpfs mounted, and a bind of it at the staging path would be a
        second mount of the same filesystem: the kubelet refuses to unstage a device mounted
        anywhere else outside its own directories, so that volume would never be unstaged.
        NodePublish binds the agent's mount into the pod instead.
        """
        with self._lock(volume.name):
            if mounts.is_mount_point(target) and not mounts.is_same_filesystem(target, volume.device):
                raise CsiError(
                    f"staging path {target} already holds another filesystem", grpc.StatusCode.ALREADY_EXISTS
                )
            if not mounts.is_mount_point(volume.device):
                raise FailedPrecondition(
                    f"memory volume {volume.name} has no tmpfs at {volume.device}; the agent mounts it again "
                    "when it reconciles the volume"
                )
            mounts.ensure_directory(target)

    def NodeUnstageVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodeUnstageVolume needs a volume_id")
        require(request.staging_target_path, "NodeUnstageVolume needs a staging_target_path")
        with self._lock(request.volume_id):
            self.on_unstaged(request.volume_id)
            if mounts.is_mount_point(request.staging_target_path):
                mounts.unmount(request.staging_target_path)
        return csi_pb2.NodeUnstageVolumeResponse()

    # -- publish -----------------------------------------------------------------------------

    def NodePublishVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodePublishVolume needs a volume_id")
        require(request.target_path, "NodePublishVolume needs a target_path")
        require(request.HasField("volume_capability"), "NodePublishVolume needs a volume_capability")
        volume = self._volume(request.volume_id)
        target = request.target_path
        mode = request.volume_capability.access_mode.mode
        with self._lock(volume.name):
            elsewhere = {t: m for t, m in self._published.get(volume.name, {}).items() if t != target}
            if elsewhere and (mode in _EXCLUSIVE_MODES or set(elsewhere.values()) & _EXCLUSIVE_MODES):
                raise FailedPrecondition(
                    f"volume {volume.name} is single-writer and already published at {sorted(elsewhere)[0]}"
                )
            self._publish(volume, request, target)
            self._published.setdefault(volume.name, {})[target] = mode
        return csi_pb2.NodePublishVolumeResponse()

    def _publish(self, volume: StagedVolume, request, target: str) -> None:
        if request.volume_capability.WhichOneof("access_type") == "block":
            if not mounts.is_device_bound_at(target, volume.device):
                mounts.ensure_file(target)
                mounts.bind_mount(volume.device, target, readonly=request.readonly or volume.read_only)
            return
        require(request.staging_target_path, "NodePublishVolume needs the staging_target_path")
        staging = request.staging_target_path
        if volume.directory:
            # Straight from the agent's own mount of the tmpfs (see _stage_directory).
            if not mounts.is_mount_point(volume.device):
                raise FailedPrecondition(f"memory volume {volume.name} has no tmpfs at {volume.device}")
            if mounts.is_mount_point(target):
                return
            mounts.ensure_directory(target)
            mounts.bind_mount(volume.device, target, readonly=request.readonly or volume.read_only)
            return
        if not mounts.is_mount_point(staging):
            raise FailedPrecondition(f"volume {volume.name} is not staged at {staging}; call NodeStageVolume")
        if mounts.is_mount_point(target):
            return
        mounts.ensure_directory(target)
        # The staging mount is read-only already for such a volume; the bind says so to the pod too.
        mounts.bind_mount(staging, target, readonly=request.readonly or volume.read_only)

    def NodeUnpublishVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodeUnpublishVolume needs a volume_id")
        require(request.target_path, "NodeUnpublishVolume needs a target_path")
        target = request.target_path
        with self._lock(request.volume_id):
            self._published.get(request.volume_id, {}).pop(target, None)
            if os.path.isdir(target):
                if mounts.is_mount_point(target):
                    mounts.unmount(target)
                os.rmdir(target)
            elif os.path.exists(target):
                volume = self.lookup(request.volume_id)
                if volume is None or mounts.is_device_bound_at(target, volume.device):
                    mounts.unmount(target)
                os.unlink(target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    # -- expand and stats ----------------------------------------------------------------------

    def NodeExpandVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodeExpandVolume needs a volume_id")
        require(request.volume_path, "NodeExpandVolume needs a volume_path")
        volume = self._volume(request.volume_id)
        if not os.path.exists(request.volume_path):
            raise NotFound(f"volume path {request.volume_path} does not exist")
        if volume.directory:
            # The tmpfs grew when its size limit was raised; there is no filesystem to resize.
            total = mounts.filesystem_usage(request.volume_path).total_bytes
            return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=total)
        if volume.access == VolumeAccess.MOUNT:
            fs_type = mounts.probe_filesystem(volume.device) or volume.fs_type or DEFAULT_FS_TYPE
            with self._lock(volume.name):
                mounts.resize_filesystem(volume.device, request.volume_path, fs_type)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=mounts.device_size(volume.device))

    def NodeGetVolumeStats(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "NodeGetVolumeStats needs a volume_id")
        require(request.volume_path, "NodeGetVolumeStats needs a volume_path")
        volume = self._volume(request.volume_id)
        path = request.volume_path
        if not os.path.exists(path):
            raise NotFound(f"volume path {path} does not exist")
        problem = self.volume_health(volume.name)
        Usage = csi_pb2.VolumeUsage
        if volume.access == VolumeAccess.BLOCK:
            if problem is None and not mounts.is_device_bound_at(path, volume.device):
                problem = f"{path} no longer shows the volume's block device"
            usage = (
                [Usage(unit=Usage.BYTES, total=mounts.device_size(volume.device))] if problem is None else []
            )
        else:
            if problem is None and not mounts.is_mount_point(path):
                problem = f"{path} is no longer a mount point"
            fs = mounts.filesystem_usage(path)
            usage = [
                Usage(
                    unit=Usage.BYTES, total=fs.total_bytes, available=fs.available_bytes, used=fs.used_bytes
                ),
                Usage(
                    unit=Usage.INODES, total=fs.total_inodes, available=fs.free_inodes, used=fs.used_inodes
                ),
            ]
        condition = csi_pb2.VolumeCondition(
            abnormal=problem is not None, message=problem or "volume is healthy"
        )
        return csi_pb2.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    # -- info --------------------------------------------------------------------------------

    def NodeGetCapabilities(self, request, context: grpc.ServicerContext):
        rpcs = [
            _RPC.STAGE_UNSTAGE_VOLUME,
            _RPC.EXPAND_VOLUME,
            _RPC.GET_VOLUME_STATS,
            _RPC.VOLUME_CONDITION,
            _RPC.SINGLE_NODE_MULTI_WRITER,
        ]
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=_RPC(type=t)) for t in rpcs]
        )

    def NodeGetInfo(self, request, context: grpc.ServicerContext):
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.node_name,
            max_volumes_per_node=self.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: self.node_name}),
        )
