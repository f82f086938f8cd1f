"""Data ready before the GPUs: a trainer beside a background prefetch, and two jobs pipelined.

The bed: two simulated nodes, each with one loop disk, a real node agent, the real controller, the
real kube-scheduler and the chart's admission policies that gate pods naming a Dataset; the origin
is MinIO in a network namespace of its own. Every link, the origin's too, is shaped to R with tbf.

The origin stands for a remote object store: on a real node it would not share the node's cores,
so here its MinIO runs at nice 19 (in every phase alike), or the trainer would be measured against
the origin's CPU and not against Cairn's.

The trainer is a process reading its own dataset from the node's copy in batches of 4 MiB with
O_DIRECT (the page cache would hide the disk), each batch then hashed twice with SHA-256 as the
stand-in for decoding and feeding a GPU: it uses one core and the disk, as a data loader does.

Results, each against a baseline from the same run:
1. prefetch_interference: the trainer's batches per second while the next job's Dataset (priority
   Background, capped at C per node) seeds onto the same nodes, over its rate on idle nodes (the
   mean of a window before and one after). Goal >= 0.9. The window opens SETTLE_S after the
   seeder's first origin byte and must close before the copy is Ready, or the run says so; the
   rate in the first SETTLE_S is in params. For context, the same with a Dataset of priority
   Normal from its first byte (prefetch_interference_normal, no goal).
2. pipeline_makespan: two jobs, each a gated pod naming its Dataset and then `--train-s` of
   training (a fixed number of batches, counted on idle nodes). Run once in sequence (create the
   Dataset and the pod, wait for the scheduler to bind the pod, train; then the second job), and
   once pipelined (the second job's Background Dataset and pod are created as the first starts
   training). D is the sequential run's mean time from creating a Dataset to its pod's binding.
   value = pipelined makespan / sequential makespan; baseline = the ideal (D+2T)/(2D+2T), T the
   mean training time of the sequential run. Goal ratio <= 1.1.

Run as root: `python -m bench.prefetch [--rate 1gbit] [--size-mib 256] [--cap-mib 24] [--train-s 25]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.p2p_seed import NAMESPACE, SECRET
from bench.p2p_seed.bed import Swarm, start_origin, start_swarm, stop_cairn, upload_dataset, wait_for_pools
from cairn.units import MiB

BATCH = 4 * MiB
HASH_PASSES = 2
WINDOW_S = 8.0
SETTLE_S = 3.0
"""The window opens this long after the seeder's first origin byte: past carving, formatting and
mounting the copies' volumes, which happen once per Dataset, not per byte (both are reported)."""
DATASETS = ("train", "next", "normal", "seq-a", "seq-b", "pipe-a", "pipe-b")


# -- the trainer ----------------------------------------------------------------------------------


