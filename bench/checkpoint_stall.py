"""How long a trainer waits for a checkpoint on a Cairn volume, and what background tiering costs it.

A simulated trainer writes a DCP-shaped checkpoint (`__<rank>_0.distcp` shards, then `.metadata`
last) into a staged Cairn volume whose class names a CheckpointPolicy with an S3 target on the
bed's MinIO. It may continue once every file is written and fsynced, each file as it is closed
(as DCP's FileSystemWriter does with sync_files=True); that time is the stall.

Three results, each against a baseline measured in the same run. Each round runs the three kinds
of write in another order, and every write on an idle node starts once the host has flushed what
the one before it left dirty (os.sync, then Dirty + Writeback under 64 MiB):
- checkpoint_stall_vs_dd: the trainer's stall on an idle node over `dd conv=fsync` of the same
  files (same names, sizes and block size; one fsync per file, as the trainer) to the same volume.
  dd reads /dev/zero, the trainer writes random bytes; nothing on the path compresses. Goal <= 1.1.
- checkpoint_stall_vs_sync_upload: the synchronous alternative (write and fsync the same files,
  then boto3 `upload_file` each with its default TransferConfig before continuing) over Cairn's
  stall: the speedup of not waiting for S3.
- checkpoint_write_rate_under_upload: the trainer's write rate while the agent uploads the
  previous checkpoint (the write starts once that Checkpoint is Uploading) over the rate on an
  idle node. Goal >= 0.9. The fraction of each write that the upload overlapped is in params.

"Idle" means every Checkpoint is Tiered and retention has run. The volume is filled once and
emptied first, so no round pays for the loop disk's sparse file growing under it. MinIO runs on
the same machine, where a real node's S3 is remote and takes none of its CPU or disk. So by
default MinIO runs at the lowest CPU and I/O priority (nice 19, idle I/O class): it takes only
what the trainer leaves, as a remote service would take nothing. `--s3-competes` runs it at
normal priority instead, as an equal of the trainer. Its CPU is reported beside the agent's.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from boto3.s3.transfer import TransferConfig
from kubernetes import client

from cairn.api.checkpoint import Checkpoint
from cairn.csi.proto import csi_pb2
from cairn.kube import ResourceClient
from tests.testbed.bed import TestBed
from tests.testbed.components import Driver, mount_capability, running_driver
from tests.testbed.waiting import wait_until

from .common import bench_bed, report
from .host import cpu_seconds
from .profile import HostProfile, process_tree

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
NAMESPACE = "default"
POLICY = "bench-stall"
SECRET = "bench-stall-s3"
PVC = "trainer"


# -- the checkpoint and its writers ---------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The files of one checkpoint in the order DCP writes them: shards, then `.metadata`."""

    files: tuple[tuple[str, int], ...]

    @classmethod
    def dcp(cls, total: int, shards: int, metadata: int) -> Layout:
        data = total - metadata
        if shards < 1 or data < shards:
            raise SystemExit(
                f"a {total}-byte checkpoint cannot hold {shards} shards and {metadata} bytes of metadata"
            )
        sizes = [data // shards] * shards
        sizes[-1] += data - sum(sizes)
        shard_files = [(f"__{rank}_0.distcp", size) for rank, size in enumerate(sizes)]
        return cls((*shard_files, (".metadata", metadata)))

    @property
    def total(self) -> int:
        return sum(size for _, size in self.files)


@dataclass
class WriteTiming:
    seconds: float
    write_seconds: float = 0.0
    fsync_seconds: float = 0.0
    cpu_seconds: float = 0.0


def trainer_write(directory: Path, layout: Layout, chunk: memoryview) -> WriteTiming:
    """Write every file, fsyncing each before closing it; returns when the trainer may continue."""
    directory.mkdir(parents=True)
    cpu_before = resource.getrusage(resource.RUSAGE_THREAD)
    timing = WriteTiming(0.0)
    started = time.perf_counter()
    for name, size in layout.files:
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            mark = time.perf_counter()
            left = size
            while left:
                view = chunk[: min(left, len(chunk))]
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    left -= written
            synced = time.perf_counter()
            os.fsync(fd)
            timing.write_seconds += synced - mark
            timing.fsync_seconds += time.perf_counter() - synced
        finally:
            os.close(fd)
    timing.seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_THREAD)
    timing.cpu_seconds = (cpu_after.ru_utime + cpu_after.ru_stime) - (
        cpu_before.ru_utime + cpu_before.ru_stime
    )
    return timing


