"""A discrete-event model of seeding one Dataset onto N nodes, for sizes no test bed can run.

What it follows (node-agent/datasets/{parts,seeder,swarm}.py, controller/datasets/planner.py):
- one seeder reads the origin once; the bytes arrive as `parts` (whole files, about 1/32 of the
  dataset each) and a part is published the moment its last byte has been read;
- while the seeder reads, it sends each part to one first hop only (`parts.first_hop`, rotating over
  the other targets); every other target gets the part from the rest of the swarm; once the origin
  is read the seeder's uplink joins the swarm's;
- a target joins a part on its agent's next pass after the publication woke it, and first fetches
  the part's .torrent from the seeder (then from other holders), each peer server serving
  `metadata_workers` requests at once;
- a copy is verified (the whole digest) on the first pass after its last piece, and counts once the
  controller sees it Ready.

Status writes (node-agent/datasets/{steps,swarm,seeder}.py, cairn/informer.py). Agents read Datasets
and StorageNodes from a shared watch cache, so a pass lists nothing (in both modes below: the caches
replaced the lists, whatever the write pacing). What the apiserver still carries is the writes: each
is a PATCH of the whole Dataset, an object that grows with N, and the new object goes out to every
watch (N agents and the controller), so one write costs object_bytes * (N + 2) of the
`api_bytes_per_s` it can move. Three ways for agents to write (`StatusWrites`):
- paced (today's agent): a target writes its entry at once only when its phase changes (Downloading
  at its first advance, Ready once verified); progress alone every max(5 s, N / 2) s after its own
  last write, about 2 writes a second from all targets together on average, but targets that first
  advanced on the same publication report together, a burst of N every N / 2 s; the seeder reports
  its origin read every 2 s, unpaced, and writes each publication. The writes go through one
  first-in-first-out queue in the order they are made: a node counts as Ready once its Ready write
  has cleared it, and the agents see a publication (and so join its part) only once it has, since
  each watch delivers events in order;
- per-pass (the old agent): every agent writes its entry on every pass and waits for it, so a pass
  takes as long as the apiserver needs for all N writes, and each join and the final Ready wait for
  one such pass;
- on-copy-volumes (a design, not yet the agent): each target writes its report (phase, progress) on
  every pass to the status of its own copy's LocalVolume, a small object whatever N, which only two
  watches receive (the controller's, over every LocalVolume, and its own agent's, by node label); its
  swarm certificate moves there too. The Dataset keeps the target list and aggregates: it grows by a
  target's name only. The seeder's progress goes to its own copy's LocalVolume; its publications stay
  on the Dataset (to every watch). The controller writes the Dataset's summary (its ready count) at
  most every `summary_interval_s`, and only when it changed; a node counts Ready once the first such
  write made after the controller saw its Ready report has cleared the queue. Every write, large or
  small, goes through the same first-in-first-out queue; the LocalVolume progress writes, many and
  tiny, are a steady fluid share of the apiserver (every target every pass, from the start to the last
  Ready: a slight overstatement before each target joins and after it is Ready), so a Dataset write
  or a Ready report waits behind the backlog, which drains only at what that share leaves.

How it is made fast enough for N = 5000 and F = 100 GiB: pieces are not simulated one by one. Each
part is two fluid flows: seeder -> first hop (one receiver), and first hop -> the other N-2 targets
(one flow whose weight is its N-2 receivers: they are interchangeable). Rates are the weighted
max-min fair share of every resource a flow crosses (links, the seeder's and the swarm's uplinks,
CPU), recomputed only at events: a part published, a part joined, a flow done, a flow catching up
with the bytes its source holds, the origin read done, verification begun. A flow to the others may
not run ahead of its first hop by less than one piece per hop of a doubling epidemic
(ceil(log2(N-1)) pieces): that is the pipeline term. So the cost is a few events per part, whatever
N and F. Per-node times come from where each node sits in that epidemic, in the metadata fetch
queue and in the pass cycle.

Upload slots are unlimited and the choker seeds whoever asks (lan_settings), so a link is shared
fairly among the flows that cross it. The session's 1000-connection cap leaves about 1000/parts
peers per part at large N; it lengthens nothing in a fluid model and is reported as a finding.

Left out, on purpose: the first hops' own downlinks are not shared with the other parts they also
receive (it matters only when N-1 is near the part count, and not at all when the host CPU binds);
re-reads of the origin (none happen without failures, so origin bytes are F); the 503 and 404
answers a node collects while it looks for a holder of a .torrent; the controller's own status
writes (its readyCount), which `ready_latency_s` stands for, except on copy volumes, where they are the
summary writes above and `ready_latency_s` is the controller's reaction to a report it has seen; the
apiserver's cost of matching each LocalVolume event against the agents' label selectors (CPU, not
bytes); a watch the apiserver drops as too slow,
and the list that follows; the object's growth during the run (it is as large as N targets make it
from the start). A paced agent whose write waits in the queue loses nothing the model follows: the
publications it would act on wait behind the same queue.

Pure: no I/O, no clock, no randomness (the spreads come from fixed quantiles).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from enum import Enum

GIB = 1024**3
MIB = 1024**2
EPSILON = 1e-9


@dataclass(frozen=True)
class Links:
    """Rates in bytes per second; `goodput` is the share of a link's rate that carries payload."""

    up: float
    down: float
    origin: float
    goodput: float = 1.0


@dataclass(frozen=True)
class Cpu:
    """Work per byte and the cores that do it.

    `shared_host`: every agent runs on one host of `cores` (the test bed); otherwise each node has
    `cores` of its own. A cost of 0 means CPU never binds.
    """

    cores: float
    shared_host: bool
    landed_cpu_s_per_gib: float
    """Everything a byte costs from the wire (origin or peer) to a checked piece on disk, sender's
    share included."""
    verify_cpu_s_per_gib: float
    """The whole-copy digest each target computes once its last piece is in."""


class StatusWrites(Enum):
    """When an agent writes its entry in the Dataset's status."""

    PER_PASS = "per-pass"
    """Every pass, and the pass waits for it (the old agent)."""
    PACED = "paced"
    """Phase changes at once, progress paced to about 2 writes a second per Dataset (steps.report_due)."""
    ON_COPY_VOLUMES = "on-copy-volumes"
    """Every pass, to the target's own copy's LocalVolume; the controller summarises on the Dataset."""


