"""Dataset seeding at N = 100 to 5000: bench/scale/swarm_model.py, calibrated on measured bed runs.

1. Calibration. The model of the test bed (every agent on this host's cores, every link shaped to R)
   is compared with `bench.p2p_seed` runs at N = 2, 4 and 8, read from
   bench/results/p2p_seed_vs_line_rate_n{2,4,8}.json (this bench never starts a bed). Two physical
   parameters are fitted once across the three runs, by minimising the worst relative error: the
   host's CPU-seconds per GiB landed on a node (wire to checked piece on disk, everything the host
   spends on it: TLS, TCP, SHA-256, ext4 on loop disks, the API server) and per GiB of the
   whole-copy digest. Taken from the runs' own breakdowns, not fitted: the start (Dataset created to
   the seeder's first read) and the origin read's goodput (its Mbit/s over R in the least loaded run).
2. Scale. The same model with a node per host, at N = 100, 1000 and 5000 and F = 10 and 100 GiB,
   with the bed's fitted CPU cost on `--node-cores` cores per node and the API server's share
   (`--api-gbyte-s`) for the Dataset's status writes and their watch events, in each of three modes:
   today's paced writes, the old agent's write on every pass, and the design that puts each target's
   report on its own copy's LocalVolume (on-copy-volumes: the Dataset keeps names and a summary); and
   with neither CPU nor API limit (the network alone). `--status-writes` picks the mode the
   percentiles, bottlenecks and findings are given for; the others' times, bottlenecks and own
   findings stand beside them. The fitted CPU cost is the bed's, loop disks and shaping included,
   so it is pessimistic on CPU; the API figure is an assumption, stated in the params.

Results: swarm_model_calibration (worst |predicted/measured - 1| over N = 2, 4, 8; goal ≤ 0.15),
swarm_time_vs_line_rate_1000 (time to all of N = 1000 at F = 100 GiB over F/R, CPU and API
included, in the `--status-writes` mode), swarm_time_vs_line_rate_1000_network_only and
swarm_status_writes_paced_vs_per_pass_1000 (N = 1000, F = 10 GiB, CPU and API included: the paced
time over the per-pass time), swarm_time_vs_line_rate_1000_copy_volumes (as
swarm_time_vs_line_rate_1000, status on copy volumes) and
swarm_status_writes_copy_volumes_vs_paced_1000 (N = 1000, F = 10 GiB, CPU and API included: the time
on copy volumes over the paced time).

`python -m bench.swarm_scale [--node-gbit 25] [--origin-gbit 10] [--node-cores 8] [--api-gbyte-s 3]
[--status-writes paced|per-pass|on-copy-volumes]`
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from bench.common import RESULTS, report
from bench.scale.swarm_model import (
    GIB,
    MIB,
    ControlPlane,
    Cpu,
    Links,
    Outcome,
    StatusWrites,
    SwarmSpec,
    simulate,
)

CALIBRATION_NODES = (2, 4, 8)
CALIBRATION_COMMANDS = [
    f"sudo .venv/bin/python -m bench.p2p_seed --nodes {n} --size-mib 512 --rate 200mbit "
    f"--no-direct --no-raw-swarm --tag _n{n}"
    for n in CALIBRATION_NODES
]
SCALE_NODES = (100, 1000, 5000)
SCALE_SIZES_GIB = (10, 100)
SCALE_FILES = 1024
"""Equal shards: the seeder's parts then hold 32 files each, about F/32."""
PUBLISHED = {
    "kraken": "Uber's Kraken publishes 2,600 hosts pulling a 3 GB image at the configured cap, "
    "p50 10 s and p99 18 s",
    "dragonfly": "Dragonfly publishes a test with 990 nodes pulling 10 GB",
}
"""Other systems' own figures, beside ours as they publish them; no other number of theirs is used."""
STATUS_FINDINGS = ("controller/API status writes", "status on copy volumes", "the Dataset object would be")
"""How the model's findings about status writes begin (bench/scale/swarm_model.py, _explain)."""


@dataclass(frozen=True)
class Measured:
    nodes: int
    seconds: float
    size: int
    rate_bps: float
    files: int
    start_s: float
    origin_mbit: float | None
    ready_latency_s: float
    load: list[float]
    agents_cpu_s: float


