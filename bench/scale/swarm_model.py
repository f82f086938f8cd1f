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
- every pass writes the agent's own entry in the Dataset's status, so each write is one PATCH of an
  object that grows with N and one watch event sent to every agent; a copy is verified (the whole
  digest) on the first pass after its last piece, and counts once the controller sees it Ready.

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
answers a node collects while it looks for a holder of a .torrent.

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
    """From the last node's Ready report to the controller's readyCount N/N."""
    api_bytes_per_s: float = math.inf
    """What the API server can move for one Dataset's agents (reads, writes and watch events)."""
    dataset_base_bytes: int = 4096
    dataset_bytes_per_node: int = 0
    """What one target adds to the Dataset object: its name, its status entry, its swarm certificate."""
    storage_node_bytes: int = 0
    """One StorageNode object, listed by every pass."""
    storage_node_lists_per_pass: int = 2
    object_limit_bytes: int = int(1.5 * MIB)
    """etcd's default request limit: a Dataset object past it can no longer be written."""


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
    return spec.control.dataset_base_bytes + spec.nodes * spec.control.dataset_bytes_per_node


def pass_seconds(spec: SwarmSpec) -> float:
    """How long one agent waits between passes once the API server is the limit.

    Every pass lists the Datasets and the StorageNodes and writes one status entry, which the API
    server then sends, whole object, to every agent's watch: N passes per period, each sending N
    copies of an object that itself grows with N, so the load grows with the cube of N.
    """
    control = spec.control
    if math.isinf(control.api_bytes_per_s):
        return control.pass_period_s
    dataset = dataset_object_bytes(spec)
    per_pass = (
        dataset * (spec.nodes + 2)  # the list, the patch, and the watch event to every agent
        + control.storage_node_lists_per_pass * spec.nodes * control.storage_node_bytes
    )
    return max(control.pass_period_s, spec.nodes * per_pass / control.api_bytes_per_s)


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
        if source.finished_at is None and flow.done >= source.done - lag - EPSILON:
            return Demand(flow.key, usage, -1.0)  # placeholder: tied to its source's rate below
    return Demand(flow.key, usage)


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
                        if gap > EPSILON and closing > EPSILON:
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
                    # With the origin read the seeder stops choosing whom it sends to.
                    run.capacity["swarm uplink"] += run.capacity["seeder uplink"]
        origin = run.flows["origin"]
        while next_part < len(ends) and origin.done >= ends[next_part] - EPSILON * total:
            run.published[next_part] = t
            if spec.nodes > 1:
                run.schedule(t + join_wait + control.metadata_fetch_s, "join first hop", next_part)
                if others:
                    run.schedule(t + join_wait + metadata_median, "join others", next_part)
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
    ready: list[float] = [last]  # the seeder reports Ready in the patch that publishes its last part
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
        joins = last + control.wake_s + (passes - control.pass_period_s)
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
        for i, done in enumerate(done_by_node):
            wait = offsets[(i * stride) % targets]
            ready.append(done + wait + verify_s)
    ordered = sorted(ready)
    all_ready = ordered[-1] + control.ready_latency_s
    saturated = {k: round(v, 3) for k, v in sorted(run.saturated_s.items(), key=lambda kv: -kv[1])}
    origin_read = (run.origin_done_at or 0.0) - control.start_s
    bottleneck, findings = _explain(spec, run, all_ready, passes, metadata_median, feasible, origin_read)
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
    passes: float,
    metadata_median: float,
    feasible: bool,
    origin_read: float,
) -> tuple[str, tuple[str, ...]]:
    """The resource that held the run up longest, and every other limit worth naming."""
    findings: list[str] = []
    control = spec.control
    size = dataset_object_bytes(spec)
    if not feasible:
        findings.append(
            f"the Dataset object would be {size / MIB:.1f} MiB at N={spec.nodes}, past etcd's "
            f"{control.object_limit_bytes / MIB:.1f} MiB request limit: its status (one entry and one "
            "swarm certificate per target) can no longer be written"
        )
    if passes > control.pass_period_s * 1.01:
        findings.append(
            f"controller/API status writes: every agent's pass writes the {size / MIB:.2f} MiB Dataset "
            f"object and each write goes to {spec.nodes} watches, so a pass comes every {passes:.0f} s, "
            f"not every {control.pass_period_s:.0f} s; each part's join and the final Ready wait for one"
        )
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
    control_s = 2 * (passes - control.pass_period_s)
    if control_s > held:
        return "controller/API status writes", tuple(findings)
    if held < 0.3 * all_ready:
        return "latency (pipeline, passes, verification)", tuple(findings)
    findings.insert(
        0, f"{resource} was full for {held:.1f} s of {all_ready:.1f} s (origin read {origin_read:.1f} s)"
    )
    return resource, tuple(findings)