@dataclass(frozen=True)
class ControlPlane:
    start_s: float = 0.0
    """From the Dataset's creation to the seeder's first read: seeder choice, listing, volumes."""
    pass_period_s: float = 2.0
    """An agent's pass runs at least this often (node-agent/main.py) ..."""
    wake_s: float = 0.2
    """... and this soon after a publication wakes it."""
    metadata_fetch_s: float = 0.05
    """One .torrent fetch: a mutual-TLS handshake, the request, the info-hash check."""
    metadata_workers: int = 16
    """Requests one agent's peer server handles at once (its worker pool)."""
    ready_latency_s: float = 0.0
    """From the last node's Ready report to the controller's readyCount N/N; on copy volumes, from the
    controller's seeing a report to the earliest summary write that can carry it."""
    api_bytes_per_s: float = math.inf
    """What the API server can move for one Dataset: each write's PATCH and its watch events."""
    dataset_base_bytes: int = 4096
    dataset_bytes_per_node: int = 0
    """What one target adds to the Dataset object: its name, its status entry, its swarm certificate."""
    dataset_name_bytes_per_node: int = 0
    """What one target adds to the Dataset on copy volumes: its name in the target list, no more."""
    copy_volume_bytes: int = 1536
    """A copy's LocalVolume on copy volumes: spec, phase, the target's report and swarm certificate."""
    copy_volume_watches: int = 2
    """Who receives a LocalVolume write: the controller, and the agent of the node it is on."""
    summary_interval_s: float = 0.2
    """The controller's min_interval between rounds: at most one summary write per round."""
    object_limit_bytes: int = int(1.5 * MIB)
    """etcd's default request limit: a Dataset object past it can no longer be written."""
    status_writes: StatusWrites = StatusWrites.PACED
    progress_writes_per_s: float = 2.0
    """steps.PROGRESS_WRITES_PER_SECOND: progress-only writes from all targets together ..."""
    min_progress_s: float = 5.0
    """... but no node more often than steps.MIN_PROGRESS_SECONDS."""
    seeder_progress_s: float = 2.0
    """seeder.PROGRESS_SECONDS: how often the seeder reports its origin read, unpaced."""


@dataclass(frozen=True)
class SwarmSpec:
    nodes: int
    part_bytes: tuple[int, ...]
    piece_bytes: int
    links: Links
    cpu: Cpu
    control: ControlPlane = field(default_factory=ControlPlane)
    connections_limit: int = 1000
    """libtorrent's per-session connection cap (lan_settings): peers per part shrink as N grows."""

    @property
    def total_bytes(self) -> int:
        return sum(self.part_bytes)


class Kind(Enum):
    ORIGIN = "origin read"
    FIRST_HOP = "seeder to first hop"
    SPREAD = "first hop to the others"
    VERIFY = "whole-copy digest"


@dataclass(frozen=True)
class Demand:
    """One flow as the allocator sees it: resource units per byte per second of per-node rate."""

    key: str
    usage: dict[str, float]
    ceiling: float = math.inf


@dataclass(frozen=True)
class Allocation:
    rates: dict[str, float]
    saturated: frozenset[str]


def allocate(demands: list[Demand], capacity: dict[str, float]) -> Allocation:
    """Weighted max-min fairness by progressive filling: every flow's per-node rate rises together
    until a resource it crosses is full or it reaches its ceiling."""
    rates = {d.key: 0.0 for d in demands}
    left = dict(capacity)
    active = {d.key: d for d in demands}
    saturated: set[str] = set()
    while active:
        step = math.inf
        for resource, room in left.items():
            load = sum(d.usage.get(resource, 0.0) for d in active.values())
            if load > 0:
                step = min(step, max(0.0, room) / load)
        for d in active.values():
            step = min(step, d.ceiling - rates[d.key])
        if math.isinf(step):
            raise ValueError(f"flows {sorted(active)} cross no finite resource and have no ceiling")
        for d in active.values():
            rates[d.key] += step
            for resource, per in d.usage.items():
                left[resource] -= per * step
        full = {
            r for r, room in left.items() if room <= EPSILON * max(1.0, capacity[r]) and math.isfinite(room)
        }
        saturated |= {r for r in full if any(r in d.usage for d in active.values())}
        active = {
            k: d
            for k, d in active.items()
            if (math.isinf(d.ceiling) or rates[k] < d.ceiling - EPSILON * max(1.0, d.ceiling))
            and not (full & d.usage.keys())
        }
    return Allocation(rates, frozenset(saturated))


def metadata_rounds(requesters: int, workers: int) -> list[int]:
    """How many requesters get a part's .torrent in each round of one fetch time: every holder
    (the seeder at first, then everyone served) answers `workers` at once."""
    served: list[int] = []
    holders, waiting = 1, requesters
    while waiting > 0:
        now = min(waiting, workers * holders)
        served.append(now)
        holders += now
        waiting -= now
    return served


def metadata_quantile(requesters: int, workers: int, q: float) -> int:
    """The round (1-based) in which the requester at quantile q of the queue is served."""
    if requesters <= 0:
        return 0
    rank = min(requesters - 1, int(q * requesters))
    seen = 0
    for round_, count in enumerate(metadata_rounds(requesters, workers), start=1):
        seen += count
        if rank < seen:
            return round_
    raise AssertionError("every requester is served in some round")


def dataset_object_bytes(spec: SwarmSpec) -> int:
    control = spec.control
    if control.status_writes is StatusWrites.ON_COPY_VOLUMES:
        return control.dataset_base_bytes + spec.nodes * control.dataset_name_bytes_per_node
    return control.dataset_base_bytes + spec.nodes * control.dataset_bytes_per_node


def largest_writable_nodes(control: ControlPlane) -> float:
    """The N past which the Dataset object no longer fits etcd's limit, in the given mode."""
    per_node = (
        control.dataset_name_bytes_per_node
        if control.status_writes is StatusWrites.ON_COPY_VOLUMES
        else control.dataset_bytes_per_node
    )
    if per_node <= 0:
        return math.inf
    return max(0, control.object_limit_bytes - control.dataset_base_bytes) // per_node


def write_seconds(spec: SwarmSpec) -> float:
    """The apiserver's time for one write to the Dataset: the whole object in as a PATCH, and out to
    the N agents' watches and the controller's."""
    control = spec.control
    if math.isinf(control.api_bytes_per_s):
        return 0.0
    return dataset_object_bytes(spec) * (spec.nodes + 2) / control.api_bytes_per_s


def volume_write_seconds(spec: SwarmSpec) -> float:
    """The apiserver's time for one write to a copy's LocalVolume: in as a PATCH, out to its two
    watches, whatever N."""
    control = spec.control
    if math.isinf(control.api_bytes_per_s):
        return 0.0
    return control.copy_volume_bytes * (control.copy_volume_watches + 1) / control.api_bytes_per_s


def volume_stream_share(spec: SwarmSpec, passes: float) -> float:
    """The share of the apiserver the LocalVolume writes take on copy volumes: every target's report
    every pass and the seeder's every `seeder_progress_s`."""
    control = spec.control
    rate = (spec.nodes - 1) / passes + 1 / control.seeder_progress_s
    return rate * volume_write_seconds(spec)


def progress_interval_s(spec: SwarmSpec) -> float:
    """Seconds between one paced node's progress-only writes (steps.progress_interval)."""
    control = spec.control
    return max(control.min_progress_s, spec.nodes / control.progress_writes_per_s)


