"""Which CSI volume capabilities a node-local LVM volume can honour."""

from __future__ import annotations

from collections.abc import Sequence

from cairn.api.volume import VolumeAccess
from cairn.controller.volumes.parameters import SUPPORTED_FS_TYPES
from cairn.csi.errors import InvalidArgument
from cairn.csi.proto import csi_pb2

_Mode = csi_pb2.VolumeCapability.AccessMode
SINGLE_NODE_MODES = {
    _Mode.SINGLE_NODE_WRITER,
    _Mode.SINGLE_NODE_READER_ONLY,
    _Mode.SINGLE_NODE_SINGLE_WRITER,
    _Mode.SINGLE_NODE_MULTI_WRITER,
}


def unsupported_capability(capabilities: Sequence[csi_pb2.VolumeCapability]) -> str | None:
    """A message naming the first capability Cairn cannot honour, or None when all are fine."""
    kinds = set()
    for capability in capabilities:
        kind = capability.WhichOneof("access_type")
        if kind is None:
            return "every volume capability needs an access type: mount or block"
        kinds.add(kind)
        if capability.access_mode.mode not in SINGLE_NODE_MODES:
            mode = _Mode.Mode.Name(capability.access_mode.mode)
            return f"access mode {mode} is not supported: a Cairn volume lives on one node"
        if kind == "mount" and capability.mount.fs_type not in ("", *SUPPORTED_FS_TYPES):
            return (
                f"fs_type {capability.mount.fs_type!r} is not supported; "
                f"use one of {', '.join(SUPPORTED_FS_TYPES)}"
            )
    if len(kinds) > 1:
        return "a volume is either block or mount, not both"
    return None


def access_type_of(capabilities: Sequence[csi_pb2.VolumeCapability]) -> tuple[VolumeAccess, str | None]:
    """The access type and file system asked for; call after unsupported_capability() passed."""
    fs_types = {c.mount.fs_type for c in capabilities if c.WhichOneof("access_type") == "mount"} - {""}
    if len(fs_types) > 1:
        raise InvalidArgument(f"conflicting fs_types {sorted(fs_types)} in one request")
    if any(c.WhichOneof("access_type") == "block" for c in capabilities):
        return VolumeAccess.BLOCK, None
    return VolumeAccess.MOUNT, next(iter(fs_types), None)