def dd_write(directory: Path, layout: Layout, block: int) -> float:
    """The same files with `dd conv=fsync`: buffered writes of `block` bytes, one fsync per file."""
    directory.mkdir(parents=True)
    started = time.perf_counter()
    for name, size in layout.files:
        dd_zeros(directory / name, size, block)
    return time.perf_counter() - started


def dd_zeros(path: Path, size: int, block: int) -> None:
    """`size` zero bytes to `path` in writes of `block` bytes, then one fsync."""
    command = ["dd", "if=/dev/zero", f"of={path}", f"bs={block}", f"count={size}", "iflag=count_bytes"]
    subprocess.run([*command, "conv=fsync", "status=none"], check=True)


def sync_upload(s3: Any, bucket: str, prefix: str, directory: Path, layout: Layout) -> float:
    """What a trainer without background tiering waits for after its write: every file in S3."""
    config = TransferConfig()
    started = time.perf_counter()
    for name, _size in layout.files:
        s3.upload_file(str(directory / name), bucket, f"{prefix}/{name}", Config=config)
    return time.perf_counter() - started


def empty_prefix(s3: Any, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def prefill(staging: Path, block: int) -> tuple[int, float]:
    """Write the volume's free space once and delete it, so every later write lands on disk blocks
    the loop disk's sparse file already has, whichever round and writer it comes from."""
    stats = os.statvfs(staging)
    size = stats.f_bavail * stats.f_frsize - 64 * MiB
    path = staging / "prefill"
    started = time.perf_counter()
    dd_zeros(path, size, block)
    seconds = time.perf_counter() - started
    path.unlink()
    return size, seconds


def quiet_host(timeout: float = 60.0) -> float:
    """Flush what earlier parts left dirty (MinIO's objects, deleted files) before a measured write,
    so no kind of write pays for the one before it; returns the seconds it took."""
    started = time.monotonic()
    os.sync()

    def dirty_mib() -> int:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return sum(int(fields[key].split()[0]) for key in ("Dirty", "Writeback")) // 1024

    while dirty_mib() > 64 and time.monotonic() - started < timeout:
        time.sleep(0.2)
    time.sleep(0.5)
    return time.monotonic() - started


# -- watching the agent ------------------------------------------------------------------------------


@dataclass
class CheckpointState:
    phase: str
    bytes_uploaded: int
    local: bool
    first_seen: dict[str, float] = field(default_factory=dict)
    """Monotonic time each phase was first seen in."""


class CheckpointPoller:
    """Lists the namespace's Checkpoints every `interval` seconds, by step, in a thread of its own;
    it runs through every measured write alike, so its cost falls on all of them."""

    def __init__(self, api_client: client.ApiClient, interval: float) -> None:
        self._checkpoints = ResourceClient(api_client, Checkpoint)
        self._interval = interval
        self._lock = threading.Lock()
        self._states: dict[int, CheckpointState] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-poller", daemon=True)

    def __enter__(self) -> CheckpointPoller:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # a missed look is made up by the next one
                self.refresh()

    def refresh(self) -> dict[int, CheckpointState]:
        items = self._checkpoints.list(namespace=NAMESPACE)
        now = time.monotonic()
        with self._lock:
            listed = {item.model.spec.step for item in items}
            for step, state in self._states.items():
                if step not in listed:  # deleted by remote retention: no copy left anywhere here
                    state.phase, state.local = "Expired", False
                    state.first_seen.setdefault("Expired", now)
            for item in items:
                checkpoint: Checkpoint = item.model
                status = checkpoint.status
                state = self._states.setdefault(
                    checkpoint.spec.step, CheckpointState(status.phase.value, 0, True)
                )
                state.phase = status.phase.value
                state.bytes_uploaded = status.bytes_uploaded
                state.local = status.local is not None and status.local.present
                state.first_seen.setdefault(state.phase, now)
            return dict(self._states)

    def states(self) -> dict[int, CheckpointState]:
        with self._lock:
            return dict(self._states)

    def wait(
        self, what: str, predicate: Callable[[dict[int, CheckpointState]], bool], timeout: float
    ) -> None:
        def check() -> bool:
            states = self.states()
            failed = {step: s.phase for step, s in states.items() if s.phase == "Failed"}
            if failed:
                raise RuntimeError(f"checkpoints failed while waiting for {what}: {failed}")
            return predicate(states)

        wait_until(check, timeout, what, interval=0.05)


def quiescent(keep_local: int, steps: list[int]) -> Callable[[dict[int, CheckpointState]], bool]:
    """Every checkpoint written so far Tiered, and retention done with the local copies."""

    def check(states: dict[int, CheckpointState]) -> bool:
        if any(step not in states or states[step].phase not in ("Tiered", "Expired") for step in steps):
            return False
        return sum(1 for state in states.values() if state.local) <= max(1, keep_local)

    return check


# -- the bed ------------------------------------------------------------------------------------------


def policy_body(bed: TestBed, bucket: str, args: argparse.Namespace) -> dict[str, Any]:
    assert bed.s3 is not None
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": POLICY, "namespace": NAMESPACE},
        "spec": {
            "commit": {"rules": ["dcp"], "settleSeconds": args.settle_seconds},
            "target": {
                "endpoint": bed.s3.endpoint,
                "bucket": bucket,
                "prefix": "cairn",
                "credentialsSecretRef": {"name": SECRET},
            },
            # The newest copy stays local (kept whatever keepLocal says), older ones go once verified.
            "retention": {"keepLocal": args.keep_local, "keepRemoteLast": 1},
            "upload": {"bandwidthLimitBytesPerSecond": args.upload_limit_mib * MiB},
        },
    }