def pass_seconds(spec: SwarmSpec) -> float:
    """How long one agent waits between passes.

    Paced, a pass lists nothing (the watch cache) and seldom writes, so it keeps its period. Per
    pass, every agent's pass writes its entry and waits for it: N writes per period, each sent whole
    to N + 1 watches of an object that itself grows with N, so the period grows with the cube of N
    once the apiserver is full. On copy volumes every pass writes too, but each write is a small
    object to two watches: the period would stretch only once N of those fill it.
    """
    control = spec.control
    if control.status_writes is StatusWrites.PACED:
        return control.pass_period_s
    if control.status_writes is StatusWrites.ON_COPY_VOLUMES:
        return max(control.pass_period_s, spec.nodes * volume_write_seconds(spec))
    return max(control.pass_period_s, spec.nodes * write_seconds(spec))


@dataclass
class ApiQueue:
    """The apiserver as one first-in-first-out server of writes, each `write_s` long unless told.

    A watch delivers events in order, so a write's fan-out cannot overtake the ones before it: the
    fan-out bytes are what queue, at the one rate the apiserver moves them. `background` is the share
    a steady stream of small writes takes (the LocalVolume reports, on copy volumes): they are served
    as they come while nothing waits, and queue like the rest behind a backlog, which therefore drains
    only at 1 - background.
    """

    write_s: float
    background: float = 0.0
    free_at: float = -math.inf
    """When the latest write reaches every watch: free_at - at is the work queued ahead of a write
    made at `at` ..."""
    at: float = -math.inf
    """... the latest arrival; background that comes after it queues behind it."""
    served: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.background < 1.0:
            raise ValueError(f"a background share of {self.background:.2f} leaves the apiserver nothing")

    def serve(self, arrival: float, count: int = 1, write_s: float | None = None) -> float:
        """When the last of `count` writes made at `arrival` has reached every watch."""
        if self.background > 0 and arrival > self.at and self.free_at > self.at:
            # Since the last arrival the backlog drained at 1, and the background added to it at
            # its share.
            left = self.free_at - self.at - (1.0 - self.background) * (arrival - self.at)
            start = arrival + max(0.0, left)
        else:
            # A write made before the last arrival (out of order) still queues behind all of it.
            start = max(arrival, self.free_at)
        self.free_at = start + count * (self.write_s if write_s is None else write_s)
        self.at = max(self.at, arrival)
        self.served += count
        return self.free_at


def fifo_clearance(arrivals: list[float], write_s: float) -> list[float]:
    """When each write (in the order given) clears a FIFO apiserver that was idle before the first."""
    queue = ApiQueue(write_s)
    cleared = [0.0] * len(arrivals)
    for i in sorted(range(len(arrivals)), key=arrivals.__getitem__):
        cleared[i] = queue.serve(arrivals[i])
    return cleared


@dataclass(frozen=True)
class StatusLoad:
    """What the Dataset's status writes asked of the apiserver up to the last Ready write."""

    mode: StatusWrites
    object_bytes: int
    write_s: float
    """The apiserver's time for one write (object_bytes * (N + 2) / api_bytes_per_s)."""
    writes: int
    phase_writes: int
    """The targets' Downloading and Ready writes (on copy volumes, to their LocalVolumes)."""
    progress_writes: int
    """The targets' progress-only writes (on copy volumes, the seeder's reports to its own too)."""
    seeder_writes: int
    """The seeder's progress reports and publications (on copy volumes, its publications only)."""
    writes_per_s: float
    fanout_bytes_per_s: float
    """What those writes ask of the apiserver: each write's object times its watches and its PATCH."""
    last_ready_queue_s: float
    """From the making of the Ready write that cleared last to its clearing: its wait behind the
    others and its own write. On copy volumes, from the last node's Ready report to the clearing of
    the summary write that counts it, less the controller's `ready_latency_s`."""
    publication_delay_s: float
    """Paced (and on copy volumes), the longest any publication waited in the queue before the agents
    saw it; per pass, how much later than an unloaded pass each join comes."""
    volume_bytes: int = 0
    """On copy volumes: one copy's LocalVolume ..."""
    volume_write_s: float = 0.0
    """... the apiserver's time for one write of it ..."""
    volume_writes: int = 0
    """... how many the targets and the seeder made ..."""
    volume_share: float = 0.0
    """... the share of the apiserver they took ..."""
    summary_writes: int = 0
    """... and the controller's summary writes to the Dataset."""


@dataclass(frozen=True)
class Outcome:
    all_ready_s: float
    p50_s: float
    p99_s: float
    origin_bytes: int
    peer_bytes_per_target: float
    """Bytes each target other than the seeder gets from peers."""
    seeder_upload_bytes: float
    origin_read_s: float
    last_published_s: float
    pass_s: float
    metadata_s: float
    """The median node's wait for one part's .torrent."""
    dataset_object_bytes: int
    feasible: bool
    saturated_s: dict[str, float]
    bottleneck: str
    findings: tuple[str, ...]
    status: StatusLoad


@dataclass
class _PacedWrites:
    """The paced writes to one Dataset, fed to the apiserver's queue in the order they are made.

    Known ahead: the seeder's reports (every `seeder_s` until the origin is read) and each group of
    targets' progress writes (every `progress_s` after their first advance). The run adds the
    publications, and the Downloading writes once the first publication is seen.
    """

    queue: ApiQueue
    progress_s: float
    seeder_s: float
    seeder_next: float
    seeder_until: float = math.inf
    pending: list[tuple[float, int, int]] = field(default_factory=list)
    """(arrival, serial, writes) not yet served."""
    serial: int = 0
    advanced: list[tuple[float, int]] = field(default_factory=list)
    """(first advance, targets): the targets' Downloading writes, by the metadata round they are in."""
    ticks: list[int] = field(default_factory=list)
    emitted_to: float = -math.inf
    """Every progress write before this is in `pending` or served."""
    counts: dict[str, int] = field(default_factory=dict)
    longest_delay: float = 0.0
    """The longest any publication waited in the queue before the agents saw it."""

    def push(self, when: float, writes: int, kind: str) -> None:
        self.serial += 1
        heapq.heappush(self.pending, (when, self.serial, writes))
        self.counts[kind] = self.counts.get(kind, 0) + writes

    def first_advance(self, groups: list[tuple[float, int]]) -> None:
        self.advanced = groups
        self.ticks = [1] * len(groups)
        for when, targets in groups:
            self.push(when, targets, "phase")

    def _emit(self, t: float) -> None:
        while self.seeder_next < min(t, self.seeder_until):
            self.push(self.seeder_next, 1, "seeder")
            self.seeder_next += self.seeder_s
        for g, (first, targets) in enumerate(self.advanced):
            # Valid only before any target is Ready, as it is while parts are still being published.
            while first + self.ticks[g] * self.progress_s < t:
                self.push(first + self.ticks[g] * self.progress_s, targets, "progress")
                self.ticks[g] += 1
        self.emitted_to = max(self.emitted_to, t)

    def publish(self, t: float) -> float:
        """When a publication written at `t` reaches every watch."""
        self._emit(t)
        while self.pending and self.pending[0][0] < t:
            when, _, writes = heapq.heappop(self.pending)
            self.queue.serve(when, writes)
        self.counts["seeder"] = self.counts.get("seeder", 0) + 1
        seen = self.queue.serve(t)
        self.longest_delay = max(self.longest_delay, seen - t)
        return seen