def load_calibration() -> list[Measured]:
    """The three measured runs, or an exit that says how to make them."""
    runs = []
    missing = []
    for n in CALIBRATION_NODES:
        path = RESULTS / f"p2p_seed_vs_line_rate_n{n}.json"
        if not path.exists():
            missing.append(str(path.relative_to(RESULTS.parent.parent)))
            continue
        record = json.loads(path.read_text())
        params = record["params"]
        breakdown = params["cairn_breakdown"][0]
        runs.append(
            Measured(
                nodes=params["nodes"],
                seconds=record["value"],
                size=params["size_mib"] * MIB,
                rate_bps=params["size_mib"] * MIB * 8 / record["baseline"],
                files=params["files"],
                start_s=breakdown["origin_fetch_starts_s"],
                origin_mbit=breakdown.get("origin_fetch_mbit"),
                ready_latency_s=breakdown["ready_after_last_verified_s"],
                load=record["host_load_average"],
                agents_cpu_s=params["cairn_cpu"][0]["agents_cpu_s"],
            )
        )
    if missing:
        raise SystemExit(
            "swarm_scale needs measured bench.p2p_seed runs to calibrate against; missing:\n  "
            + "\n  ".join(missing)
            + "\nmake them (as root, one after another, with no other bench running):\n  "
            + "\n  ".join(CALIBRATION_COMMANDS)
        )
    shapes = {(r.size, round(r.rate_bps), r.files) for r in runs}
    if len(shapes) != 1:
        raise SystemExit(
            f"the calibration runs differ in size, rate or files: {sorted(shapes)}; run them alike"
        )
    return runs


def equal_parts(size: int, files: int) -> tuple[int, ...]:
    """The seeder's parts for `files` equal objects, as bench.p2p_seed uploads them."""
    from cairn.node_agent.datasets.parts import plan_parts

    @dataclass(frozen=True)
    class File:
        path: str
        size: int

    sizes = [size // files] * files
    sizes[-1] += size - sum(sizes)
    listing = [File(f"shards/part-{i:04d}.bin", s) for i, s in enumerate(sizes)]
    return tuple(sum(f.size for f in part) for part in plan_parts(listing))


def piece_bytes(size: int) -> int:
    from cairn.node_agent.p2p.session import piece_size_for

    return piece_size_for(size)


# -- calibration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BedFit:
    landed_cpu_s_per_gib: float
    verify_cpu_s_per_gib: float
    start_s: float
    goodput: float
    ready_latency_s: float
    cores: float


def bed_spec(run: Measured, fit: BedFit) -> SwarmSpec:
    rate = run.rate_bps / 8
    return SwarmSpec(
        nodes=run.nodes,
        part_bytes=equal_parts(run.size, run.files),
        piece_bytes=piece_bytes(run.size),
        links=Links(up=rate, down=rate, origin=rate, goodput=fit.goodput),
        cpu=Cpu(fit.cores, True, fit.landed_cpu_s_per_gib, fit.verify_cpu_s_per_gib),
        control=ControlPlane(start_s=fit.start_s, ready_latency_s=fit.ready_latency_s),
    )


def worst_error(runs: list[Measured], fit: BedFit) -> float:
    return max(abs(simulate(bed_spec(r, fit)).all_ready_s / r.seconds - 1) for r in runs)


def fit_bed(runs: list[Measured]) -> BedFit:
    """The two CPU costs that minimise the worst error over all runs at once: a coarse grid, then a
    fine one around its best point."""
    rates = [r.origin_mbit * 1e6 / r.rate_bps for r in runs if r.origin_mbit]
    base = BedFit(
        landed_cpu_s_per_gib=0.0,
        verify_cpu_s_per_gib=0.0,
        start_s=sum(r.start_s for r in runs) / len(runs),
        # The least loaded read: the others were slowed by the CPU, which the model adds itself.
        goodput=min(1.0, max(rates)) if rates else 0.95,
        ready_latency_s=sum(r.ready_latency_s for r in runs) / len(runs),
        cores=float(os.cpu_count() or 1),
    )

    def best(landed: list[float], verify: list[float]) -> BedFit:
        grid = [replace(base, landed_cpu_s_per_gib=k, verify_cpu_s_per_gib=v) for k in landed for v in verify]
        return min(grid, key=lambda fit: worst_error(runs, fit))

    coarse = best([2.0 * i for i in range(1, 31)], [2.0 * i for i in range(0, 11)])
    k, v = coarse.landed_cpu_s_per_gib, coarse.verify_cpu_s_per_gib
    return best(
        [k + 0.5 * i for i in range(-4, 5) if k + 0.5 * i > 0],
        [v + 0.5 * i for i in range(-4, 5) if v + 0.5 * i >= 0],
    )


# -- scale ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetRecord:
    """What the API holds for one target, as today's code writes it."""

    node: str
    entry: dict[str, Any]
    """Its status entry (DatasetNodeStatus on the wire)."""
    swarm_pem: str
    """Its swarm certificate."""


def target_record() -> TargetRecord:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from cairn.api.dataset import DatasetNodeStatus, NodePhase
    from cairn.certificates import issue_certificate
    from cairn.controller.datasets.swarm_authority import SwarmAuthority

    node = "node-0421.rack-17.cluster.example"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)])
    node_pem = issue_certificate(
        name,
        key.public_key(),
        name,
        key,
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365),
        [],
    )
    authority = SwarmAuthority(b"x" * 32)
    uid = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
    ca = authority.ca_certificate(uid, "team-a", "corpus")
    swarm_pem = authority.node_certificate(uid, ca, node, node_pem)
    entry = DatasetNodeStatus(
        phase=NodePhase.DOWNLOADING,
        progress=0.4217,
        bytes_from_origin=0,
        bytes_from_peers=45_298_457_600,
        bytes_uploaded=51_004_293_120,
        peers=31,
        digest="blake3:" + "0" * 64,
        updated_at=datetime.datetime.now(datetime.UTC),
    )
    return TargetRecord(node, entry.to_wire(), swarm_pem)