@contextlib.contextmanager
def staged_volume(driver: Driver, size: int) -> Iterator[Path]:
    capability = mount_capability()
    controller = driver.controller_stub()
    volume = controller.CreateVolume(
        csi_pb2.CreateVolumeRequest(
            name="bench-checkpoint-stall",
            capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[capability],
            parameters={
                "cairn.dev/checkpoint-policy": POLICY,
                "csi.storage.k8s.io/pvc/name": PVC,
                "csi.storage.k8s.io/pvc/namespace": NAMESPACE,
            },
        ),
        timeout=120,
    ).volume.volume_id
    staging = driver.workdir / "staging" / volume
    staging.mkdir(parents=True)
    node = driver.node_stub()
    node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume, staging_target_path=str(staging), volume_capability=capability
        ),
        timeout=120,
    )
    try:
        yield staging
    finally:
        # After a failure the agent may still be reading a checkpoint it uploads: give it a while.
        deadline = time.monotonic() + 120
        while True:
            try:
                node.NodeUnstageVolume(
                    csi_pb2.NodeUnstageVolumeRequest(volume_id=volume, staging_target_path=str(staging)),
                    timeout=120,
                )
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume), timeout=120)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Samples:
    dd: list[float] = field(default_factory=list)
    idle: list[WriteTiming] = field(default_factory=list)
    loaded: list[WriteTiming] = field(default_factory=list)
    overlap: list[float] = field(default_factory=list)
    uploaded_during_write: list[int] = field(default_factory=list)
    sync_write: list[float] = field(default_factory=list)
    sync_upload: list[float] = field(default_factory=list)
    committed_after: list[float] = field(default_factory=list)
    """Seconds from the end of an idle write to its Checkpoint being recorded (settle and hash)."""
    tiered_after: list[float] = field(default_factory=list)
    """Seconds from the end of an idle write to its Checkpoint being Tiered."""
    agent_cpu: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "loaded": 0.0, "tiering": 0.0})
    minio_cpu: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "loaded": 0.0, "tiering": 0.0})
    wall: dict[str, float] = field(default_factory=lambda: {"idle": 0.0, "loaded": 0.0, "tiering": 0.0})
    tiered_bytes: int = 0
    loaded_profile: dict[str, dict[str, float]] = field(default_factory=dict)
    """Round 0's write under upload: each party's CPU-seconds by kind of work (bench.profile)."""