def trainer_main(directory: Path, seconds: float, batches: int) -> None:
    """Read batches until `seconds` pass or `batches` are done; print what it did as JSON."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.stat().st_size >= BATCH)
    if not files:
        raise SystemExit(f"trainer: no file of {BATCH} bytes or more under {directory}")
    descriptors = [(os.open(p, os.O_RDONLY | os.O_DIRECT), p.stat().st_size // BATCH) for p in files]
    buffer = mmap.mmap(-1, BATCH)  # page aligned, as O_DIRECT requires
    done, started = 0, time.monotonic()
    position = 0
    while (batches and done < batches) or (not batches and time.monotonic() - started < seconds):
        descriptor, count = descriptors[position % len(descriptors)]
        offset = (position // len(descriptors) % count) * BATCH
        read = os.preadv(descriptor, [buffer], offset)
        for _ in range(HASH_PASSES):
            hashlib.sha256(memoryview(buffer)[:read])
        done += 1
        position += 1
    elapsed = time.monotonic() - started
    print(json.dumps({"batches": done, "seconds": elapsed, "rate": done / elapsed}))


def train(directory: Path, *, seconds: float = 0.0, batches: int = 0) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.prefetch", "--trainer", str(directory)]
    argv += ["--batches", str(batches)] if batches else ["--seconds", str(seconds)]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


# -- the bed ------------------------------------------------------------------------------------------


@dataclass
class Rig:
    swarm: Swarm
    cap: int
    scheduler: Any = None

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.swarm.nodes]

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.swarm.bed.control_plane.kubectl(*args, input_text=input_text, check=check).stdout

    def create_dataset(self, name: str, *, background: bool) -> float:
        from tests.testbed.datasets import s3_dataset

        fields: dict[str, Any] = (
            {"priority": "Background", "backgroundBytesPerSecond": self.cap} if background else {}
        )
        url = f"s3://{self.swarm.bucket}/{name}/data"
        manifest = s3_dataset(name, NAMESPACE, url, self.swarm.origin.endpoint, SECRET, self.names, **fields)
        self.kubectl("create", "-f", "-", input_text=json.dumps(manifest))
        return time.monotonic()

    def create_pod(self, name: str, dataset: str) -> None:
        from tests.testbed.datasets import pod_waiting_for

        self.kubectl("create", "-f", "-", input_text=json.dumps(pod_waiting_for(name, NAMESPACE, dataset)))

    def wait_bound(self, pod: str, timeout: float = 600.0) -> str:
        """The node the scheduler bound the pod to, once the gate opened."""
        from kubernetes import client

        from tests.testbed.waiting import wait_until

        core = client.CoreV1Api(self.swarm.bed.control_plane.api_client())
        bound: list[str] = []

        def scheduled() -> bool:
            node = core.read_namespaced_pod(pod, NAMESPACE).spec.node_name
            bound.extend([node] if node else [])
            return bool(node)

        wait_until(scheduled, timeout, f"pod {pod} bound to a node", context=self.swarm.log_tails)
        return bound[0]

    def phase(self, name: str) -> dict[str, Any]:
        return self.swarm.dataset(name).get("status", {})

    def wait_ready(self, name: str, timeout: float = 600.0, seen: dict[str, float] | None = None) -> float:
        """When the Dataset was Ready on every node; `seen` gets each node's first Ready moment."""
        from tests.testbed.waiting import wait_until

        def ready() -> bool:
            status = self.phase(name)
            for node, report in status.get("nodes", {}).items():
                if seen is not None and report.get("phase") == "Ready":
                    seen.setdefault(node, time.monotonic())
            return status.get("phase") == "Ready"

        wait_until(ready, timeout, f"dataset {name} Ready on every node", context=self.swarm.log_tails)
        return time.monotonic()

    def wait_reading(self, name: str, timeout: float = 300.0) -> None:
        """Until the seeder has read some of the origin: the prefetch is under way."""
        from tests.testbed.waiting import wait_until

        def reading() -> bool:
            status = self.phase(name)
            return status.get("bytesFromOrigin", 0) > 0 or any(
                n.get("bytesFromOrigin", 0) > 0 for n in status.get("nodes", {}).values()
            )

        wait_until(reading, timeout, f"dataset {name} reading its origin", context=self.swarm.log_tails)

    def delete(self, *objects: str) -> None:
        self.kubectl("delete", *objects, "-n", NAMESPACE, "--timeout=180s", "--wait=true", check=False)

    def metered(self, directory: Path, seconds: float) -> dict[str, Any]:
        """`train` for `seconds`, with the CPU each part of the bed used meanwhile."""
        from bench.p2p_seed.measure import CpuMeter

        groups = self.swarm.pids() | {
            "control_plane": [p.pid for p in self.swarm.bed.control_plane.processes],
            "scheduler": [self.scheduler.pid] if self.scheduler else [],
        }
        meter = CpuMeter(groups).start()
        done = train(directory, seconds=seconds)
        return {**done, "cpu": meter.stop()}

    def copy(self, dataset: str, node: str) -> Path:
        return self.swarm.workdir / "cairn" / "state" / node / "datasets" / NAMESPACE / dataset / "data"