def target_name_bytes(record: TargetRecord) -> int:
    """Bytes one target's name takes in the Dataset's target list: quoted, and a separator."""
    return len(record.node) + 4


def object_size_per_target(record: TargetRecord) -> int:
    """Bytes one target adds to the Dataset object: its name in the targets, its status entry, its
    swarm certificate. (StorageNodes no longer count: agents read them from a watch cache.)"""
    node = record.node
    return (
        len(json.dumps({node: record.entry}))
        + len(json.dumps({node: record.swarm_pem}))
        + (target_name_bytes(record))
    )


def copy_volume_bytes(record: TargetRecord, size: int) -> int:
    """Bytes of one copy's LocalVolume with the target's report and swarm certificate on it (the
    on-copy-volumes design): the volume the controller creates today, Ready, plus those two."""
    from cairn.api.dataset import dataset_volume_name
    from cairn.api.names import API_GROUP, API_VERSION, DATASET_LABEL, NODE_LABEL, POOL_LABEL
    from cairn.api.volume import LocalVolumeSpec, LocalVolumeStatus, PoolClass, VolumeAccess, VolumePhase
    from cairn.controller.datasets.planner import volume_bytes

    name = dataset_volume_name("team-a", "corpus", record.node)
    spec = LocalVolumeSpec(
        csi_name=name,
        node_name=record.node,
        pool=PoolClass.NVME,
        size_bytes=volume_bytes(size),
        access=VolumeAccess.MOUNT,
        fs_type="ext4",
    )
    status = LocalVolumeStatus(
        phase=VolumePhase.READY,
        volume_group="cairn-nvme",
        logical_volume=name,
        capacity_bytes=volume_bytes(size),
    )
    wire = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "LocalVolume",
        "metadata": {
            "name": name,
            "uid": "0c5e7a1b-2d3f-4e5a-9b6c-7d8e9f0a1b2c",
            "resourceVersion": "184467440",
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {NODE_LABEL: record.node, POOL_LABEL: "nvme", DATASET_LABEL: "team-a/corpus"},
        },
        "spec": spec.to_wire(),
        "status": {**status.to_wire(), "copy": record.entry, "swarmCertificate": record.swarm_pem},
    }
    return len(json.dumps(wire))