@dataclass
class _VolumeWrites:
    """The writes on copy volumes: the LocalVolume reports as the queue's background, the Dataset's
    publications and summaries as writes in it."""

    queue: ApiQueue
    volume_write_s: float
    longest_delay: float = 0.0
    publications: int = 0
    summaries: int = 0

    def publish(self, t: float) -> float:
        self.publications += 1
        seen = self.queue.serve(t)
        self.longest_delay = max(self.longest_delay, seen - t)
        return seen


@dataclass
class _Flow:
    key: str
    kind: Kind
    part: int
    weight: int
    """Receivers: the flow's byte rate is its per-node rate times this."""
    size: float
    """Bytes each receiver needs."""
    receiver: str
    done: float = 0.0
    finished_at: float | None = None

    @property
    def left(self) -> float:
        return self.size - self.done


@dataclass
class _Run:
    spec: SwarmSpec
    capacity: dict[str, float]
    flows: dict[str, _Flow] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)
    events: list[tuple[float, int, str, int]] = field(default_factory=list)
    serial: int = 0
    published: dict[int, float] = field(default_factory=dict)
    joined: dict[tuple[str, int], float] = field(default_factory=dict)
    origin_done_at: float | None = None
    saturated_s: dict[str, float] = field(default_factory=dict)
    seeder_upload: float = 0.0
    verify_from: float | None = None
    visible: dict[int, float] = field(default_factory=dict)
    """When the agents see each publication: at once, or once it has cleared the apiserver's queue."""
    writes: _PacedWrites | _VolumeWrites | None = None

    def schedule(self, when: float, what: str, part: int = -1) -> None:
        self.serial += 1
        heapq.heappush(self.events, (when, self.serial, what, part))


def _first_hop(spec: SwarmSpec, part: int) -> str:
    return f"fh{part % (spec.nodes - 1)}"


def _depth(spec: SwarmSpec) -> int:
    return max(1, math.ceil(math.log2(max(2, spec.nodes - 1))))


def _capacity(spec: SwarmSpec) -> dict[str, float]:
    links, cpu = spec.links, spec.cpu
    up, down = links.up * links.goodput, links.down * links.goodput
    others = max(0, spec.nodes - 2)
    capacity = {
        "origin link": links.origin * links.goodput,
        "seeder downlink": down,
        "seeder uplink": up,
        "swarm uplink": max(0, spec.nodes - 1) * up,
        "targets' downlinks": others * down,
    }
    for hop in {_first_hop(spec, p) for p in range(len(spec.part_bytes))} if spec.nodes > 1 else ():
        capacity[f"{hop} downlink"] = down
        if not cpu.shared_host:
            capacity[f"{hop} cpu"] = cpu.cores
    if cpu.shared_host:
        capacity["host cpu"] = cpu.cores
    else:
        capacity["seeder cpu"] = cpu.cores
        capacity["targets' cpu"] = others * cpu.cores
    return capacity


def _usage(run: _Run, flow: _Flow) -> Demand:
    spec, cpu = run.spec, run.spec.cpu
    landed = cpu.landed_cpu_s_per_gib / GIB
    w = float(flow.weight)
    usage: dict[str, float] = {}
    if flow.kind is Kind.ORIGIN:
        usage = {"origin link": 1.0, "seeder downlink": 1.0}
        cpu_key = "host cpu" if cpu.shared_host else "seeder cpu"
    elif flow.kind is Kind.FIRST_HOP:
        # Nobody but the seeder holds a part before its first hop has it.
        usage = {"seeder uplink": 1.0, f"{flow.receiver} downlink": 1.0}
        cpu_key = "host cpu" if cpu.shared_host else f"{flow.receiver} cpu"
    elif flow.kind is Kind.SPREAD:
        usage = {"swarm uplink": w, "targets' downlinks": w}
        cpu_key = "host cpu" if cpu.shared_host else "targets' cpu"
    else:
        verify = cpu.verify_cpu_s_per_gib / GIB
        if cpu.shared_host and verify > 0:
            return Demand(flow.key, {"host cpu": w * verify})
        # On its own host a node's digest runs alone once its data is in.
        return Demand(flow.key, {}, cpu.cores / verify if verify > 0 else math.inf)
    if landed > 0:
        usage[cpu_key] = w * landed
    if flow.kind is Kind.SPREAD:
        # The swarm may forward only what its first hop holds, a pipeline's depth of pieces behind.
        source = run.flows.get(f"fh{flow.part}")
        if source is None:
            return Demand(flow.key, usage, 0.0)  # nobody outside the seeder holds a byte of it yet
        lag = min(flow.size, _depth(spec) * spec.piece_bytes)
        # The tolerance is in bytes of a part: an absolute one is below the rounding of byte counts
        # this large, and a gap of a few ulps would neither tie nor let time move.
        if source.finished_at is None and flow.done >= source.done - lag - _tie_bytes(flow.size):
            return Demand(flow.key, usage, -1.0)  # placeholder: tied to its source's rate below
    return Demand(flow.key, usage)


def _tie_bytes(size: float) -> float:
    """How close a flow may come to its source's lag before it counts as tied to it."""
    return EPSILON * max(1.0, size)


def _rates(run: _Run) -> Allocation:
    flows = [run.flows[k] for k in sorted(run.active)]
    demands = [_usage(run, f) for f in flows]
    tied = {d.key for d in demands if d.ceiling < 0}
    ceilings = {d.key: (math.inf if d.key in tied else d.ceiling) for d in demands}
    allocation = Allocation({}, frozenset())
    for _ in range(8):  # a tied flow's ceiling follows its source, which gains what the tie frees
        allocation = allocate([Demand(d.key, d.usage, ceilings[d.key]) for d in demands], dict(run.capacity))
        moved = False
        for key in tied:
            source_rate = allocation.rates.get(f"fh{run.flows[key].part}", 0.0)
            if abs(ceilings[key] - source_rate) > EPSILON * max(1.0, source_rate):
                ceilings[key] = source_rate
                moved = True
        if not moved:
            break
    return allocation


def _start(run: _Run, flow: _Flow, now: float) -> None:
    run.flows[flow.key] = flow
    if flow.size <= 0:
        flow.finished_at = now
        return
    run.active.add(flow.key)