def yield_to_everyone(pid: int) -> None:
    """Lowest CPU and I/O priority for every thread of a process; threads it starts later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        subprocess.run(["ionice", "-c", "3", "-p", str(tid)], check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mib",
        type=int,
        default=int(os.environ.get("CAIRN_BENCH_CKPT_MIB", 2048)),
        help="checkpoint size F (default 2048, or $CAIRN_BENCH_CKPT_MIB)",
    )
    parser.add_argument("--shards", type=int, default=4, help="__<rank>_0.distcp files per checkpoint")
    parser.add_argument("--metadata-kib", type=int, default=256, help="size of .metadata")
    parser.add_argument("--block-mib", type=int, default=16, help="write size of the trainer and of dd")
    parser.add_argument("--rounds", type=int, default=6, help="6 runs each order of the three once")
    parser.add_argument("--settle-seconds", type=float, default=1.0, help="the policy's commit.settleSeconds")
    parser.add_argument("--keep-local", type=int, default=1, help="the policy's retention.keepLocal")
    parser.add_argument(
        "--upload-limit-mib", type=int, default=0, help="the policy's upload cap, MiB/s; 0 none"
    )
    parser.add_argument(
        "--volume-mib",
        type=int,
        default=0,
        help="volume size; default room for 3 checkpoints (kept, uploading, being written)",
    )
    parser.add_argument(
        "--no-prefill", action="store_true", help="skip filling and emptying the volume first"
    )
    parser.add_argument("--poll-seconds", type=float, default=0.25, help="how often Checkpoints are listed")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for the agent, seconds")
    parser.add_argument(
        "--s3-competes",
        action="store_true",
        help="leave MinIO at normal CPU and I/O priority (default: lowest, standing in for a remote S3)",
    )
    args = parser.parse_args()

    layout = Layout.dcp(args.size_mib * MiB, args.shards, args.metadata_kib * KiB)
    block = args.block_mib * MiB
    volume_size = args.volume_mib * MiB or (3 * layout.total + max(512 * MiB, layout.total // 4))
    chunk = memoryview(os.urandom(block))
    samples = Samples()
    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "files": [name for name, _ in layout.files],
        "block_mib": args.block_mib,
        "rounds": args.rounds,
        "volume_mib": volume_size // MiB,
        "trainer_sync": "fsync each file before closing it (DCP sync_files=True)",
        "idle_means": "all Checkpoints Tiered, retention done, host dirty pages flushed",
        "dd": f"dd if=/dev/zero bs={args.block_mib}M conv=fsync, once per file",
        "sync_upload": "boto3 upload_file per file, default TransferConfig (8 MiB parts, 10 threads), "
        "from the host",
        "policy": {
            "settleSeconds": args.settle_seconds,
            "keepLocal": args.keep_local,
            "uploadLimitMiBps": args.upload_limit_mib,
            "upload": "agent defaults (4 parts at once, 64 MiB)",
        },
    }

    with bench_bed(with_s3=True) as bed:
        assert bed.s3 is not None
        bucket = bed.s3.create_bucket(f"bench-stall-{uuid.uuid4().hex[:8]}")
        bed.core_v1().create_namespaced_secret(
            NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=SECRET),
                string_data={"accessKeyId": bed.s3.access_key, "secretAccessKey": bed.s3.secret_key},
            ),
        )
        bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(policy_body(bed, bucket, args)))
        s3 = bed.s3.client()
        minio_pid = bed.s3.process.pid
        if not args.s3_competes:
            yield_to_everyone(minio_pid)
        params["s3_priority"] = (
            "normal" if args.s3_competes else "nice 19, idle I/O class (remote S3 stand-in)"
        )
        disk_size = volume_size + 256 * MiB
        with (
            running_driver(bed, "bench-stall", disks=1, disk_size=disk_size) as driver,
            staged_volume(driver, volume_size) as staging,
            CheckpointPoller(bed.control_plane.api_client(), args.poll_seconds) as poller,
        ):
            agent_pid = driver.agent.pid
            if not args.no_prefill:
                filled, seconds = prefill(staging, block)
                params["prefill"] = f"{filled / GiB:.1f} GiB in {seconds:.1f}s"
                print(f"  prefill: {params['prefill']}", flush=True)
            (staging / "checkpoints").mkdir()
            steps: list[int] = []

            def cairn_part(round_: int) -> None:
                idle_step, loaded_step = 100 * (round_ + 1), 100 * (round_ + 1) + 50
                # Idle: nothing of the agent's is running but its detection polls.
                quiet_host()
                a0, m0, t0 = cpu_seconds(agent_pid), cpu_seconds(minio_pid), time.monotonic()
                idle = trainer_write(staging / "checkpoints" / f"step_{idle_step}", layout, chunk)
                written = time.monotonic()
                a1, m1 = cpu_seconds(agent_pid), cpu_seconds(minio_pid)
                samples.idle.append(idle)
                samples.agent_cpu["idle"] += a1 - a0
                samples.minio_cpu["idle"] += m1 - m0
                samples.wall["idle"] += written - t0
                steps.append(idle_step)
                poller.wait(
                    f"step {idle_step} to be Uploading",
                    lambda s: idle_step in s and s[idle_step].phase in ("Uploading", "Tiered"),
                    args.timeout,
                )
                state = poller.states()[idle_step]
                samples.committed_after.append(min(state.first_seen.values()) - written)
                if state.phase != "Uploading":
                    raise RuntimeError(
                        f"step {idle_step} was {state.phase} before a write could overlap its upload"
                    )
                # Loaded: the next checkpoint while the agent uploads this one.
                a2, m2, t2 = cpu_seconds(agent_pid), cpu_seconds(minio_pid), time.monotonic()
                sent_before = state.bytes_uploaded
                with HostProfile() if round_ == 0 else contextlib.nullcontext() as sampled:
                    loaded = trainer_write(staging / "checkpoints" / f"step_{loaded_step}", layout, chunk)
                    t3 = time.monotonic()
                    a3, m3 = cpu_seconds(agent_pid), cpu_seconds(minio_pid)
                if sampled is not None:
                    samples.loaded_profile = {
                        "agent": sampled.breakdown.cpu_seconds(process_tree(agent_pid), a3 - a2),
                        "minio": sampled.breakdown.cpu_seconds([minio_pid], m3 - m2),
                        "trainer": sampled.breakdown.cpu_seconds([os.getpid()], loaded.cpu_seconds),
                    }
                after = poller.refresh()[idle_step]
                left = after.first_seen.get("Tiered", after.first_seen.get("Failed", t3))
                overlap = 1.0 if after.phase == "Uploading" else max(0.0, min(t3, left) - t2) / (t3 - t2)
                samples.loaded.append(loaded)
                samples.overlap.append(overlap)
                samples.uploaded_during_write.append(
                    (after.bytes_uploaded if after.phase == "Uploading" else layout.total) - sent_before
                )
                samples.agent_cpu["loaded"] += a3 - a2
                samples.minio_cpu["loaded"] += m3 - m2
                samples.wall["loaded"] += t3 - t2
                steps.append(loaded_step)
                poller.wait(
                    f"steps {steps} Tiered and retention done",
                    quiescent(args.keep_local, steps),
                    args.timeout,
                )
                done = poller.states()[idle_step]
                samples.tiered_after.append(done.first_seen["Tiered"] - written)
                a4, m4 = cpu_seconds(agent_pid), cpu_seconds(minio_pid)
                samples.agent_cpu["tiering"] += a4 - a0
                samples.minio_cpu["tiering"] += m4 - m0
                samples.wall["tiering"] += time.monotonic() - t0
                samples.tiered_bytes += 2 * layout.total
                print(
                    f"  round {round_} cairn: idle {idle.seconds:.2f}s (fsync {idle.fsync_seconds:.2f}s), "
                    f"under upload {loaded.seconds:.2f}s (fsync {loaded.fsync_seconds:.2f}s, "
                    f"overlap {overlap:.0%}), recorded +{samples.committed_after[-1]:.1f}s, "
                    f"tiered +{samples.tiered_after[-1]:.1f}s",
                    flush=True,
                )

            def dd_part(round_: int) -> None:
                directory = staging / "baseline" / f"r{round_}-dd"
                quiet_host()
                samples.dd.append(dd_write(directory, layout, block))
                shutil.rmtree(directory)
                print(f"  round {round_} dd: {samples.dd[-1]:.2f}s", flush=True)

            def sync_part(round_: int) -> None:
                # The same names, in a directory whose name has no step: the agent never records it.
                directory = staging / "baseline" / f"r{round_}-sync"
                quiet_host()
                write = trainer_write(directory, layout, chunk)
                upload = sync_upload(s3, bucket, f"sync/r{round_}", directory, layout)
                samples.sync_write.append(write.seconds)
                samples.sync_upload.append(upload)
                shutil.rmtree(directory)
                empty_prefix(s3, bucket, f"sync/r{round_}")
                print(f"  round {round_} sync: write {write.seconds:.2f}s + upload {upload:.2f}s", flush=True)

            # Every order of the three in turn, so no kind always follows the same neighbour.
            orders = list(itertools.permutations([dd_part, cairn_part, sync_part]))
            for round_ in range(args.rounds):
                for part in orders[round_ % len(orders)]:
                    part(round_)

    median = statistics.median
    cairn_stall = median([t.seconds for t in samples.idle])
    sync_stall = median([w + u for w, u in zip(samples.sync_write, samples.sync_upload, strict=True)])
    idle_rate = median([layout.total / t.seconds / MiB for t in samples.idle])
    loaded_rate = median([layout.total / t.seconds / MiB for t in samples.loaded])

    def percent(what: str, cpu: dict[str, float]) -> float:
        return round(100 * cpu[what] / samples.wall[what], 1) if samples.wall[what] else 0.0

    params.update(
        {
            "cairn_stall_s": [round(t.seconds, 2) for t in samples.idle],
            "cairn_fsync_share": round(median([t.fsync_seconds / t.seconds for t in samples.idle]), 3),
            "trainer_cpu_s_per_gib": round(
                median([t.cpu_seconds for t in samples.idle]) / (layout.total / GiB), 2
            ),
            "dd_s": [round(s, 2) for s in samples.dd],
            "sync_write_s": [round(s, 2) for s in samples.sync_write],
            "sync_upload_s": [round(s, 2) for s in samples.sync_upload],
            "loaded_stall_s": [round(t.seconds, 2) for t in samples.loaded],
            "loaded_fsync_share": round(median([t.fsync_seconds / t.seconds for t in samples.loaded]), 3),
            "overlap_fraction": [round(o, 3) for o in samples.overlap],
            "uploaded_mib_during_write": [round(b / MiB) for b in samples.uploaded_during_write],
            "recorded_after_write_s": round(median(samples.committed_after), 2),
            "tiered_after_write_s": round(median(samples.tiered_after), 2),
            "agent_cpu_percent": {w: percent(w, samples.agent_cpu) for w in ("idle", "loaded", "tiering")},
            "minio_cpu_percent": {w: percent(w, samples.minio_cpu) for w in ("idle", "loaded", "tiering")},
            "cpu_s_by_kind_during_loaded_write": samples.loaded_profile,
            "agent_cpu_s_per_gib_tiered": round(
                samples.agent_cpu["tiering"] / (samples.tiered_bytes / GiB), 2
            ),
            "minio_cpu_s_per_gib_tiered": round(
                samples.minio_cpu["tiering"] / (samples.tiered_bytes / GiB), 2
            ),
        }
    )
    report("checkpoint_stall_vs_dd", cairn_stall, median(samples.dd), "s", params, goal="<= 1.1")
    report(
        "checkpoint_stall_vs_sync_upload",
        sync_stall,
        cairn_stall,
        "s",
        params,
        goal="report (speedup of not waiting for S3)",
    )
    report("checkpoint_write_rate_under_upload", loaded_rate, idle_rate, "MiB/s", params, goal=">= 0.9")


if __name__ == "__main__":
    main()