@contextmanager
def running_rig(args: argparse.Namespace, size: int) -> Iterator[Rig]:

    from cairn.controller.datasets.planner import volume_bytes
    from tests.testbed.chart import dataset_gate_policies, install_dataset_gate
    from tests.testbed.kube_components import open_to_the_scheduler, start_scheduler
    from tests.testbed.network import Shaping

    from .common import bench_bed

    link = Shaping(rate=args.rate)
    with bench_bed(with_s3=False) as bed:
        workdir = bed.workdir / "prefetch"
        origin = start_origin(bed, workdir / "origin")
        swarm: Swarm | None = None
        rig: Rig | None = None
        try:
            bucket = "bench-prefetch"
            for thread in os.listdir(f"/proc/{origin.process.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(thread), 19)
            upload_dataset(origin, bucket, DATASETS[0], size, args.files)
            s3 = origin.client()
            for name in DATASETS[1:]:
                for index in range(args.files):
                    key = f"{name}/data/shards/part-{index:04d}.bin"
                    s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size // args.files))
            origin.node.shape(link)
            needed = volume_bytes(size)
            # Three copies at once at most (the trainer's, and two jobs'), plus LVM's metadata.
            disk = (3 * needed // MiB + 256) * MiB
            swarm = start_swarm(bed, workdir, origin, link, 2, disk, bucket, DATASETS[0], size)
            open_to_the_scheduler(bed.control_plane, NAMESPACE, [n.name for n in swarm.nodes])
            install_dataset_gate(bed.control_plane, NAMESPACE)
            wait_for_pools(swarm, 3 * needed)
            rig = Rig(swarm, args.cap_mib * MiB)
            rig.scheduler = start_scheduler(workdir, bed.run_id, bed.control_plane.kubeconfigs["admin"])
            yield rig
        finally:
            if rig is not None:
                rig.kubectl(
                    "delete", "pods", "--all", "-n", NAMESPACE, "--grace-period=0", "--force", check=False
                )
                if rig.scheduler is not None:
                    rig.scheduler.stop()
            if swarm is not None:
                stop_cairn(swarm)
            bed.control_plane.kubectl(
                "delete", "-f", "-", "--ignore-not-found", input_text=dataset_gate_policies(), check=False
            )
            origin.process.stop()


# -- the measurements ---------------------------------------------------------------------------------


def interference(rig: Rig, params: dict[str, Any]) -> tuple[float, float, float]:
    """Batches per second: idle (mean of before and after), beside Background, beside Normal."""
    rig.create_dataset("train", background=False)
    rig.wait_ready("train")
    data = rig.copy("train", rig.names[0])
    idle = rig.metered(data, WINDOW_S)
    idle_before = idle["rate"]

    next_created = rig.create_dataset("next", background=True)
    rig.wait_reading("next")
    starting = train(data, seconds=SETTLE_S)
    beside_background = rig.metered(data, WINDOW_S)
    still_seeding = rig.phase("next").get("phase") != "Ready"
    nodes_ready: dict[str, float] = {}
    ready = rig.wait_ready("next", seen=nodes_ready) - next_created
    idle_after = train(data, seconds=WINDOW_S)["rate"]

    created = rig.create_dataset("normal", background=False)
    rig.wait_reading("normal")
    beside_normal = rig.metered(data, WINDOW_S)  # from the first byte: Normal is done in ~10 s
    normal_ready = rig.wait_ready("normal") - created
    rig.delete("dataset", "next", "normal")
    params["interference"] = {
        "idle_before": round(idle_before, 2),
        "idle_after": round(idle_after, 2),
        "beside_background": round(beside_background["rate"], 2),
        "beside_background_first_s": round(starting["rate"], 2),
        "background_still_seeding_at_window_end": still_seeding,
        "background_ready_s": round(ready, 1),
        "background_floor_s": round(rig.swarm.size / rig.cap, 1),
        "background_node_ready_s": {n: round(t - next_created, 1) for n, t in sorted(nodes_ready.items())},
        "beside_normal": round(beside_normal["rate"], 2),
        "normal_ready_s": round(normal_ready, 1),
        "cpu_idle": idle["cpu"],
        "cpu_beside_background": beside_background["cpu"],
        "cpu_beside_normal": beside_normal["cpu"],
    }
    print(f"  interference: {params['interference']}", flush=True)
    if not still_seeding:
        print("  WARNING: the Background copy was Ready before the window closed", flush=True)
    return statistics.mean([idle_before, idle_after]), beside_background["rate"], beside_normal["rate"]


def job(rig: Rig, dataset: str, batches: int, created: float) -> tuple[float, float]:
    """Wait for the job's pod to be bound, then train on that node's copy: (wait, training) seconds."""
    node = rig.wait_bound(f"job-{dataset}")
    bound = time.monotonic()
    trained = train(rig.copy(dataset, node), batches=batches)["seconds"]
    return bound - created, trained


def makespans(rig: Rig, batches: int, params: dict[str, Any]) -> tuple[float, float, float]:
    """(sequential makespan, pipelined makespan, ideal ratio)."""
    started = time.monotonic()
    waits, trainings = [], []
    for name in ("seq-a", "seq-b"):
        created = rig.create_dataset(name, background=False)
        rig.create_pod(f"job-{name}", name)
        wait, trained = job(rig, name, batches, created)
        waits.append(wait)
        trainings.append(trained)
    sequential = time.monotonic() - started
    rig.delete("pod", "job-seq-a", "job-seq-b", "--grace-period=0", "--force")
    rig.delete("dataset", "seq-a", "seq-b")

    started = time.monotonic()
    created = rig.create_dataset("pipe-a", background=False)
    rig.create_pod("job-pipe-a", "pipe-a")
    node = rig.wait_bound("job-pipe-a")
    first_wait = time.monotonic() - created
    next_created = rig.create_dataset("pipe-b", background=True)  # as the first job starts training
    rig.create_pod("job-pipe-b", "pipe-b")
    first_training = train(rig.copy("pipe-a", node), batches=batches)["seconds"]
    second_wait, second_training = job(rig, "pipe-b", batches, next_created)
    pipelined = time.monotonic() - started
    rig.delete("pod", "job-pipe-a", "job-pipe-b", "--grace-period=0", "--force")
    rig.delete("dataset", "pipe-a", "pipe-b")

    d, t = statistics.mean(waits), statistics.mean(trainings)
    ideal = (d + 2 * t) / (2 * d + 2 * t)
    params["pipeline"] = {
        "batches_per_job": batches,
        "sequential_s": round(sequential, 1),
        "sequential_waits_s": [round(w, 1) for w in waits],
        "sequential_trainings_s": [round(x, 1) for x in trainings],
        "pipelined_s": round(pipelined, 1),
        "pipelined_waits_s": [round(first_wait, 1), round(second_wait, 1)],
        "pipelined_trainings_s": [round(first_training, 1), round(second_training, 1)],
        "D_s": round(d, 1),
        "T_s": round(t, 1),
        "ideal_ratio": round(ideal, 3),
    }
    print(f"  pipeline: {params['pipeline']}", flush=True)
    return sequential, pipelined, ideal


def main() -> None:
    if sys.argv[1:2] == ["--trainer"]:
        worker = argparse.ArgumentParser()
        worker.add_argument("--trainer", type=Path, required=True)
        worker.add_argument("--seconds", type=float, default=0.0)
        worker.add_argument("--batches", type=int, default=0)
        options = worker.parse_args()
        trainer_main(options.trainer, options.seconds, options.batches)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", default="1gbit", help="R, every link's rate in tc units (1gbit)")
    parser.add_argument("--size-mib", type=int, default=256, help="each dataset's size in MiB (256)")
    parser.add_argument("--files", type=int, default=16, help="objects per dataset (16)")
    parser.add_argument(
        "--cap-mib", type=int, default=24, help="C, the Background cap per node in MiB/s (24)"
    )
    parser.add_argument(
        "--train-s", type=float, default=25.0, help="T, each job's training on idle nodes (25)"
    )
    args = parser.parse_args()

    from .common import report

    size = args.size_mib * MiB
    params: dict[str, Any] = {
        "nodes": 2,
        "rate": args.rate,
        "size_mib": args.size_mib,
        "files": args.files,
        "cap_mib_per_s": args.cap_mib,
        "train_s": args.train_s,
        "window_s": WINDOW_S,
        "batch_mib": BATCH // MiB,
        "hash_passes": HASH_PASSES,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with running_rig(args, size) as rig:
        idle, background, normal = interference(rig, params)
        batches = max(1, round(idle * args.train_s))
        sequential, pipelined, ideal = makespans(rig, batches, params)
    report("prefetch_interference", background, idle, "batches/s", params, goal="≥0.9")
    report("prefetch_interference_normal", normal, idle, "batches/s", params, goal="report (priority Normal)")
    report(
        "pipeline_makespan",
        pipelined / sequential,
        ideal,
        "pipelined over sequential makespan",
        params,
        goal="≤1.1 (baseline: the ideal (D+2T)/(2D+2T))",
    )


if __name__ == "__main__":
    main()