def cluster_spec(
    nodes: int,
    size: int,
    args: argparse.Namespace,
    fit: BedFit,
    record: TargetRecord,
    network_only: bool,
    status_writes: StatusWrites,
) -> SwarmSpec:
    node_rate = args.node_gbit * 1e9 / 8
    # With no API limit the objects' sizes count for nothing, not even against etcd's limit.
    per_node = 0 if network_only else object_size_per_target(record)
    name = 0 if network_only else target_name_bytes(record)
    return SwarmSpec(
        nodes=nodes,
        part_bytes=equal_parts(size, SCALE_FILES),
        piece_bytes=piece_bytes(size),
        links=Links(up=node_rate, down=node_rate, origin=args.origin_gbit * 1e9 / 8, goodput=args.goodput),
        cpu=Cpu(
            args.node_cores,
            False,
            0.0 if network_only else fit.landed_cpu_s_per_gib,
            0.0 if network_only else fit.verify_cpu_s_per_gib,
        ),
        control=ControlPlane(
            start_s=fit.start_s,
            ready_latency_s=fit.ready_latency_s,
            api_bytes_per_s=math.inf if network_only else args.api_gbyte_s * 1e9,
            dataset_bytes_per_node=per_node,
            dataset_name_bytes_per_node=name,
            copy_volume_bytes=copy_volume_bytes(record, size),
            # The network alone is one baseline for every mode: with no API limit they would differ
            # only by the controller's summary round on copy volumes.
            status_writes=StatusWrites.PACED if network_only else status_writes,
        ),
    )


def seconds(value: float) -> str:
    return "fails" if math.isinf(value) else f"{value:.1f}"


