"""Every custom resource kind Cairn defines, in one list."""

from __future__ import annotations

from .base import Resource
from .checkpoint import Checkpoint, CheckpointPolicy
from .dataset import Dataset
from .disk import LocalDisk, StorageNode
from .volume import LocalVolume

RESOURCES: list[type[Resource]] = [LocalDisk, StorageNode, LocalVolume, CheckpointPolicy, Checkpoint, Dataset]
