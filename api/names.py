"""Every name Cairn puts on the wire, spelled once: labels, annotations, finalizers, StorageClass
parameters, LVM tags, pool VGs and the names of the objects Cairn makes.

Users, dashboards and other components depend on these strings; a change here is an API change.
"""

from __future__ import annotations

import hashlib
import re

DRIVER_NAME = "lvm.cairn.dev"
TOPOLOGY_KEY = "topology.cairn.dev/node"
API_GROUP = "cairn.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
"""The apiVersion of every Cairn object."""

# -- labels --------------------------------------------------------------------------------------
NODE_LABEL = "cairn.dev/node"
"""The node a LocalVolume, LocalDisk or Checkpoint belongs to."""
POOL_LABEL = "cairn.dev/pool"
CLASS_LABEL = "cairn.dev/class"
"""A LocalDisk's class (nvme, ssd or hdd)."""
PVC_LABEL = "cairn.dev/pvc"
POLICY_LABEL = "cairn.dev/policy"
REPLICA_NODE_LABEL = "cairn.dev/replica-node"
"""The node that keeps a peer replica of a Checkpoint."""
DATASET_LABEL = "cairn.dev/dataset"
"""On a dataset's LocalVolumes: `<namespace>.<name>`."""
WAITING_FOR_DATA_LABEL = "cairn.dev/waiting-for-data"
"""On a pod held by the dataset gate ("true"), so the controller lists only those pods."""
OPT_OUT_LABEL = "cairn.dev/opt-out"
"""On a LocalDisk: never claim this disk."""

# -- annotations ---------------------------------------------------------------------------------
WIPE_ANNOTATION = "cairn.dev/wipe"
NODE_LEASE_PREFIX = "cairn-node-"
"""Each agent renews the Lease `cairn-node-<node>` in Cairn's namespace."""
DEFAULT_NODE_LEASE_SECONDS = 40
"""kubelet's default node lease duration; an agent renews four times within it."""
LOST_ANNOTATION = "cairn.dev/lost"
"""On a StorageNode, set to "true" by an operator: the node will not come back; release what it held."""
"""On a LocalDisk: the operator's consent to wipe it, naming the disk's own identity."""
DATASET_ANNOTATION = "cairn.dev/dataset"
"""On a pod: the Datasets (comma-separated names in its namespace) it waits for before it is scheduled."""
POPULATE_FROM_ANNOTATION = "cairn.dev/populate-from"
"""On a prime claim: `<Kind>/<namespace>/<name>`, Kind being Checkpoint or Dataset."""
POPULATE_FOR_ANNOTATION = "cairn.dev/populate-for"
"""On a prime claim: `<namespace>/<name>` of the claim the volume is for."""

# -- scheduling gates ----------------------------------------------------------------------------
DATASET_GATE = "cairn.dev/dataset"
"""On a pod that consumes a Dataset, from admission until its data is ready on enough nodes."""

# -- finalizers ----------------------------------------------------------------------------------
VOLUME_FINALIZER = "cairn.dev/logical-volume"
"""Held by the node agent until a LocalVolume's LV is removed."""
DATASET_VOLUMES_FINALIZER = "cairn.dev/dataset-volumes"
"""Held by the controller until every copy of a Dataset is gone."""

# -- StorageClass parameters ---------------------------------------------------------------------
POOL_PARAMETER = "cairn.dev/pool"
FSTYPE_PARAMETER = "csi.storage.k8s.io/fstype"
CHECKPOINT_POLICY_PARAMETER = "cairn.dev/checkpoint-policy"

# -- LVM -----------------------------------------------------------------------------------------
OWNED_TAG = "cairn.dev/owned"
"""On every VG and LV Cairn makes: what orphan GC may consider at all."""
VOLUME_TAG_PREFIX = "cairn.dev/volume="
"""On an LV: the LocalVolume it belongs to, which proves ownership before anything replaces it."""
REPLICA_STORE_TAG = "cairn.dev/replica-store"
"""On the one LV per node that holds peer replicas: the agent's own, claimed by no LocalVolume."""
TIER_STORE_TAG = "cairn.dev/tier-store"
"""On the one LV per node that holds the local-tier copies of memory volumes' checkpoints: the agent's own."""
AGENT_STORE_TAGS = frozenset({REPLICA_STORE_TAG, TIER_STORE_TAG})
"""The agent's own LVs, which no LocalVolume claims and orphan GC never removes."""


def pool_vg(pool: str) -> str:
    """The volume group that holds a pool's LVs on every node."""
    return f"cairn-{pool}"


# -- names of the objects Cairn makes ------------------------------------------------------------
LOCAL_VOLUME_PREFIX = "lv-"
_DIGEST_CHARS = 32
_LOCAL_VOLUME_NAME = re.compile(rf"^{LOCAL_VOLUME_PREFIX}[0-9a-f]{{{_DIGEST_CHARS}}}$")
PRIME_CLAIM_PREFIX = "cairn-populate-"
"""The volume populator's own claims, in its namespace: `<prefix><uid of the user's claim>`."""


def volume_name(csi_name: str) -> str:
    """The LocalVolume of a CSI volume name: deterministic, so a retried CreateVolume finds its own
    earlier work, and valid as a Kubernetes object name and an LV name whatever the CO sent."""
    return LOCAL_VOLUME_PREFIX + hashlib.sha256(csi_name.encode()).hexdigest()[:_DIGEST_CHARS]


def is_volume_name(name: str) -> bool:
    return bool(_LOCAL_VOLUME_NAME.match(name))