def simulate(spec: SwarmSpec) -> Outcome:
    """Time until all N hold a verified copy, and what held it up."""
    if spec.nodes < 1 or not spec.part_bytes:
        raise ValueError("a swarm needs at least one node and one part")
    control = spec.control
    total = spec.total_bytes
    run = _Run(spec, _capacity(spec))
    passes = pass_seconds(spec)
    others = max(0, spec.nodes - 2)
    feasible = dataset_object_bytes(spec) <= control.object_limit_bytes
    metadata_median = control.metadata_fetch_s * metadata_quantile(
        spec.nodes - 1, control.metadata_workers, 0.5
    )
    join_wait = control.wake_s + (passes - control.pass_period_s)
    ends = [sum(spec.part_bytes[: i + 1]) for i in range(len(spec.part_bytes))]
    write_s = write_seconds(spec)
    if control.status_writes is StatusWrites.PACED and write_s > 0:
        run.writes = _PacedWrites(
            ApiQueue(write_s),
            progress_s=progress_interval_s(spec),
            seeder_s=control.seeder_progress_s,
            seeder_next=control.start_s + control.seeder_progress_s,
        )
    elif control.status_writes is StatusWrites.ON_COPY_VOLUMES:
        # Even with no API limit the controller's pacing of its summary is modelled: it is the
        # controller's, not the apiserver's.
        run.writes = _VolumeWrites(
            ApiQueue(write_s, background=volume_stream_share(spec, passes)), volume_write_seconds(spec)
        )

    t = control.start_s
    _start(run, _Flow("origin", Kind.ORIGIN, -1, 1, float(total), "seeder"), t)
    next_part = 0
    while run.active or run.events:
        allocation = _rates(run) if run.active else Allocation({}, frozenset())
        rates = allocation.rates
        horizon = math.inf
        for key in run.active:
            flow, rate = run.flows[key], rates.get(key, 0.0)
            if rate > EPSILON:
                horizon = min(horizon, flow.left / rate)
                if flow.kind is Kind.ORIGIN and next_part < len(ends):
                    horizon = min(horizon, (ends[next_part] - flow.done) / rate)
                if flow.kind is Kind.SPREAD:
                    source = run.flows.get(f"fh{flow.part}")
                    if source is not None and source.finished_at is None:
                        gap = source.done - min(flow.size, _depth(spec) * spec.piece_bytes) - flow.done
                        closing = rate - rates.get(source.key, 0.0)
                        if gap > _tie_bytes(flow.size) and closing > EPSILON:
                            horizon = min(horizon, gap / closing)
        if run.events:
            horizon = min(horizon, run.events[0][0] - t)
        if math.isinf(horizon):
            raise RuntimeError(f"the model stalled at {t:.1f} s with {sorted(run.active)} waiting")
        horizon = max(0.0, horizon)
        for resource in allocation.saturated:
            run.saturated_s[resource] = run.saturated_s.get(resource, 0.0) + horizon
        for key in list(run.active):
            flow = run.flows[key]
            moved = min(flow.left, rates.get(key, 0.0) * horizon)
            flow.done += moved
            if flow.kind is Kind.FIRST_HOP:
                run.seeder_upload += moved
            if flow.kind is Kind.SPREAD and run.origin_done_at is not None:
                share = run.capacity["seeder uplink"] / max(EPSILON, run.capacity["swarm uplink"])
                run.seeder_upload += moved * flow.weight * share
        t += horizon
        for key in list(run.active):
            flow = run.flows[key]
            if flow.left <= EPSILON * max(1.0, flow.size):
                flow.done, flow.finished_at = flow.size, t
                run.active.discard(key)
                if flow.kind is Kind.ORIGIN:
                    run.origin_done_at = t
                    if isinstance(run.writes, _PacedWrites):
                        run.writes.seeder_until = t
                    # With the origin read the seeder stops choosing whom it sends to.
                    run.capacity["swarm uplink"] += run.capacity["seeder uplink"]
        origin = run.flows["origin"]
        while next_part < len(ends) and origin.done >= ends[next_part] - EPSILON * total:
            run.published[next_part] = t
            seen = run.writes.publish(t) if run.writes is not None else t
            run.visible[next_part] = seen
            if isinstance(run.writes, _PacedWrites) and next_part == 0 and spec.nodes > 1:
                # Each target's first advance, in the metadata round that served it, writes Downloading.
                rounds = metadata_rounds(spec.nodes - 1, control.metadata_workers)
                run.writes.first_advance(
                    [
                        (seen + join_wait + control.metadata_fetch_s * r, count)
                        for r, count in enumerate(rounds, start=1)
                    ]
                )
            if spec.nodes > 1:
                run.schedule(seen + join_wait + control.metadata_fetch_s, "join first hop", next_part)
                if others:
                    run.schedule(seen + join_wait + metadata_median, "join others", next_part)
            next_part += 1
        while run.events and run.events[0][0] <= t + EPSILON:
            _, _, what, part = heapq.heappop(run.events)
            size = float(spec.part_bytes[part]) if part >= 0 else 0.0
            if what == "join first hop":
                _start(run, _Flow(f"fh{part}", Kind.FIRST_HOP, part, 1, size, _first_hop(spec, part)), t)
            elif what == "join others":
                _start(run, _Flow(f"sp{part}", Kind.SPREAD, part, others, size, "targets"), t)
            elif what == "verify":
                run.verify_from = t
                checked = float(total) if spec.cpu.verify_cpu_s_per_gib > 0 else 0.0
                _start(run, _Flow("verify", Kind.VERIFY, -1, spec.nodes - 1, checked, "targets"), t)
        data_flows = [f for f in run.flows.values() if f.kind in (Kind.FIRST_HOP, Kind.SPREAD)]
        everything_joined = len(data_flows) == len(spec.part_bytes) * (2 if others else 1)
        if (
            spec.nodes > 1
            and run.verify_from is None
            and "verify" not in run.flows
            and everything_joined
            and all(f.finished_at is not None for f in data_flows)
            and not any(e[2] == "verify" for e in run.events)
        ):
            # The digest waits for the pass after the last piece: half a period for the middle node.
            run.schedule(t + passes / 2, "verify")
    return _outcome(spec, run, passes, metadata_median, feasible)


def _quantile_offsets(count: int, span: float) -> list[float]:
    """`count` offsets spread evenly over [0, span): where each node sits in a cycle of `span`."""
    return [span * (i + 0.5) / count for i in range(count)]


