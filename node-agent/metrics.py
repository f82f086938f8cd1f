"""The node agent's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cairn.api.disk import DiskState

DISK_CAPACITY = Gauge(
    "cairn_disk_capacity_bytes", "Size of a disk the agent found.", ["node", "disk", "class"]
)
DISK_STATE = Gauge(
    "cairn_disk_state", "1 for the disk's current state, 0 for the others.", ["node", "disk", "state"]
)
POOL_SIZE = Gauge("cairn_pool_size_bytes", "Total size of a pool's volume group.", ["node", "pool"])
POOL_FREE = Gauge("cairn_pool_free_bytes", "Unallocated space in a pool's volume group.", ["node", "pool"])

CHECKPOINT_BYTES = Counter(
    "cairn_checkpoint_bytes_total",
    "Checkpoint bytes moved: operation=upload to S3, restore from tier memory|local|peer|s3, or "
    "tier-copy from memory to tier local (the memory drain).",
    ["node", "operation", "tier"],
)
CHECKPOINT_UPLOAD_SECONDS = Histogram(
    "cairn_checkpoint_upload_seconds",
    "Time to upload and verify one checkpoint.",
    ["node"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
CHECKPOINT_TIER_LAG = Gauge(
    "cairn_checkpoint_tier_lag_seconds",
    "Age of the oldest checkpoint of a PVC not yet verified in a tier: tier=s3, or tier=local for the "
    "copy of a memory volume's checkpoint to the node's disks; 0 when all are.",
    ["node", "namespace", "pvc", "tier"],
)
MEMORY_VOLUME_USED = Gauge(
    "cairn_memory_volume_used_ratio",
    "Share of a memory volume's size its files take; at 1 new writes fail with ENOSPC.",
    ["node", "volume", "namespace", "pvc"],
)
ORPHANS = Gauge(
    "cairn_orphan_volumes",
    "LVs tagged as Cairn's that no LocalVolume claims, by what the sweeper makes of them.",
    ["node", "state"],
)
ORPHANS_REMOVED = Counter(
    "cairn_orphan_volumes_removed", "Orphan LVs removed after their grace period, with proof.", ["node"]
)
CHECKPOINTS = Gauge("cairn_checkpoints", "Checkpoints recorded by this node, by phase.", ["node", "phase"])

DATASET_BYTES = Counter(
    "cairn_dataset_bytes_total", "Dataset bytes received, by where they came from.", ["node", "source"]
)
DATASET_PROGRESS = Gauge(
    "cairn_dataset_progress_ratio",
    "Share of a dataset this node holds, verified.",
    ["node", "namespace", "dataset"],
)
PEER_REFUSED = Counter(
    "cairn_peer_refused_total",
    "Connections and requests the peer server turned away, by why (tls, deadline, busy, forbidden...).",
    ["node", "reason"],
)
P2P_UPLOAD_BYTES = Counter(
    "cairn_p2p_upload_bytes_total", "Dataset bytes this node served to peers.", ["node"]
)
P2P_HASH_FAILURES = Counter(
    "cairn_p2p_hash_failures_total", "Dataset pieces received that failed their hash check.", ["node"]
)
P2P_REDUNDANT_BYTES = Counter(
    "cairn_p2p_redundant_bytes_total",
    "Dataset bytes received more than once (one block from two peers); included in the peer bytes.",
    ["node"],
)
P2P_BANNED_PEERS = Counter("cairn_p2p_banned_peers_total", "Peers banned for sending bad data.", ["node"])
P2P_PEERS = Gauge("cairn_p2p_peers", "Peers connected for a dataset.", ["node", "namespace", "dataset"])


def record_disk(node: str, disk: str, disk_class: str, capacity: int, state: DiskState) -> None:
    DISK_CAPACITY.labels(node=node, disk=disk, **{"class": disk_class}).set(capacity)
    for candidate in DiskState:
        DISK_STATE.labels(node=node, disk=disk, state=candidate.value).set(1 if candidate == state else 0)


def record_pool(node: str, pool: str, size: int, free: int) -> None:
    POOL_SIZE.labels(node=node, pool=pool).set(size)
    POOL_FREE.labels(node=node, pool=pool).set(free)


def serve(address: str) -> None:
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")
