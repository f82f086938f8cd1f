"""`cairn-node-agent`: one per node. Finds and claims disks, carves volumes, serves CSI Node."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from kubernetes import client

from cairn.api.checkpoint import Checkpoint, CheckpointPolicy
from cairn.api.dataset import Dataset
from cairn.api.disk import AgentEndpoints, LocalDisk, StorageNode
from cairn.api.names import GROUP_VERSION, NODE_LABEL, REPLICA_NODE_LABEL, pool_vg
from cairn.api.volume import DISK_CLASSES, LocalVolume, LocalVolumeSpec, PoolClass
from cairn.background import Coalescing
from cairn.csi.identity import IdentityService
from cairn.csi.proto import csi_pb2_grpc
from cairn.csi.server import serve
from cairn.events import EventRecorder
from cairn.informer import Informers, trigger_on
from cairn.kube import ResourceClient, egress_policy_reader, load_api_client, secret_reader
from cairn.logs import setup_logging
from cairn.node_agent import metrics
from cairn.node_agent.checkpoints.drain import VolumeDrainer
from cairn.node_agent.checkpoints.local import checkpoint_locator, disk_copy_directory, local_copy_directory
from cairn.node_agent.checkpoints.local_tier import LocalTierCopier
from cairn.node_agent.checkpoints.replica_store import TIER_STORE_DIR, ReplicaStore, TierStore
from cairn.node_agent.checkpoints.replicas import ReplicaKeeper
from cairn.node_agent.checkpoints.tiering import CheckpointTierer
from cairn.node_agent.checkpoints.watcher import CheckpointWatcher
from cairn.node_agent.datasets.agent import DatasetAgent, wake_shape
from cairn.node_agent.datasets.pacing import DEFAULT_BACKGROUND_BYTES_PER_SECOND
from cairn.node_agent.disks.classify import parse_class_overrides
from cairn.node_agent.disks.facts import ProbeScope
from cairn.node_agent.disks.manager import DiskManager
from cairn.node_agent.disks.plan import DiskPolicy
from cairn.node_agent.disks.watch import watch_block_events
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.memory.pool import TmpfsPool, host_memory_bytes
from cairn.node_agent.memory.pressure import MemoryPressure
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.identity import PEER_IDENTITY_DIR, PeerIdentity
from cairn.node_agent.p2p.peer_server import DatasetTorrent, PeerDirectory, start_peer_server
from cairn.node_agent.p2p.session import TorrentNode
from cairn.node_agent.volumes.backends import PoolBackends
from cairn.node_agent.volumes.index import PopulateError, VolumeIndex
from cairn.node_agent.volumes.node_service import NodeService
from cairn.node_agent.volumes.orphan_sweeper import DEFAULT_ORPHAN_GRACE_SECONDS, OrphanSweeper
from cairn.node_agent.volumes.populate import (
    copy_dataset_into,
    populate_volume,
    release_unfinished_fills,
    restore_into_volume,
)
from cairn.node_agent.volumes.quiesce import CloneSources
from cairn.node_agent.volumes.reconciler import VolumeReconciler
from cairn.node_agent.volumes.staged import StagedVolumes
from cairn.node_agent.volumes.storage_node import StorageNodePublisher
from cairn.node_lease import DEFAULT_LEASE_SECONDS, NodeLeaseRenewer
from cairn.units import human_bytes

log = logging.getLogger("cairn.node")
VolumePath = Callable[[str], Path | None]
"""Where this agent sees a volume's files: its staging mount, or a memory volume's own tmpfs."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cairn-node-agent", description=__doc__)
    parser.add_argument("--node-name", required=True, help="this node's Kubernetes Node name")
    parser.add_argument("--endpoint", default="unix:///csi/csi.sock", help="CSI socket (unix:///path)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file; in-cluster config if unset")
    parser.add_argument(
        "--claim-classes",
        default="nvme",
        help="disk classes whose clean disks join pools, e.g. nvme,ssd (default nvme)",
    )
    parser.add_argument(
        "--class-override",
        action="append",
        default=[],
        metavar="WHAT=CLASS",
        help="force a class: default=ssd for the whole node, /dev/sdb=hdd or a disk id "
        "or glob for one disk (repeatable)",
    )
    parser.add_argument("--min-disk-bytes", type=int, default=1024**3, help="smaller disks are never claimed")
    parser.add_argument(
        "--rescan-interval",
        type=float,
        default=8.0,
        help="seconds between full disk rescans, the safety net behind hot-plug events",
    )
    parser.add_argument(
        "--allow-loop-devices", action="store_true", help="TEST SETTING: treat loop devices as disks"
    )
    parser.add_argument(
        "--loop-backing-prefix",
        default=None,
        help="TEST SETTING: only loop devices whose backing file starts with this",
    )
    parser.add_argument("--metrics-address", default=None, help="host:port to serve /metrics on")
    parser.add_argument("--p2p-address", default=None, help="host:port of the BitTorrent listener")
    parser.add_argument(
        "--origin-allow-cidr",
        action="append",
        default=[],
        help="a range Dataset origins may reach although it is denied (e.g. an in-cluster object store)",
    )
    parser.add_argument(
        "--origin-deny-cidr",
        action="append",
        default=[],
        help="a range Dataset origins may not reach, beyond loopback, link-local and the cluster's own",
    )
    parser.add_argument(
        "--lvm-system-dir",
        default=None,
        help="LVM_SYSTEM_DIR for lvm commands (default: the host's /etc/lvm)",
    )
    parser.add_argument("--max-volumes", type=int, default=1000, help="volumes this node may carry")
    parser.add_argument(
        "--node-lease-namespace",
        default="cairn-system",
        help="namespace of this node's Lease (cairn-node-<node>), renewed so the controller knows it lives",
    )
    parser.add_argument(
        "--node-lease-seconds",
        type=int,
        default=DEFAULT_LEASE_SECONDS,
        help="the Lease's duration; it is renewed every quarter of it",
    )
    parser.add_argument(
        "--replica-store-bytes",
        type=int,
        default=16 * 1024**3,
        help="size of the LV that holds other nodes' checkpoint replicas, carved when first needed; 0: none",
    )
    parser.add_argument(
        "--replica-store-pool", default="nvme", help="the pool the replica store is carved in"
    )
    parser.add_argument(
        "--local-tier-bytes",
        type=int,
        default=16 * 1024**3,
        help="size of the LV that holds the local-tier copies of memory volumes' checkpoints "
        "(policies with tiers [memory, local, ...]), carved when first needed; 0: none",
    )
    parser.add_argument(
        "--local-tier-pool", default="nvme", help="the pool the local-tier store is carved in"
    )
    parser.add_argument(
        "--orphan-grace-seconds",
        type=float,
        default=DEFAULT_ORPHAN_GRACE_SECONDS,
        help="how long an LV tagged as Cairn's must stay unclaimed and unused before it is removed",
    )
    parser.add_argument(
        "--orphan-pass-seconds", type=float, default=60.0, help="seconds between looks for orphan LVs"
    )
    parser.add_argument(
        "--checkpoint-poll-interval",
        type=float,
        default=2.0,
        help="seconds between looks for new checkpoints on staged volumes",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/cairn"),
        help="where the agent keeps what must survive a restart: staged volumes, upload progress",
    )
    parser.add_argument(
        "--peer-restore-address",
        default=None,
        help="host:port on the cluster network serving this node's checkpoint copies to peers",
    )
    parser.add_argument(
        "--background-bytes-per-second",
        type=int,
        default=DEFAULT_BACKGROUND_BYTES_PER_SECOND,
        help="each node's cap, in and out apart, for Datasets of priority Background that set none",
    )
    parser.add_argument(
        "--memory-pool-bytes",
        type=int,
        default=0,
        help="host memory set aside for volumes of pool memory (one tmpfs each); 0: no memory pool. "
        "Reserve as much for the system in kubelet (systemReserved): the scheduler does not see it",
    )
    parser.add_argument(
        "--memory-pool-dir",
        type=Path,
        default=None,
        help="where the memory volumes are mounted; it must propagate to the host, so the tmpfs "
        "outlives the agent (default: <state-dir>/memory)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def disk_policy(args: argparse.Namespace) -> DiskPolicy:
    try:
        classes = frozenset(PoolClass(c.strip()) for c in args.claim_classes.split(",") if c.strip())
        if not_disks := sorted(c.value for c in classes - set(DISK_CLASSES)):
            raise ValueError(
                f"--claim-classes: {', '.join(not_disks)} is not a disk class; "
                "the memory pool is sized with --memory-pool-bytes"
            )
        overrides = parse_class_overrides(args.class_override)
    except ValueError as error:
        raise SystemExit(f"cairn-node-agent: {error}") from None
    return DiskPolicy(
        claim_classes=classes,
        overrides=overrides,
        min_bytes=args.min_disk_bytes,
        scope=ProbeScope(allow_loop=args.allow_loop_devices, loop_backing_prefix=args.loop_backing_prefix),
    )


# The node needs memory of its own: a pool that leaves less than this share is refused at start.
MEMORY_LEFT_TO_THE_NODE = 0.1


def memory_pool(args: argparse.Namespace) -> TmpfsPool | None:
    """The memory pool, when --memory-pool-bytes asks for one; refused when it leaves the node too little."""
    if args.memory_pool_bytes < 0:
        raise SystemExit(f"cairn-node-agent: --memory-pool-bytes={args.memory_pool_bytes} is negative")
    if args.memory_pool_bytes == 0:
        return None
    total = host_memory_bytes()
    if args.memory_pool_bytes > total * (1 - MEMORY_LEFT_TO_THE_NODE):
        raise SystemExit(
            f"cairn-node-agent: --memory-pool-bytes={human_bytes(args.memory_pool_bytes)} leaves less than "
            f"{MEMORY_LEFT_TO_THE_NODE:.0%} of this node's {human_bytes(total)} of memory to everything else"
        )
    root = args.memory_pool_dir or args.state_dir / "memory"
    pool = TmpfsPool(root, args.memory_pool_bytes, pool_vg(PoolClass.MEMORY.value))
    log.info("memory pool: %s at %s", human_bytes(args.memory_pool_bytes), root)
    return pool


def start_disks(
    args: argparse.Namespace,
    api_client: Any,
    lvm: Lvm,
    index: VolumeIndex,
    policy: DiskPolicy,
    stop: threading.Event,
    identity: PeerIdentity | None,
    memory: TmpfsPool | None,
) -> tuple[StorageNodePublisher, Coalescing]:
    """LocalDisks kept true, eligible disks claimed, and this node's StorageNode published."""
    endpoints = AgentEndpoints(
        csi_socket=args.endpoint,
        metrics_address=args.metrics_address,
        p2p_address=args.p2p_address,
        peer_restore_address=args.peer_restore_address,
        peer_certificate=identity.certificate_pem if identity else None,
    )
    publisher = StorageNodePublisher(
        args.node_name,
        lvm,
        ResourceClient(api_client, StorageNode),
        sorted(policy.claim_classes),
        endpoints,
        index.volume_count,
        memory=memory,
    )
    publish_soon = Coalescing("publish", publisher.publish, stop, min_interval=0.5, period=30).start()
    disks = DiskManager(
        args.node_name,
        lvm,
        ResourceClient(api_client, LocalDisk),
        EventRecorder(api_client, "cairn-node-agent"),
        policy,
        on_change=publish_soon.trigger,
    )
    # The first scan runs before anything else: it also decides which devices lvm may see.
    disks.scan()
    publisher.publish()
    rescan = Coalescing("disk-scan", disks.scan, stop, min_interval=0.5, period=args.rescan_interval).start()
    watch_block_events(rescan.trigger, stop)
    return publisher, publish_soon


def start_orphan_sweeper(
    args: argparse.Namespace,
    api_client: Any,
    lvm: Lvm,
    publisher: StorageNodePublisher,
    publish_soon: Coalescing,
    stop: threading.Event,
) -> OrphanSweeper:
    storage_nodes = ResourceClient(api_client, StorageNode)

    def storage_node_uid() -> str | None:
        item = storage_nodes.get(args.node_name)
        return item.metadata.get("uid") if item else None

    sweeper = OrphanSweeper(
        args.node_name,
        lvm,
        ResourceClient(api_client, LocalVolume),
        EventRecorder(api_client, "cairn-node-agent"),
        publisher.pools,
        grace_seconds=args.orphan_grace_seconds,
        on_change=publish_soon.trigger,
        storage_node_uid=storage_node_uid,
    )
    publisher.extra_conditions = sweeper.conditions
    Coalescing("orphans", sweeper.run_pass, stop, min_interval=1.0, period=args.orphan_pass_seconds).start()
    return sweeper


def start_peer_plane(
    args: argparse.Namespace,
    api_client: Any,
    path_of: VolumePath,
    replicas: ReplicaKeeper,
    datasets: DatasetAgent | None,
    stop: threading.Event,
    identity: PeerIdentity,
    peers: PeerDirectory,
) -> None:
    """The peer server: this node's checkpoint copies and dataset torrents, for Cairn agents only."""
    locate = checkpoint_locator(
        ResourceClient(api_client, Checkpoint),
        args.node_name,
        path_of,
        replicas.replica_directory,
        args.state_dir / TIER_STORE_DIR,
    )
    volumes = ResourceClient(api_client, LocalVolume)

    def read_volume(name: str) -> LocalVolume | None:
        found = volumes.get(name)
        return None if found is None else found.model

    torrents: DatasetTorrent = (
        datasets.torrent_bytes if datasets else lambda namespace, name, part, node: None
    )
    start_peer_server(args.peer_restore_address, identity, peers, locate, read_volume, stop, torrents)


def start_dataset_agent(
    args: argparse.Namespace,
    api_client: Any,
    informers: Informers,
    index: VolumeIndex,
    stop: threading.Event,
    identity: PeerIdentity | None,
) -> tuple[DatasetAgent | None, Callable[[], None]]:
    """The libtorrent session and dataset work, only with --p2p-address (the one address peers use);
    returns the agent and what starts a pass at once (a copy's volume carved: mount it now)."""
    if not args.p2p_address:
        return None, lambda: None
    host, port = split_address(args.p2p_address)
    datasets = informers.resources(Dataset)
    agent = DatasetAgent(
        args.node_name,
        api_client,
        datasets,
        informers.resources(StorageNode),
        index.lookup,
        args.state_dir,
        TorrentNode(host, port, tls=identity is not None),
        egress_policy_reader(api_client, args.origin_allow_cidr, args.origin_deny_cidr),
        identity,
        args.background_bytes_per_second,
    )
    passes = Coalescing("datasets", agent.run_pass, stop, min_interval=0.2, period=2.0).start()
    trigger_on(datasets.cache, wake_shape, passes.trigger)
    return agent, passes.trigger


def start_checkpoints(
    args: argparse.Namespace,
    api_client: Any,
    informers: Informers,
    lvm: Lvm,
    index: VolumeIndex,
    staged: StagedVolumes,
    path_of: VolumePath,
    stop: threading.Event,
    identity: PeerIdentity | None,
) -> tuple[CheckpointWatcher, ReplicaKeeper, VolumeDrainer]:
    """Recording, tiering, retention and peer replicas of the checkpoints on this node's volumes,
    and the drain that keeps an unstaged volume watched until its checkpoints are tiered.

    Their passes read this node's Checkpoints and every policy from shared caches: a pass every
    second or two costs the apiserver nothing but the writes it makes.
    """
    here = informers.resources(Checkpoint, label_selector=f"{NODE_LABEL}={args.node_name}")
    policies = informers.resources(CheckpointPolicy, serve_gets=True)
    tierer = CheckpointTierer(
        args.node_name,
        here,
        policies,
        secret_reader(api_client),
        args.state_dir,
        path_of,
        EventRecorder(api_client, "cairn-node-agent"),
        storage_nodes=informers.resources(StorageNode),
    )
    # A pass also runs every few seconds: it resumes uploads interrupted by a restart and retries failures.
    tiering = Coalescing("tiering", tierer.run_pass, stop, min_interval=1.0, period=10.0).start()
    tier_root = args.state_dir / TIER_STORE_DIR
    copier = LocalTierCopier(
        args.node_name,
        here,
        policies,
        path_of,
        tier_root,
        EventRecorder(api_client, "cairn-node-agent"),
        store=TierStore(lvm, args.local_tier_pool, args.local_tier_bytes, tier_root),
        on_copied=tiering.trigger,
    )
    # Its own loop, never behind an S3 upload: memory fills while its checkpoints wait. A copy
    # made wakes the tierer, whose retention may now free the memory it took.
    memory_drain = Coalescing("memory-drain", copier.run_pass, stop, min_interval=0.2, period=1.0).start()

    def copied_or_recorded() -> None:
        memory_drain.trigger()
        tiering.trigger()

    watcher = CheckpointWatcher(
        args.node_name,
        policies,
        here,
        index.spec_of,
        period=args.checkpoint_poll_interval,
        on_recorded=lambda namespace, name: copied_or_recorded(),
    )
    store_root = args.state_dir / "replicas"
    replicas = ReplicaKeeper(
        args.node_name,
        api_client,
        informers.resources(Checkpoint, label_selector=f"{REPLICA_NODE_LABEL}={args.node_name}"),
        store_root,
        identity,
        store=ReplicaStore(lvm, args.replica_store_pool, args.replica_store_bytes, store_root),
    )
    Coalescing("replicas", replicas.run_pass, stop, min_interval=1.0, period=5.0).start()

    def move_watch(volume: str, path: Path) -> None:
        staged.add(volume, str(path))
        watcher.register(volume, str(path))

    def forget(volume: str) -> None:
        watcher.unregister(volume)
        staged.remove(volume)

    drainer = VolumeDrainer(
        args.node_name,
        args.state_dir,
        here,
        policies,
        EventRecorder(api_client, "cairn-node-agent"),
        index.spec_of,
        watcher.pending,
        move_watch,
        forget,
    )
    # Mounts outlive the agent, and kubelet will not stage them again: pick them back up. The
    # agent's own mounts of unstaged volumes are among them, and their drains carry on.
    drainer.recover()
    for volume, path in staged.recover().items():
        log.info("volume %s is still mounted at %s; watching it again", volume, path)
        watcher.register(volume, str(path))
    threading.Thread(target=watcher.run, args=(stop,), name="checkpoints", daemon=True).start()
    Coalescing("drain", drainer.run_pass, stop, min_interval=1.0, period=2.0).start()
    return watcher, replicas, drainer


def volume_filler(
    args: argparse.Namespace,
    api_client: Any,
    path_of: VolumePath,
    datasets: DatasetAgent | None,
    identity: PeerIdentity | None,
) -> Callable[[str, LocalVolumeSpec, str], str]:
    """What fills a new volume from its populateFrom: a Dataset's local copy, or a Checkpoint."""

    def fill(name: str, spec: LocalVolumeSpec, root: Path) -> str:
        assert spec.populate_from is not None
        if spec.populate_from.kind == "Dataset":
            if datasets is None:
                raise PopulateError(
                    "PopulateUnsupported", "this agent runs without --p2p-address: no datasets"
                )
            return copy_dataset_into(spec, root, datasets.data_directory)
        return restore_into_volume(
            api_client,
            args.node_name,
            name,
            spec,
            root,
            lambda checkpoint: local_copy_directory(checkpoint, args.node_name, path_of),
            identity,
            disk_directory=lambda checkpoint: disk_copy_directory(
                checkpoint, args.node_name, args.state_dir / TIER_STORE_DIR
            ),
        )

    return lambda name, spec, device: populate_volume(
        name, spec, device, args.state_dir / "populate", lambda root: fill(name, spec, root)
    )


def serve_node(
    args: argparse.Namespace,
    index: VolumeIndex,
    reconciler: VolumeReconciler,
    staged: StagedVolumes,
    watcher: CheckpointWatcher,
    drainer: VolumeDrainer,
    ready: Callable[[], bool],
    memory: TmpfsPool | None,
) -> grpc.Server:
    """The CSI Identity and Node services on --endpoint."""

    def on_staged(volume: str, path: str) -> None:
        # The agent reads a memory volume through its own mount of the tmpfs, never the kubelet's:
        # a checkpoint being copied or uploaded then never makes the kubelet's unmount busy.
        path = (memory.device_path(memory.vg, volume) if memory is not None else None) or path
        staged.add(volume, path)
        watcher.register(volume, path)
        drainer.restaged(volume)

    def on_unstaged(volume: str) -> None:
        staging = staged.path_of(volume)
        if staging is not None and drainer.hold(volume, staging):
            return  # watched through the agent's own mount until its checkpoints are tiered
        if memory is not None and (held := memory.device_path(memory.vg, volume)) is not None:
            # The agent holds a memory volume's tmpfs whoever mounts it: its checkpoints stay
            # watched, tiered and restorable while no pod uses it, as a disk volume's do not.
            staged.add(volume, held)
            watcher.register(volume, held)
            return
        watcher.unregister(volume)
        staged.remove(volume)

    node = NodeService(
        args.node_name,
        index.lookup,
        reconciler.health,
        max_volumes=args.max_volumes,
        on_staged=on_staged,
        on_unstaged=on_unstaged,
    )

    def register(server: grpc.Server) -> None:
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(ready), server)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)

    return serve(args.endpoint, register)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    policy = disk_policy(args)
    if args.metrics_address:
        metrics.serve(args.metrics_address)
    # The disk manager sets lvm's device allow-list on every scan; until then lvm sees nothing.
    lvm = Lvm(devices=[], system_dir=args.lvm_system_dir)
    log.info("LVM activation mode: %s", lvm.mode.value)
    api_client = load_api_client(args.kubeconfig)
    stop = threading.Event()
    informers = Informers(api_client, stop)
    index, staged = VolumeIndex(), StagedVolumes(args.state_dir)
    # A new key at every start: it never leaves this node, and the StorageNode publishes its certificate.
    identity = (
        PeerIdentity.create(args.node_name, args.state_dir / PEER_IDENTITY_DIR)
        if args.peer_restore_address or args.p2p_address
        else None
    )
    renewer = NodeLeaseRenewer(
        client.CoordinationV1Api(api_client),
        args.node_lease_namespace,
        args.node_name,
        args.node_lease_seconds,
    )
    threading.Thread(target=renewer.run, args=(stop,), name="node-lease", daemon=True).start()
    memory = memory_pool(args)

    def path_of(volume: str) -> Path | None:
        if (path := staged.path_of(volume)) is not None:
            return path
        held = memory.device_path(memory.vg, volume) if memory is not None else None
        return Path(held) if held is not None else None

    publisher, publish_soon = start_disks(args, api_client, lvm, index, policy, stop, identity, memory)
    datasets, dataset_pass = start_dataset_agent(args, api_client, informers, index, stop, identity)
    watcher, replicas, drainer = start_checkpoints(
        args, api_client, informers, lvm, index, staged, path_of, stop, identity
    )

    def volumes_changed() -> None:
        publish_soon.trigger()
        dataset_pass()  # a copy's volume carved: mount it and start at once

    def before_remove(volume: str) -> None:
        if datasets is not None:
            datasets.release_volume(volume)
        if drainer.is_held(volume):
            watcher.unregister(volume)
            staged.remove(volume)
            drainer.let_go(volume)
        elif memory is not None and volume in memory.volumes():
            watcher.unregister(volume)
            staged.remove(volume)

    if unfinished := release_unfinished_fills(args.state_dir / "populate"):
        log.warning("unmounted volumes a previous agent left mid-fill; they are filled again: %s", unfinished)
    clone_sources = CloneSources(args.state_dir, staged.path_of)
    if thawed := clone_sources.thaw_leftovers():
        log.warning("thawed clone sources a previous agent left frozen mid-copy: %s", thawed)
    local_volumes = informers.resources(LocalVolume, label_selector=f"{NODE_LABEL}={args.node_name}")
    memory_contents_lost = EventRecorder(api_client, "cairn-node-agent")
    if memory is not None:
        memory.on_lost = lambda volume: memory_contents_lost.record(
            {"apiVersion": GROUP_VERSION, "kind": "LocalVolume", "name": volume},
            "MemoryContentsLost",
            f"memory volume {volume} on node {args.node_name} came back empty: its tmpfs was gone "
            "(the host restarted); whatever only it held is lost, copies on slower tiers are not",
            warning=True,
        )
    reconciler = VolumeReconciler(
        args.node_name,
        PoolBackends(lvm, memory, pool_vg(PoolClass.MEMORY.value)),
        local_volumes,
        index,
        on_change=volumes_changed,
        publish_now=publisher.publish,
        before_remove=before_remove,
        populate=volume_filler(args, api_client, path_of, datasets, identity),
        removal_blocker=drainer.removal_blocker,
        held_still=clone_sources.held_still,
    )

    def finish_deletion(volume: str) -> None:
        item = local_volumes.get(volume)
        if item is not None and item.metadata.get("deletionTimestamp"):
            reconciler.handle("MODIFIED", item)

    drainer.on_drained = finish_deletion
    start_orphan_sweeper(args, api_client, lvm, publisher, publish_soon, stop)
    if memory is not None:
        pressure = MemoryPressure(
            args.node_name, memory, EventRecorder(api_client, "cairn-node-agent"), index.spec_of
        )
        Coalescing("memory-pressure", pressure.run_pass, stop, min_interval=1.0, period=2.0).start()
    ready = threading.Event()

    def reconcile_forever() -> None:
        ready.set()
        reconciler.run(stop)

    threading.Thread(target=reconcile_forever, name="volumes", daemon=True).start()
    if args.peer_restore_address and identity is not None:
        storage_nodes = informers.resources(StorageNode)
        peers = PeerDirectory(lambda: [i.model for i in storage_nodes.list()])
        start_peer_plane(args, api_client, path_of, replicas, datasets, stop, identity, peers)
    server = serve_node(args, index, reconciler, staged, watcher, drainer, ready.is_set, memory)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("cairn-node-agent for node %s serving on %s", args.node_name, args.endpoint)
    stop.wait()
    if datasets is not None:
        datasets.shutdown()
    publisher.mark_not_ready()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