def _outcome(spec: SwarmSpec, run: _Run, passes: float, metadata_median: float, feasible: bool) -> Outcome:
    control = spec.control
    total = spec.total_bytes
    last = max(run.published.values())
    # The seeder reports Ready in the patch that publishes its last part.
    ready: list[float] = [run.visible[len(spec.part_bytes) - 1]]
    last_ready_queue = 0.0
    written: list[float] = []
    if spec.nodes > 1:
        verify = run.flows["verify"]
        assert verify.finished_at is not None and run.verify_from is not None
        verify_s = max(0.0, verify.finished_at - run.verify_from) if verify.size > 0 else 0.0
        depth = _depth(spec)
        tail_rate = _tail_rate(spec)
        targets = spec.nodes - 1
        hops = sorted({_first_hop(spec, p) for p in range(len(spec.part_bytes))})
        done_by_node: list[float] = []
        spread_done = (
            max((f.finished_at or 0.0) for f in run.flows.values() if f.kind is Kind.SPREAD)
            if (spec.nodes > 2)
            else 0.0
        )
        for hop in hops:
            own = max(
                run.flows[f"fh{p}"].finished_at or 0.0
                for p in range(len(spec.part_bytes))
                if _first_hop(spec, p) == hop
            )
            done_by_node.append(max(own, spread_done))
        rest = targets - len(hops)
        last_part = spec.part_bytes[-1]
        joins = run.visible[len(spec.part_bytes) - 1] + control.wake_s + (passes - control.pass_period_s)
        queue = _coprime_stride(rest) if rest else 1
        for i in range(rest):
            # In a doubling epidemic half the nodes get the last piece in the last generation, a
            # quarter one generation earlier, and so on.
            generation_back = int(math.log2(rest / (rest - i)))
            epidemic = spread_done - min(depth, generation_back) * spec.piece_bytes / tail_rate
            # A node far back in the queue for the last part's .torrent may start it too late to
            # finish with the rest.
            position = ((i * queue) % rest + 0.5) / rest
            fetched = joins + control.metadata_fetch_s * metadata_quantile(
                targets, control.metadata_workers, position
            )
            done_by_node.append(max(epidemic, fetched + last_part / tail_rate))
        offsets = _quantile_offsets(targets, passes)
        # Pair pass phase with epidemic position without correlating them.
        stride = _coprime_stride(targets)
        written = [done + offsets[(i * stride) % targets] + verify_s for i, done in enumerate(done_by_node)]
        if isinstance(run.writes, _PacedWrites):
            cleared, last_ready_queue = _clear_ready_writes(run.writes, written)
            ready.extend(cleared)
        elif run.writes is None:
            ready.extend(written)
    if isinstance(run.writes, _VolumeWrites):
        # The seeder reports Ready to its own copy's LocalVolume as it publishes its last part.
        reports = [run.published[len(spec.part_bytes) - 1], *written]
        ready, last_ready_queue = _count_ready(run.writes, reports, control)
    ordered = sorted(ready)
    # On copy volumes a node counts once the controller's summary carrying it is out: its reaction
    # is already in.
    latency = 0.0 if isinstance(run.writes, _VolumeWrites) else control.ready_latency_s
    all_ready = ordered[-1] + latency
    saturated = {k: round(v, 3) for k, v in sorted(run.saturated_s.items(), key=lambda kv: -kv[1])}
    origin_read = (run.origin_done_at or 0.0) - control.start_s
    status = _status_load(spec, run, passes, ordered[-1], last_ready_queue)
    bottleneck, findings = _explain(spec, run, all_ready, metadata_median, feasible, origin_read, status)
    return Outcome(
        all_ready_s=all_ready if feasible else math.inf,
        p50_s=_nearest_rank(ordered, 50) if feasible else math.inf,
        p99_s=_nearest_rank(ordered, 99) if feasible else math.inf,
        origin_bytes=total,
        peer_bytes_per_target=float(total) if spec.nodes > 1 else 0.0,
        seeder_upload_bytes=run.seeder_upload,
        origin_read_s=origin_read,
        last_published_s=last,
        pass_s=passes,
        metadata_s=metadata_median,
        dataset_object_bytes=dataset_object_bytes(spec),
        feasible=feasible,
        saturated_s=saturated,
        bottleneck=bottleneck,
        findings=findings,
        status=status,
    )


def _clear_ready_writes(writes: _PacedWrites, written: list[float]) -> tuple[list[float], float]:
    """When each target's Ready write, made at `written`, clears the queue, and how long the one
    that cleared last waited: behind what is still queued from the run, the seeder's last reports and
    every target's progress writes until its Ready."""
    arrivals: list[tuple[float, int, int]] = [(when, -1, count) for when, _, count in writes.pending]
    while writes.seeder_next < writes.seeder_until:
        arrivals.append((writes.seeder_next, -1, 1))
        writes.seeder_next += writes.seeder_s
    firsts = [when for when, count in writes.advanced for _ in range(count)]
    step = writes.progress_s
    for node, (first, ready) in enumerate(zip(firsts, written, strict=True)):
        # Progress before `emitted_to` was queued during the run, for every target alike.
        tick = max(1, math.ceil((writes.emitted_to - first) / step))
        while first + tick * step < writes.emitted_to:
            tick += 1
        while first + tick * step < ready:
            arrivals.append((first + tick * step, -1, 1))
            writes.counts["progress"] = writes.counts.get("progress", 0) + 1
            tick += 1
        arrivals.append((ready, node, 1))
    writes.counts["phase"] = writes.counts.get("phase", 0) + len(written)
    writes.pending.clear()
    cleared = [0.0] * len(written)
    last, last_wait = -math.inf, 0.0
    for when, node, count in sorted(arrivals):
        done = writes.queue.serve(when, count)
        if node >= 0:
            cleared[node] = done
            if done >= last:
                last, last_wait = done, done - when
    return cleared, last_wait


def _count_ready(
    writes: _VolumeWrites, reports: list[float], control: ControlPlane
) -> tuple[list[float], float]:
    """On copy volumes, when each node counts Ready: its report, made at `reports`, clears the queue
    to the controller; the controller writes the Dataset's summary at most every
    `summary_interval_s`, the first write made at least `ready_latency_s` after it saw the report
    carrying it; that write clears the queue to every watch. Also how long after the making of its
    report the last node counted, the controller's reaction left out."""
    queue = writes.queue
    counted = [0.0] * len(reports)
    # (when, 0, node) a report made; (when, 1, write) a summary made. A report made at the very
    # moment of a summary is in the queue ahead of it.
    events: list[tuple[float, int, int]] = [(when, 0, node) for node, when in enumerate(reports)]
    heapq.heapify(events)
    carried: list[list[int]] = []  # by summary write, the nodes it counts
    due: list[float] = []  # by summary write, when the controller makes it
    last, last_wait = -math.inf, 0.0
    while events:
        when, kind, index = heapq.heappop(events)
        if kind == 0:
            seen = queue.serve(when, write_s=writes.volume_write_s)
            react = seen + control.ready_latency_s
            # First in, first out: reports are seen in the order they are made, so only the latest
            # write not yet made can still carry this one.
            if due and writes.summaries < len(due) and due[-1] >= react:
                carried[-1].append(index)
                continue
            previous = due[-1] if due else -math.inf
            due.append(max(react, previous + control.summary_interval_s))
            carried.append([index])
            heapq.heappush(events, (due[-1], 1, len(due) - 1))
            continue
        writes.summaries += 1
        out = queue.serve(when)
        for node in carried[index]:
            counted[node] = out
            wait = out - reports[node] - control.ready_latency_s
            if out >= last:
                last, last_wait = out, wait
    return counted, last_wait