def finite(value: float) -> float | None:
    """A time for the JSON record: None where the model says the run cannot finish."""
    return None if math.isinf(value) else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--node-gbit", type=float, default=25.0, help="each node's NIC, each way (25)")
    parser.add_argument("--origin-gbit", type=float, default=10.0, help="R, the origin's rate (10)")
    parser.add_argument("--goodput", type=float, default=0.95, help="payload share of a link's rate (0.95)")
    parser.add_argument("--node-cores", type=float, default=8.0, help="cores a node's agent may use (8)")
    parser.add_argument(
        "--api-gbyte-s",
        type=float,
        default=3.0,
        help="GB/s the API server moves for one Dataset's writes and their watch events (3)",
    )
    parser.add_argument(
        "--status-writes",
        type=StatusWrites,
        choices=list(StatusWrites),
        default=StatusWrites.PACED,
        metavar="{" + ",".join(m.value for m in StatusWrites) + "}",
        help="when agents write their status entry: paced (today's agent), per-pass (the old one) or "
        "on-copy-volumes (each to its own copy's LocalVolume, a design); "
        "the mode the percentiles, bottlenecks and findings are given for (paced)",
    )
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs = load_calibration()
    fit = fit_bed(runs)

    print("calibration: the bed model against measured bench.p2p_seed runs")
    print(f"  {'N':>3} {'measured s':>11} {'predicted s':>12} {'error':>7}  {'load then':<16} bottleneck")
    calibration: list[dict[str, Any]] = []
    for run in runs:
        outcome = simulate(bed_spec(run, fit))
        error = outcome.all_ready_s / run.seconds - 1
        calibration.append(
            {
                "nodes": run.nodes,
                "measured_s": round(run.seconds, 1),
                "predicted_s": round(outcome.all_ready_s, 1),
                "error": round(error, 3),
                "load_after_run": run.load,
                "agents_cpu_s_per_node_gib": round(run.agents_cpu_s / (run.nodes * run.size / GIB), 1),
                "bottleneck": outcome.bottleneck,
            }
        )
        load = " ".join(str(x) for x in run.load)
        print(
            f"  {run.nodes:>3} {run.seconds:>11.1f} {outcome.all_ready_s:>12.1f} {error:>+7.1%}  {load:<16} "
            f"{outcome.bottleneck}"
        )
    worst = max(abs(c["error"]) for c in calibration)
    # Two parameters over three runs fit closely by construction; a run the fit never saw says more.
    print("  held out: fitted on the other two runs, predicting this one")
    for row, run in zip(calibration, runs, strict=True):
        held_fit = fit_bed([r for r in runs if r is not run])
        predicted = simulate(bed_spec(run, held_fit)).all_ready_s
        row["held_out_predicted_s"] = round(predicted, 1)
        row["held_out_error"] = round(predicted / run.seconds - 1, 3)
        row["held_out_fit"] = [held_fit.landed_cpu_s_per_gib, held_fit.verify_cpu_s_per_gib]
        print(
            f"  {run.nodes:>3} {run.seconds:>11.1f} {predicted:>12.1f} {row['held_out_error']:>+7.1%}  "
            f"fit {held_fit.landed_cpu_s_per_gib:g} and {held_fit.verify_cpu_s_per_gib:g} CPU-s per GiB"
        )
    fitted = {
        "host_cpu_s_per_gib_landed": fit.landed_cpu_s_per_gib,
        "host_cpu_s_per_gib_verified": fit.verify_cpu_s_per_gib,
    }
    measured_inputs = {
        "start_s": round(fit.start_s, 2),
        "origin_goodput": round(fit.goodput, 3),
        "ready_latency_s": round(fit.ready_latency_s, 2),
        "host_cores": fit.cores,
    }
    print(f"  fitted once over all three: {fitted}; taken from the runs: {measured_inputs}")

    record = target_record()
    per_node, name = object_size_per_target(record), target_name_bytes(record)
    volume = {size_gib: copy_volume_bytes(record, size_gib * GIB) for size_gib in SCALE_SIZES_GIB}
    mode: StatusWrites = args.status_writes
    others = [m for m in StatusWrites if m is not mode]

    def model(nodes: int, size: int, network_only: bool = False, writes: StatusWrites = mode) -> Outcome:
        return simulate(cluster_spec(nodes, size, args, fit, record, network_only, writes))

    print(
        f"\nscale: {args.node_gbit:g} Gbit/s per node each way, origin R = {args.origin_gbit:g} Gbit/s, "
        f"goodput {args.goodput:g}, {SCALE_FILES} equal files; 'cpu+api': the bed's CPU cost per GiB on "
        f"{args.node_cores:g} cores per node and {args.api_gbyte_s:g} GB/s of API server (the Dataset object "
        f"grows {per_node} B per target, or {name} B on copy volumes, where each copy's LocalVolume is "
        f"about {max(volume.values())} B), status writes {mode.value} (p50, p99, bottleneck) and "
        f"{' and '.join(m.value for m in others)} beside them; 'network': links and the passes' "
        "latencies, no CPU or API limit"
    )
    header = (
        f"  {'N':>5} {'F GiB':>6} {'F/R s':>7} {'cpu+api s':>10} {'x F/R':>6} {'p50 s':>7} {'p99 s':>7} "
        + " ".join(f"{m.value + ' s':>{max(10, len(m.value) + 2)}}" for m in others)
        + f" {'network s':>10} {'x F/R':>6} {'origin/F':>8}  bottleneck (cpu+api)"
    )
    print(header)
    scale: list[dict[str, Any]] = []
    outcomes: dict[tuple[int, int], tuple[Outcome, Outcome]] = {}
    by_mode: dict[tuple[int, int, StatusWrites], Outcome] = {}
    for size_gib in SCALE_SIZES_GIB:
        for nodes in SCALE_NODES:
            size = size_gib * GIB
            full = model(nodes, size)
            beside = {m: model(nodes, size, writes=m) for m in others}
            net = model(nodes, size, network_only=True)
            outcomes[(nodes, size_gib)] = (full, net)
            by_mode[(nodes, size_gib, mode)] = full
            for m, outcome in beside.items():
                by_mode[(nodes, size_gib, m)] = outcome
            line_rate = size / (args.origin_gbit * 1e9 / 8)
            modes: dict[str, Any] = {}
            for m, outcome in beside.items():
                key = m.value.replace("-", "_")
                modes[f"{key}_all_ready_s"] = finite(outcome.all_ready_s)
                modes[f"{key}_bottleneck"] = outcome.bottleneck
                # The rest of a mode's findings differ from the given mode's only in their figures.
                modes[f"{key}_status_findings"] = [
                    f for f in outcome.findings if f.startswith(STATUS_FINDINGS)
                ]
            scale.append(
                {
                    "nodes": nodes,
                    "size_gib": size_gib,
                    "line_rate_s": round(line_rate, 1),
                    "status_writes": mode.value,
                    "all_ready_s": finite(full.all_ready_s),
                    "p50_s": finite(full.p50_s),
                    "p99_s": finite(full.p99_s),
                    **modes,
                    "network_only_p50_s": round(net.p50_s, 1),
                    "network_only_p99_s": round(net.p99_s, 1),
                    "network_only_s": round(net.all_ready_s, 1),
                    "origin_bytes_over_f": full.origin_bytes / size,
                    "peer_bytes_per_target_over_f": full.peer_bytes_per_target / size,
                    "seeder_upload_over_f": round(full.seeder_upload_bytes / size, 2),
                    "pass_s": round(full.pass_s, 1),
                    "dataset_object_mib": round(full.dataset_object_bytes / MIB, 2),
                    "status_writes_per_s": round(full.status.writes_per_s, 2),
                    "status_fanout_gbyte_s": round(full.status.fanout_bytes_per_s / 1e9, 2),
                    "last_ready_write_queue_s": round(full.status.last_ready_queue_s, 1),
                    "publication_delay_s": round(full.status.publication_delay_s, 1),
                    "bottleneck": full.bottleneck,
                    "bottleneck_network_only": net.bottleneck,
                    "findings": list(full.findings),
                }
            )
            ratio = full.all_ready_s / line_rate
            print(
                f"  {nodes:>5} {size_gib:>6} {line_rate:>7.1f} {seconds(full.all_ready_s):>10} "
                f"{'-' if math.isinf(ratio) else f'{ratio:.2f}':>6} {seconds(full.p50_s):>7} "
                f"{seconds(full.p99_s):>7} "
                + " ".join(
                    f"{seconds(o.all_ready_s):>{max(10, len(m.value) + 2)}}" for m, o in beside.items()
                )
                + f" {net.all_ready_s:>10.1f} {net.all_ready_s / line_rate:>6.2f} "
                f"{full.origin_bytes / size:>8.2f}  {full.bottleneck}"
            )
    print(f"\nwhere the model finds limits (cpu+api, status writes {mode.value}):")
    for row in scale:
        for finding in row["findings"]:
            print(f"  N={row['nodes']}, F={row['size_gib']} GiB: {finding}")
    for m in others:
        key = m.value.replace("-", "_")
        print(f"\nwith status writes {m.value} instead: the bottleneck, and what the status writes ask")
        for row in scale:
            print(f"  N={row['nodes']}, F={row['size_gib']} GiB: [{row[f'{key}_bottleneck']}]")
            for finding in row[f"{key}_status_findings"]:
                print(f"    {finding}")
    print("\npublished elsewhere, as their authors state them (their settings are not ours):")
    for text in PUBLISHED.values():
        print(f"  {text}")
    shapes = []
    for system, nodes, size in (("kraken", 2600, 3 * 10**9), ("dragonfly", 990, 10 * 10**9)):
        full = model(nodes, size)
        net = model(nodes, size, network_only=True)
        volumes = model(nodes, size, writes=StatusWrites.ON_COPY_VOLUMES)
        shapes.append(
            {
                "shape_of": system,
                "nodes": nodes,
                "size_bytes": size,
                "status_writes": mode.value,
                "cairn_model_s": finite(full.all_ready_s),
                "cairn_model_p50_s": finite(full.p50_s),
                "cairn_model_p99_s": finite(full.p99_s),
                "cairn_model_network_only_s": round(net.all_ready_s, 1),
                "cairn_model_network_only_p50_s": round(net.p50_s, 1),
                "cairn_model_network_only_p99_s": round(net.p99_s, 1),
                "bottleneck": full.bottleneck,
                "cairn_model_copy_volumes_s": finite(volumes.all_ready_s),
                "cairn_model_copy_volumes_p50_s": finite(volumes.p50_s),
                "cairn_model_copy_volumes_p99_s": finite(volumes.p99_s),
                "bottleneck_copy_volumes": volumes.bottleneck,
            }
        )
        print(
            f"  the model, our setting, {system}'s shape (N={nodes}, {size / 1e9:g} GB): cpu+api "
            + (
                "fails"
                if math.isinf(full.all_ready_s)
                else f"{full.all_ready_s:.1f} s (p50 {full.p50_s:.1f}, p99 {full.p99_s:.1f})"
            )
            + f" [{full.bottleneck}]; on copy volumes {seconds(volumes.all_ready_s)} s (p50 "
            f"{seconds(volumes.p50_s)}, p99 {seconds(volumes.p99_s)}) [{volumes.bottleneck}]; network "
            f"{net.all_ready_s:.1f} s (p50 {net.p50_s:.1f}, p99 {net.p99_s:.1f})"
        )

    params: dict[str, Any] = {
        "calibration": calibration,
        "fitted": fitted,
        "measured_inputs": measured_inputs,
        "calibration_commands": CALIBRATION_COMMANDS,
        "scale_setting": {
            "node_gbit": args.node_gbit,
            "origin_gbit": args.origin_gbit,
            "goodput": args.goodput,
            "node_cores": args.node_cores,
            "api_gbyte_s": args.api_gbyte_s,
            "status_writes": mode.value,
            "files": SCALE_FILES,
            "dataset_bytes_per_target": per_node,
            "dataset_bytes_per_target_on_copy_volumes": name,
            "copy_volume_bytes": {f"{g} GiB": b for g, b in volume.items()},
            "summary_interval_s": ControlPlane().summary_interval_s,
            "cpu_note": "the bed's fitted host cost per GiB (loop disks, tbf, the API server included): "
            "pessimistic for a real node",
        },
        "scale": scale,
        "published_elsewhere": PUBLISHED,
        "cairn_model_at_their_shapes": shapes,
        "load_average_at_start": load_at_start,
    }
    report("swarm_model_calibration", worst, 1.0, "worst |predicted/measured - 1|", params, goal="≤0.15")
    full, net = outcomes[(1000, 100)]
    line_rate = 100 * GIB / (args.origin_gbit * 1e9 / 8)
    report(
        "swarm_time_vs_line_rate_1000",
        full.all_ready_s,
        line_rate,
        "s",
        params,
        goal=f"report (N=1000, F=100 GiB; CPU at the bed's cost and the API server included, {mode.value} "
        "status writes)",
    )
    report(
        "swarm_time_vs_line_rate_1000_network_only",
        net.all_ready_s,
        line_rate,
        "s",
        params,
        goal="report (N=1000, F=100 GiB; links only)",
    )
    paced, per_pass = by_mode[(1000, 10, StatusWrites.PACED)], by_mode[(1000, 10, StatusWrites.PER_PASS)]
    report(
        "swarm_status_writes_paced_vs_per_pass_1000",
        paced.all_ready_s,
        per_pass.all_ready_s,
        "s",
        params,
        goal="report (N=1000, F=10 GiB, CPU and API included; paced status writes over one every pass)",
    )
    volumes_full = by_mode[(1000, 100, StatusWrites.ON_COPY_VOLUMES)]
    report(
        "swarm_time_vs_line_rate_1000_copy_volumes",
        volumes_full.all_ready_s,
        line_rate,
        "s",
        params,
        goal="report (N=1000, F=100 GiB; CPU at the bed's cost and the API server included, status on "
        "copy volumes)",
    )
    volumes_small = by_mode[(1000, 10, StatusWrites.ON_COPY_VOLUMES)]
    report(
        "swarm_status_writes_copy_volumes_vs_paced_1000",
        volumes_small.all_ready_s,
        paced.all_ready_s,
        "s",
        params,
        goal="report (N=1000, F=10 GiB, CPU and API included; status on copy volumes over paced writes)",
    )
    if worst > 0.15:
        print(f"the model misses a measured run by {worst:.1%}, more than 15%", file=sys.stderr)


if __name__ == "__main__":
    main()
