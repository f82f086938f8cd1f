"""StorageClass parameters: parsed once, validated with messages that list what is valid."""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.names import CHECKPOINT_POLICY_PARAMETER, FSTYPE_PARAMETER, POOL_PARAMETER
from cairn.api.volume import PoolClass, VolumeAccess
from cairn.csi.errors import InvalidArgument

VALID_KEYS = (POOL_PARAMETER, FSTYPE_PARAMETER, CHECKPOINT_POLICY_PARAMETER)
# external-provisioner adds these with --extra-create-metadata; they describe, never configure.
PVC_NAME_KEY = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace"
PV_NAME_KEY = "csi.storage.k8s.io/pv/name"
PROVISIONER_METADATA_KEYS = (PVC_NAME_KEY, PVC_NAMESPACE_KEY, PV_NAME_KEY)
SUPPORTED_FS_TYPES = ("ext4", "xfs")
DEFAULT_FS_TYPE = "ext4"


@dataclass(frozen=True)
class VolumeParameters:
    pools: tuple[PoolClass, ...]
    """Pools to try in order: the one named, or the configured fallback order."""
    fs_type: str | None
    checkpoint_policy: str | None
    pvc_name: str | None
    pvc_namespace: str | None


def parse_parameters(
    parameters: dict[str, str], default_pools: tuple[PoolClass, ...] = (PoolClass.NVME,)
) -> VolumeParameters:
    unknown = sorted(k for k in parameters if k not in VALID_KEYS and k not in PROVISIONER_METADATA_KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown StorageClass parameter(s) {', '.join(unknown)}; valid keys are {', '.join(VALID_KEYS)}"
        )
    pools = default_pools
    if POOL_PARAMETER in parameters:
        try:
            pools = (PoolClass(parameters[POOL_PARAMETER]),)
        except ValueError:
            valid = ", ".join(p.value for p in PoolClass)
            raise InvalidArgument(
                f"StorageClass parameter {POOL_PARAMETER}={parameters[POOL_PARAMETER]!r} is invalid; "
                f"use one of {valid}"
            ) from None
    fs_type = parameters.get(FSTYPE_PARAMETER)
    if fs_type is not None:
        fs_type = validate_fs_type(fs_type, source=f"StorageClass parameter {FSTYPE_PARAMETER}")
    policy = parameters.get(CHECKPOINT_POLICY_PARAMETER)
    if policy is not None and not policy:
        raise InvalidArgument(
            f"StorageClass parameter {CHECKPOINT_POLICY_PARAMETER} must name a CheckpointPolicy"
        )
    return VolumeParameters(
        pools=pools,
        fs_type=fs_type,
        checkpoint_policy=policy,
        pvc_name=parameters.get(PVC_NAME_KEY),
        pvc_namespace=parameters.get(PVC_NAMESPACE_KEY),
    )


def validate_fs_type(fs_type: str, *, source: str) -> str:
    if fs_type not in SUPPORTED_FS_TYPES:
        raise InvalidArgument(
            f"{source} {fs_type!r} is not supported; use one of {', '.join(SUPPORTED_FS_TYPES)}"
        )
    return fs_type


def memory_volume_problem(
    pools: tuple[PoolClass, ...], access: VolumeAccess, clone_source: str | None
) -> str | None:
    """Why a volume cannot come from the memory pool, or None: a tmpfs is a directory, not a device."""
    if PoolClass.MEMORY not in pools:
        return None
    if access == VolumeAccess.BLOCK:
        return "a memory volume is a tmpfs directory; it cannot be a block volume"
    if clone_source is not None:
        return (
            f"memory volumes cannot be cloned (source {clone_source}); restore a Checkpoint into it instead"
        )
    return None