def _status_load(
    spec: SwarmSpec, run: _Run, passes: float, last_ready: float, ready_queue: float
) -> StatusLoad:
    control = spec.control
    write_s = write_seconds(spec)
    size = dataset_object_bytes(spec)
    targets = spec.nodes - 1
    span = max(EPSILON, last_ready - control.start_s)
    if isinstance(run.writes, _VolumeWrites):
        volumes = run.writes
        dataset_writes = volumes.publications + volumes.summaries
        # The Ready reports went through the queue one by one; the rest of the LocalVolume writes
        # are its background, at their steady rate.
        reports = volumes.queue.served - dataset_writes
        stream = round(((spec.nodes - 1) / passes + 1 / control.seeder_progress_s) * span)
        volume_writes = stream + reports
        volume_bytes = control.copy_volume_bytes
        fanout = (
            dataset_writes * size * (spec.nodes + 2)
            + volume_writes * volume_bytes * (control.copy_volume_watches + 1)
        ) / span
        return StatusLoad(
            mode=control.status_writes,
            object_bytes=size,
            write_s=write_s,
            writes=dataset_writes + volume_writes,
            phase_writes=2 * targets,
            progress_writes=max(0, volume_writes - 2 * targets),
            seeder_writes=volumes.publications,
            writes_per_s=(dataset_writes + volume_writes) / span,
            fanout_bytes_per_s=fanout,
            last_ready_queue_s=ready_queue,
            publication_delay_s=volumes.longest_delay,
            volume_bytes=volume_bytes,
            volume_write_s=volumes.volume_write_s,
            volume_writes=volume_writes,
            volume_share=volumes.queue.background,
            summary_writes=volumes.summaries,
        )
    if run.writes is not None:
        counts = run.writes.counts
        writes = run.writes.queue.served
        return StatusLoad(
            mode=control.status_writes,
            object_bytes=size,
            write_s=write_s,
            writes=writes,
            phase_writes=counts.get("phase", 0),
            progress_writes=counts.get("progress", 0),
            seeder_writes=counts.get("seeder", 0),
            writes_per_s=writes / span,
            fanout_bytes_per_s=writes / span * size * (spec.nodes + 2),
            last_ready_queue_s=ready_queue,
            publication_delay_s=run.writes.longest_delay,
        )
    if control.status_writes is StatusWrites.PACED:
        # The apiserver is unbounded, so nothing queues: only the writes a paced run makes, counted.
        origin_read = (run.origin_done_at or control.start_s) - control.start_s
        phase = 2 * targets
        seeder = len(spec.part_bytes) + math.floor(origin_read / control.seeder_progress_s)
        return StatusLoad(
            mode=control.status_writes,
            object_bytes=size,
            write_s=write_s,
            writes=phase + seeder,
            phase_writes=phase,
            progress_writes=0,
            seeder_writes=seeder,
            writes_per_s=(phase + seeder) / span,
            fanout_bytes_per_s=(phase + seeder) / span * size * (spec.nodes + 2),
            last_ready_queue_s=0.0,
            publication_delay_s=0.0,
        )
    # Per pass, each agent writes once a pass and waits for it: the queue holds one write per agent.
    rate = spec.nodes / passes
    writes = round(rate * span)
    saturated = spec.nodes * write_s > control.pass_period_s
    return StatusLoad(
        mode=control.status_writes,
        object_bytes=size,
        write_s=write_s,
        writes=writes,
        phase_writes=2 * targets,
        progress_writes=max(0, writes - 2 * targets - len(spec.part_bytes)),
        seeder_writes=len(spec.part_bytes),
        writes_per_s=rate,
        fanout_bytes_per_s=rate * size * (spec.nodes + 2),
        # The old term counts a Ready at its agent's next pass; that pass is late by this much.
        last_ready_queue_s=(spec.nodes - 1) * write_s if saturated else 0.0,
        publication_delay_s=passes - control.pass_period_s,
    )


def _tail_rate(spec: SwarmSpec) -> float:
    """A single node's rate at the end: its downlink, or its CPU on its own host."""
    rate = spec.links.down * spec.links.goodput
    if not spec.cpu.shared_host and spec.cpu.landed_cpu_s_per_gib > 0:
        rate = min(rate, spec.cpu.cores * GIB / spec.cpu.landed_cpu_s_per_gib)
    return rate


def _coprime_stride(count: int) -> int:
    stride = max(1, int(count * 0.618))
    while math.gcd(stride, count) != 1:
        stride += 1
    return stride


