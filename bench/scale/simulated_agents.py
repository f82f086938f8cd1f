"""A SIMULATOR of many Cairn node agents in one process, for the scale bench. It is not the agent.

Each simulated node speaks to the apiserver through the agent's own code, under the agent's own
ServiceAccount: `StorageNodePublisher` publishes its StorageNode, `NodeLeaseRenewer` renews its
Lease, and `VolumeReconciler` carves its LocalVolumes Ready or Failed from the agent's shared
informer (`cairn.informer.Informers`, one per node as each agent process has one), selected by the
node's label. The node's two Checkpoint informers (its own, and the replicas it holds) are opened
too, as the agent opens them, though nothing here reads them: their watches are part of the cost.

Simulated: LVM (`InMemoryLvm`: one nvme pool of fixed size whose free space is arithmetic), and
dataset copies (`SimulatedCopy`: no bytes move, each target's status reports are the agent's own).
Not run: disk discovery, the swarm, checkpoint tiering, the CSI Node service, the orphan sweeper,
and the agent's cluster-wide informers (StorageNodes, Datasets, CheckpointPolicies) but for one
Dataset informer the whole process shares. A thousand copies of every StorageNode in one Python
process would measure this process, not Cairn. The README's Scale section adds what they cost per
node (a watch renewal a minute each, the sweeper's list) and the watch events they receive.

Periodic calls (Lease renewals, the 30 s StorageNode safety-net publish) run from one timetable
and a few worker threads instead of a thread each per node, with the agent's periods; the
reconcilers keep a thread and a watch each, as the agent does.

    python -m bench.scale.simulated_agents --kubeconfig K --nodes scale-0000,scale-0001
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import logging
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from kubernetes import client

from bench.scale.objects import SIMULATED_SEED_SECONDS_ANNOTATION
from cairn.api.checkpoint import Checkpoint
from cairn.api.dataset import Dataset, DatasetNodeStatus, NodePhase
from cairn.api.disk import AgentEndpoints, StorageNode
from cairn.api.names import NODE_LABEL, OWNED_TAG, REPLICA_NODE_LABEL, pool_vg
from cairn.api.volume import LocalVolume, PoolClass
from cairn.informer import CachedResources, Informers
from cairn.kube import ResourceClient, load_api_client
from cairn.logs import setup_logging
from cairn.node_agent.datasets.reports import NodeReports
from cairn.node_agent.datasets.steps import report_due
from cairn.node_agent.lvm.adapter import Lvm
from cairn.node_agent.lvm.errors import InsufficientSpace, LvAlreadyExists, LvNotFound, VgNotFound
from cairn.node_agent.lvm.report import LvInfo, PvInfo, VgInfo
from cairn.node_agent.volumes.index import VolumeIndex
from cairn.node_agent.volumes.reconciler import VolumeReconciler
from cairn.node_agent.volumes.storage_node import StorageNodePublisher
from cairn.node_lease import DEFAULT_LEASE_SECONDS, NodeLeaseRenewer

log = logging.getLogger("bench.scale.simulated_agents")
MiB = 1024 * 1024
EXTENT_BYTES = 4 * MiB
DEFAULT_POOL_BYTES = 7 * 1024**4
PUBLISH_PERIOD = 30.0
"""The agent's safety-net publish period (node-agent/main.py, start_disks)."""
PUBLISH_MIN_INTERVAL = 0.5
PASS_SECONDS = 2.0
"""The agent's dataset pass period (node-agent/main.py, start_dataset_agent)."""
WATCHES_PER_NODE = 3
"""Its LocalVolumes, its Checkpoints and the replicas it holds."""


class InMemoryLvm:
    """A SIMULATED node's LVM: one volume group per pool, one pretend disk each, no devices.

    It answers what the reconciler (`VolumeLvm`) and the StorageNode publisher ask, with the
    adapter's errors, so a full pool fails a volume as real LVM would.
    """

    def __init__(self, node: str, pools: dict[str, int]) -> None:
        self.node = node
        self._sizes = {pool_vg(pool): size // EXTENT_BYTES * EXTENT_BYTES for pool, size in pools.items()}
        self._lvs: dict[tuple[str, str], LvInfo] = {}
        self._lock = threading.Lock()

    def _used(self, vg: str) -> int:
        return sum(info.size_bytes for (group, _), info in self._lvs.items() if group == vg)

    def _size_of(self, vg: str) -> int:
        if vg not in self._sizes:
            raise VgNotFound(f"volume group {vg} does not exist on simulated node {self.node}")
        return self._sizes[vg]

    # -- what the StorageNode publisher reads --------------------------------------------------

    def get_vg(self, vg: str) -> VgInfo:
        with self._lock:
            size = self._size_of(vg)
            free = size - self._used(vg)
        return VgInfo(
            name=vg,
            size_bytes=size,
            free_bytes=free,
            extent_size_bytes=EXTENT_BYTES,
            extent_count=size // EXTENT_BYTES,
            free_extents=free // EXTENT_BYTES,
            pv_count=1,
            missing_pv_count=0,
            tags=(OWNED_TAG,),
        )

    def pvs(self, *, vg: str | None = None) -> list[PvInfo]:
        groups = [vg] if vg is not None else list(self._sizes)
        found = []
        for group in groups:
            info = self.get_vg(group)
            found.append(
                PvInfo(
                    name=f"/dev/simulated/{group}-disk0",
                    vg=group,
                    size_bytes=info.size_bytes,
                    free_bytes=info.free_bytes,
                    pe_start_bytes=MiB,
                    pe_count=info.extent_count,
                    pe_alloc_count=info.extent_count - info.free_extents,
                    tags=(),
                )
            )
        return found

    # -- what the reconciler asks ---------------------------------------------------------------

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo:
        size = -(-size_bytes // EXTENT_BYTES) * EXTENT_BYTES
        with self._lock:
            free = self._size_of(vg) - self._used(vg)
            if (vg, lv) in self._lvs:
                raise LvAlreadyExists(f"logical volume {vg}/{lv} already exists")
            if size > free:
                raise InsufficientSpace(
                    f"pool {vg} on simulated node {self.node} has {free} bytes free; {lv} needs {size}",
                    vg=vg,
                    free_bytes=free,
                    needed_bytes=size,
                )
            info = self._lvs[(vg, lv)] = LvInfo(
                vg=vg,
                name=lv,
                uuid=str(uuid.uuid4()),
                size_bytes=size,
                extent_size_bytes=EXTENT_BYTES,
                attr="-wi-a-----",
                path=f"/dev/{vg}/{lv}",
                dm_active=True,
                tags=(OWNED_TAG, *tags),
                segments=(),
            )
        return info

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        with self._lock:
            current = self._lvs.get((vg, lv))
            if current is None:
                raise LvNotFound(f"logical volume {vg}/{lv} does not exist")
            size = max(current.size_bytes, -(-new_size_bytes // EXTENT_BYTES) * EXTENT_BYTES)
            free = self._size_of(vg) - self._used(vg)
            if size - current.size_bytes > free:
                raise InsufficientSpace(
                    f"pool {vg} on simulated node {self.node} has {free} bytes free",
                    vg=vg,
                    free_bytes=free,
                    needed_bytes=size - current.size_bytes,
                )
            grown = dataclasses.replace(current, size_bytes=size)
            self._lvs[(vg, lv)] = grown
        return grown

    def lvremove(self, vg: str, lv: str) -> None:
        with self._lock:
            self._size_of(vg)
            if self._lvs.pop((vg, lv), None) is None:
                raise LvNotFound(f"logical volume {vg}/{lv} does not exist")

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        with self._lock:
            self._size_of(vg)
            found = self._lvs.get((vg, lv))
        if found is None:
            raise LvNotFound(f"logical volume {vg}/{lv} does not exist")
        return found

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        return (info or self.get_lv(vg, lv)).path

    def device_path(self, vg: str, lv: str) -> str | None:
        with self._lock:
            found = self._lvs.get((vg, lv))
        return found.path if found else None

    def volume_count(self, vg: str) -> int:
        with self._lock:
            return sum(1 for group, _ in self._lvs if group == vg)


# -- many nodes' periodic calls from a few threads -------------------------------------------------


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    key: str = field(compare=False)
    action: Callable[[], object] = field(compare=False)
    period: float | None = field(compare=False, default=None)


class Timetable:
    """Calls actions at their times from a small pool of workers; `soon` coalesces per key."""

    def __init__(self, stop: threading.Event, workers: int = 8) -> None:
        self.stop = stop
        self._heap: list[_Due] = []
        self._pending: set[str] = set()
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="timetable")
        self.failures = 0

    def every(self, key: str, period: float, action: Callable[[], object], first_in: float) -> None:
        self._push(_Due(time.monotonic() + first_in, next(self._seq), key, action, period))

    def soon(self, key: str, action: Callable[[], object], delay: float) -> None:
        """Once, in `delay` seconds, unless a call under `key` is already waiting."""
        with self._wake:
            if key in self._pending:
                return
            self._pending.add(key)
        self._push(_Due(time.monotonic() + delay, next(self._seq), key, action))

    def _push(self, due: _Due) -> None:
        with self._wake:
            heapq.heappush(self._heap, due)
            self._wake.notify()

    def run(self) -> None:
        while not self.stop.is_set():
            with self._wake:
                now = time.monotonic()
                if not self._heap or self._heap[0].at > now:
                    timeout = self._heap[0].at - now if self._heap else 1.0
                    self._wake.wait(min(timeout, 1.0))
                    continue
                due = heapq.heappop(self._heap)
                if due.period is None:
                    self._pending.discard(due.key)
                else:
                    due.at += due.period
                    due.seq = next(self._seq)
                    heapq.heappush(self._heap, due)
            self._pool.submit(self._call, due)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _call(self, due: _Due) -> None:
        try:
            due.action()
        except Exception:  # as in the agent: the next period tries again
            self.failures += 1
            log.warning("%s failed", due.key, exc_info=True)


# -- dataset copies: no bytes, the agent's reports --------------------------------------------------


class SimulatedCopy:
    """A SIMULATED node's dataset copies: progress climbs with the clock; only the reports are real.

    Each pass writes through the agent's own `NodeReports`, when the agent's own `report_due` says a
    report is due: Downloading at the first pass, progress as paced, Ready at the end. So the
    Dataset takes the writes N real targets would send it, and the controller sums them as it would.
    """

    def __init__(self, node: str, datasets: CachedResources) -> None:
        self.node = node
        self.datasets = datasets
        self.reports = NodeReports(node, datasets)
        self._began: dict[str, float] = {}
        self._reported_at: dict[str, float] = {}

    def run_pass(self) -> None:
        for item in self.datasets.cache.items():
            seconds = (item.metadata.get("annotations") or {}).get(SIMULATED_SEED_SECONDS_ANNOTATION)
            dataset: Dataset = item.model
            if seconds is None or self.node not in dataset.status.target_nodes:
                continue
            namespace = item.metadata.get("namespace", "")
            key = f"{namespace}/{item.name}"
            now = time.monotonic()
            began = self._began.setdefault(key, now)
            report = dataset.status.nodes.get(self.node, DatasetNodeStatus())
            if report.phase == NodePhase.READY:
                continue
            progress = min(1.0, (now - began) / max(float(seconds), PASS_SECONDS))
            updated = DatasetNodeStatus(
                phase=NodePhase.READY if progress >= 1.0 else NodePhase.DOWNLOADING,
                progress=progress,
                bytes_from_peers=int(progress * MiB),
                peers=min(len(dataset.status.target_nodes) - 1, 50),
                digest="sha256:" + "0" * 64 if progress >= 1.0 else None,
            )
            written = self._reported_at.get(key)
            since = None if written is None else now - written
            if report_due(report, updated, len(dataset.status.target_nodes), since, self.node):
                updated.updated_at = datetime.now(UTC)
                self.reports.report(item.name, namespace, updated)
                self._reported_at[key] = now


# -- one simulated node ------------------------------------------------------------------------------


class SimulatedNode:
    """One node identity: the agent's publisher, Lease renewer and volume reconciler, LVM in memory."""

    def __init__(
        self,
        name: str,
        api: client.ApiClient,
        timetable: Timetable,
        pool_bytes: int,
        lease_namespace: str,
        stop: threading.Event,
        datasets: CachedResources,
    ) -> None:
        self.name = name
        self.informers = Informers(api, stop)
        self.copies = SimulatedCopy(name, datasets)
        self.lvm = InMemoryLvm(name, {PoolClass.NVME.value: pool_bytes})
        self.index = VolumeIndex()
        self.timetable = timetable
        # The publisher is typed against the real adapter, but reads only get_vg and pvs.
        self.publisher = StorageNodePublisher(
            name,
            cast(Lvm, self.lvm),
            ResourceClient(api, StorageNode),
            [PoolClass.NVME],
            AgentEndpoints(csi_socket=f"unix:///simulated/{name}/csi.sock"),
            self.lvm.volume_count,
        )
        self.renewer = NodeLeaseRenewer(client.CoordinationV1Api(api), lease_namespace, name)
        self.reconciler = VolumeReconciler(
            name,
            self.lvm,
            self.informers.resources(LocalVolume, label_selector=f"{NODE_LABEL}={name}"),
            self.index,
            on_change=self.publish_soon,
            publish_now=self.publisher.publish,
        )

    def publish_soon(self) -> None:
        self.timetable.soon(f"publish {self.name}", self.publisher.publish, PUBLISH_MIN_INTERVAL)

    def start(self, stop: threading.Event, spread: float) -> None:
        """Lease and StorageNode first, then the watches, as the agent starts them."""
        self.renewer.renew()
        self.publisher.publish()
        self.informers.resources(Checkpoint, label_selector=f"{NODE_LABEL}={self.name}")
        self.informers.resources(Checkpoint, label_selector=f"{REPLICA_NODE_LABEL}={self.name}")
        lease_period = max(1.0, self.renewer.duration_seconds / 4)
        self.timetable.every(
            f"lease {self.name}", lease_period, self.renewer.renew, random.uniform(0, spread)
        )
        self.timetable.every(
            f"publish {self.name} (period)",
            PUBLISH_PERIOD,
            self.publisher.publish,
            random.uniform(0, PUBLISH_PERIOD),
        )
        self.timetable.every(
            f"datasets {self.name}", PASS_SECONDS, self.copies.run_pass, random.uniform(0, PASS_SECONDS)
        )
        threading.Thread(
            target=self.reconciler.run, args=(stop,), name=f"volumes-{self.name}", daemon=True
        ).start()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True, help="the node agent's kubeconfig")
    parser.add_argument("--nodes", required=True, help="comma-separated node names, or @file with one a line")
    parser.add_argument("--pool-bytes", type=int, default=DEFAULT_POOL_BYTES, help="each node's nvme pool")
    parser.add_argument("--node-lease-namespace", default="cairn-system")
    parser.add_argument("--workers", type=int, default=8, help="threads for the periodic calls")
    parser.add_argument("--start-workers", type=int, default=16, help="threads bringing the nodes up")
    parser.add_argument("--ready-file", type=Path, default=None, help="written once every node has started")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def node_list(spec: str) -> list[str]:
    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec.replace(",", "\n")
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    names = node_list(args.nodes)
    # Idle watch threads need little stack; a thousand at the default 8 MiB is memory for nothing.
    threading.stack_size(512 * 1024)
    api = load_api_client(args.kubeconfig)
    # One connection per watch (three a node) plus the workers': past the pool's size every request
    # would open (and throw away) a TLS connection of its own, which no real agent pays.
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = (
        WATCHES_PER_NODE * len(names) + args.workers + args.start_workers + 8
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    timetable = Timetable(stop, workers=args.workers)
    threading.Thread(target=timetable.run, name="timetable", daemon=True).start()
    # One Dataset cache for the process, not one per node: see the module's docstring.
    datasets = Informers(api, stop).resources(Dataset)
    nodes = [
        SimulatedNode(n, api, timetable, args.pool_bytes, args.node_lease_namespace, stop, datasets)
        for n in names
    ]
    spread = DEFAULT_LEASE_SECONDS / 4
    with ThreadPoolExecutor(max_workers=args.start_workers) as pool:
        for future in [pool.submit(node.start, stop, spread) for node in nodes]:
            future.result()
    log.warning("simulating %d node agents", len(nodes))
    if args.ready_file is not None:
        args.ready_file.write_text(f"{len(nodes)}\n")
    stop.wait()


if __name__ == "__main__":
    main()