def _nearest_rank(ordered: list[float], q: float) -> float:
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def _explain(
    spec: SwarmSpec,
    run: _Run,
    all_ready: float,
    metadata_median: float,
    feasible: bool,
    origin_read: float,
    status: StatusLoad,
) -> tuple[str, tuple[str, ...]]:
    """The resource that held the run up longest, and every other limit worth naming."""
    findings: list[str] = []
    control = spec.control
    size = dataset_object_bytes(spec)
    control_s = _status_write_delay(status)
    on_volumes = control.status_writes is StatusWrites.ON_COPY_VOLUMES
    if not feasible:
        # Queue figures for writes etcd refuses would only mislead; the cost of one is enough.
        per_target = "one name" if on_volumes else "one status entry and one swarm certificate"
        findings.append(
            f"the Dataset object would be {size / MIB:.1f} MiB at N={spec.nodes}, past etcd's "
            f"{control.object_limit_bytes / MIB:.1f} MiB request limit: with {per_target} per "
            f"target, the Dataset can no longer be written at N={spec.nodes}"
            + (
                f" (were it writable, each write would take {status.write_s:.1f} s of the apiserver)"
                if status.write_s > 0
                else ""
            )
        )
    elif on_volumes and not math.isinf(control.api_bytes_per_s):
        # The design's own figures, loaded or not: what it asks of the apiserver is the point.
        findings.append(_copy_volume_finding(spec, status))
    elif control_s > max(1.0, 0.01 * all_ready) and not math.isinf(control.api_bytes_per_s):
        findings.append(_status_write_finding(spec, status))
    parts = len(spec.part_bytes)
    metadata_total = metadata_median
    if metadata_total > 0.05 * max(EPSILON, all_ready / parts):
        findings.append(
            f"metadata fetch: the median node waits {metadata_median:.2f} s for each part's .torrent "
            f"({metadata_quantile(spec.nodes - 1, control.metadata_workers, 1.0)} rounds of "
            f"{control.metadata_workers} per holder)"
        )
    seeder_cpu = run.saturated_s.get("seeder cpu", 0.0)
    if seeder_cpu > 0.1 * all_ready and spec.cpu.landed_cpu_s_per_gib > 0:
        read = spec.cpu.cores / spec.cpu.landed_cpu_s_per_gib * GIB * 8 / 1e9
        findings.append(
            f"seeder CPU: at {spec.cpu.landed_cpu_s_per_gib:g} CPU-s per GiB on {spec.cpu.cores:g} cores "
            f"the seeder lands {read:.1f} Gbit/s, below the origin's "
            f"{spec.links.origin * spec.links.goodput * 8 / 1e9:.1f}; {seeder_cpu:.0f} s of the run"
        )
    seeder_up = run.saturated_s.get("seeder uplink", 0.0)
    if seeder_up > 0.1 * all_ready:
        findings.append(f"seeder fan-out: its uplink to the first hops was full for {seeder_up:.1f} s")
    peers = spec.connections_limit // parts
    if spec.nodes - 1 > peers:
        findings.append(
            f"peer cap: {spec.connections_limit} connections per session over {parts} parts leave "
            f"about {peers} peers per part of the {spec.nodes - 1} others (lan_settings)"
        )
    if run.saturated_s:
        # In the capacity's order, so a tie (the origin link and the seeder's downlink at one rate)
        # names the resource further upstream.
        ordered = [(r, run.saturated_s[r]) for r in run.capacity if r in run.saturated_s]
        resource, held = max(ordered, key=lambda kv: kv[1])
    else:
        resource, held = "none", 0.0
    if not feasible:
        return "Dataset object size (etcd limit)", tuple(findings)
    if control_s > held:
        return "controller/API status writes", tuple(findings)
    if held < 0.3 * all_ready:
        return "latency (pipeline, passes, verification)", tuple(findings)
    findings.insert(
        0, f"{resource} was full for {held:.1f} s of {all_ready:.1f} s (origin read {origin_read:.1f} s)"
    )
    return resource, tuple(findings)


def _status_write_delay(status: StatusLoad) -> float:
    """About what the status writes add to the run: per pass, the stretch of the pass each join and
    the last Ready wait for; paced and on copy volumes, the longest publication's wait and the last
    Ready write's (on copy volumes, the summary's, the round it waited for included)."""
    if status.mode is StatusWrites.PER_PASS:
        return 2 * status.publication_delay_s
    return status.publication_delay_s + max(0.0, status.last_ready_queue_s - status.write_s)


def _status_write_finding(spec: SwarmSpec, status: StatusLoad) -> str:
    control = spec.control
    api = control.api_bytes_per_s
    load = (
        f"{status.writes_per_s:.2f} writes/s on average to the last Ready, "
        f"{status.fanout_bytes_per_s / 1e9:.2f} GB/s of PATCH and fan-out against the apiserver's "
        f"{api / 1e9:g} GB/s ({status.fanout_bytes_per_s / api:.0%})"
    )
    head = (
        f"controller/API status writes ({status.mode.value}): each write PATCHes the whole "
        f"{status.object_bytes / MIB:.2f} MiB Dataset and is sent to {spec.nodes + 1} watches, "
        f"{status.write_s:.2f} s of the apiserver each"
    )
    if status.mode is StatusWrites.PER_PASS:
        return (
            f"{head}; every agent writes every pass and waits for it, so a pass comes every "
            f"{status.publication_delay_s + control.pass_period_s:.0f} s, not every "
            f"{control.pass_period_s:.0f} s: {load}; each write, the last Ready one too, queues "
            f"{status.last_ready_queue_s:.0f} s behind the other agents' (that is the pass), and each "
            "part's join and each Ready wait for such a pass"
        )
    return (
        f"{head}; {status.phase_writes} phase writes (Downloading, Ready), {status.progress_writes} "
        f"progress and {status.seeder_writes} from the seeder (progress, publications) make {load}; "
        f"the last Ready write took {status.last_ready_queue_s:.0f} s to clear the queue, and a "
        f"publication up to {status.publication_delay_s:.0f} s to reach the agents (each watch delivers "
        "events in order), so the joins waited as well"
    )


def _copy_volume_finding(spec: SwarmSpec, status: StatusLoad) -> str:
    control = spec.control
    api = control.api_bytes_per_s
    span = status.writes / max(EPSILON, status.writes_per_s)
    volume_rate = status.volume_writes / span
    volume_bytes_s = volume_rate * status.volume_bytes * (control.copy_volume_watches + 1)
    dataset_bytes_s = status.fanout_bytes_per_s - volume_bytes_s
    largest = largest_writable_nodes(control)
    text = (
        f"status on copy volumes: each target reports every pass to its copy's LocalVolume, "
        f"{status.volume_bytes / 1024:.1f} KiB sent to {control.copy_volume_watches} watches (the "
        f"controller, its agent), {status.volume_write_s * 1e6:.1f} us of the apiserver each: "
        f"{volume_rate:.0f} writes/s, {volume_bytes_s / 1e6:.1f} MB/s ({status.volume_share:.2%} of "
        f"the apiserver); the Dataset, {status.object_bytes / 1024:.0f} KiB (the target list and the "
        f"aggregates), takes {status.seeder_writes} publications and {status.summary_writes} summary "
        f"writes (at most one per {control.summary_interval_s:g} s round), each sent to "
        f"{spec.nodes + 1} watches, {status.write_s * 1e3:.1f} ms of the apiserver: "
        f"{dataset_bytes_s / 1e6:.1f} MB/s; together {status.writes_per_s:.0f} writes/s and "
        f"{status.fanout_bytes_per_s / 1e9:.3f} GB/s of PATCH and fan-out against the apiserver's "
        f"{api / 1e9:g} GB/s ({status.fanout_bytes_per_s / api:.1%}); the last node counted "
        f"{status.last_ready_queue_s:.2f} s after its Ready report (the controller's reaction aside), a "
        f"publication reached the agents at most {status.publication_delay_s:.2f} s after it was made"
    )
    if status.write_s > control.summary_interval_s:
        # The controller does not wait for a write's fan-out before its next round.
        text += (
            f"; a summary write takes longer than a round, so while the ready count changes the "
            f"summaries ask {status.write_s / control.summary_interval_s:.0%} of the apiserver and queue"
        )
    limit = "whatever N" if math.isinf(largest) else f"up to N = {largest:,.0f}"
    return (
        f"{text}; the Dataset stays under etcd's {control.object_limit_bytes / MIB:.1f} MiB {limit} "
        f"(({control.object_limit_bytes} - {control.dataset_base_bytes}) B / "
        f"{control.dataset_name_bytes_per_node} B a name)"
    )
