"""How fast a checkpoint comes back: Cairn's restore from S3 and from a peer, against plain downloads.

A trainer's volume on a simulated node holds a DCP-shaped checkpoint (8 shards, 2 GiB by default),
recorded by the agent and tiered to the bed's MinIO under a CheckpointPolicy, its local copy kept.
Each round then fetches the same bytes four ways into an empty directory on the host, in an order
that rotates every round:

- `restore s3`: Cairn's restore engine (what the populator and `cairn checkpoint restore` run) with
  the S3 tier as its only source: every file streamed, hashed (BLAKE3) against the manifest the
  Checkpoint records, fsynced and renamed into place.
- `boto3`: boto3's `download_file` of each object in turn, with its default TransferConfig (ranged
  GETs on 10 threads), no verification, no fsync: the S3 baseline.
- `restore peer`: the same engine with the node's agent as its only source, over the peer plane's
  mutual TLS, as the node that recorded the checkpoint (the identity the agent's server admits).
- `curl`: one `curl` GET per file from the same agent, same TLS identity, to a file: the baseline of
  a plain HTTP GET of the same bytes, no verification, no fsync.

Results, each a throughput over its baseline's, median of the rounds (goal >= 1.0 for both):
checkpoint_restore_s3_vs_boto3 and checkpoint_restore_peer_vs_http_get.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from cairn.api.checkpoint import Checkpoint, CheckpointPhase
from cairn.kube import ResourceClient
from cairn.node_agent.checkpoints.restore.engine import (
    FILE_STREAMS,
    FetchSource,
    PeerSource,
    S3Source,
    checkpoint_url_path,
    file_url_part,
)
from cairn.node_agent.checkpoints.restore.engine import restore as restore_checkpoint
from cairn.node_agent.checkpoints.restore.plan import SourceKind
from cairn.node_agent.checkpoints.restore.sources import sources_for
from cairn.node_agent.manifests import MANIFEST_NAME
from cairn.node_agent.p2p.identity import PeerIdentity
from cairn.s3 import S3Location
from tests.testbed.checkpoints import s3_checkpoint_policy, write_sized_dcp
from tests.testbed.components import running_driver
from tests.testbed.kubelet_standin import standin_claim_volume
from tests.testbed.waiting import wait_until

from .common import bench_bed, report

MiB = 1024 * 1024
GiB = 1024 * MiB
NAMESPACE = "default"
PVC = "bench-restore"
POLICY = "bench-restore"
SECRET = "bench-restore-s3"
STEP_PATH = "checkpoints/step_100"


def tiered_checkpoint(api_client: Any, timeout: float = 600.0) -> tuple[str, Checkpoint]:
    """The name and object of the trainer's checkpoint, once it is Tiered."""
    checkpoints = ResourceClient(api_client, Checkpoint)
    found: list[tuple[str, Checkpoint]] = []

    def tiered() -> bool:
        for item in checkpoints.list(namespace=NAMESPACE):
            model: Checkpoint = item.model
            if model.spec.pvc_name == PVC and model.status and model.status.phase == CheckpointPhase.TIERED:
                found.append((item.name, model))
                return True
        return False

    wait_until(tiered, timeout, "the checkpoint to be recorded and Tiered", interval=1.0)
    return found[0]


def restore_from(source: FetchSource, digest: str, streams: int) -> Callable[[Path], None]:
    def run(destination: Path) -> None:
        restore_checkpoint(digest, [source], destination, streams=streams)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048, help="checkpoint size (2048)")
    parser.add_argument("--shards", type=int, default=8, help="shard files (8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each in another order (3)")
    parser.add_argument("--streams", type=int, default=FILE_STREAMS, help="files the restore moves at once")
    args = parser.parse_args()
    size = args.size_mib * MiB
    samples: dict[str, list[float]] = {"restore s3": [], "boto3": [], "restore peer": [], "curl": []}

    with bench_bed(with_s3=True) as bed:
        assert bed.s3 is not None
        cp = bed.control_plane
        bucket = bed.s3.create_bucket(f"bench-restore-{bed.run_id[:8]}")
        core = bed.core_v1()
        core.create_namespaced_secret(NAMESPACE, bed.s3.credentials_secret(SECRET, NAMESPACE))
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input_text=json.dumps(
                s3_checkpoint_policy(
                    POLICY, NAMESPACE, endpoint=bed.s3.endpoint, bucket=bucket, secret=SECRET
                )
            ),
        )
        work = bed.workdir / "bench-restore"
        with (
            running_driver(bed, "bench-restore", disks=1, disk_size=size + 768 * MiB) as driver,
            standin_claim_volume(
                driver, "bench-restore-trainer", size + 256 * MiB, pvc=PVC, namespace=NAMESPACE, policy=POLICY
            ) as (_volume, staging),
        ):
            started = time.monotonic()
            write_sized_dcp(staging / STEP_PATH, size, args.shards, os.urandom(64 * MiB))
            api_client = cp.api_client()
            name, recorded = tiered_checkpoint(api_client)
            print(f"  checkpoint {name} Tiered {time.monotonic() - started:.1f} s after writing", flush=True)
            node = driver.node.name
            identity = PeerIdentity.load(node, driver.workdir / "state" / node / "peer-identity")
            _, sources = sources_for(api_client, NAMESPACE, name, None, identity=identity)
            by_kind = {source.kind: source for source in sources}
            s3_source, peer_source = by_kind[SourceKind.S3], by_kind[SourceKind.PEER]
            assert isinstance(s3_source, S3Source) and isinstance(peer_source, PeerSource)
            digest = recorded.spec.manifest_digest
            location: S3Location = s3_source.location
            s3 = bed.s3.client()
            keys = [
                o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=location.prefix + "/")["Contents"]
            ]
            peer_files = sorted(p.name for p in (staging / STEP_PATH).iterdir() if p.name != MANIFEST_NAME)

            def boto3_download(destination: Path) -> None:
                destination.mkdir(parents=True)
                for key in keys:
                    s3.download_file(bucket, key, str(destination / Path(key).name), Config=TransferConfig())

            def curl_get(destination: Path) -> None:
                destination.mkdir(parents=True)
                base = f"https://{peer_source.host}:{peer_source.port}"
                for file in peer_files:
                    path = checkpoint_url_path(NAMESPACE, name, file_url_part(Path(file)))
                    subprocess.run(
                        [
                            *("curl", "--fail", "--silent", "--show-error", "--insecure", "--tlsv1.3"),
                            *("--cert", str(identity.certificate_path), "--key", str(identity.key_path)),
                            *("-o", str(destination / file), base + path),
                        ],
                        check=True,
                        timeout=600,
                    )

            ways: dict[str, Callable[[Path], None]] = {
                "restore s3": restore_from(s3_source, digest, args.streams),
                "boto3": boto3_download,
                "restore peer": restore_from(peer_source, digest, args.streams),
                "curl": curl_get,
            }
            names = list(ways)
            for round_ in range(args.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for way in order:
                    destination = work / f"r{round_}-{way.replace(' ', '-')}"
                    os.sync()
                    begun = time.perf_counter()
                    ways[way](destination)
                    samples[way].append(time.perf_counter() - begun)
                    got = sum(p.stat().st_size for p in destination.iterdir() if p.name != MANIFEST_NAME)
                    if got < size:
                        raise RuntimeError(f"{way} wrote {got} bytes of {size}")
                    shutil.rmtree(destination)
                print(
                    f"  round {round_}: "
                    + ", ".join(f"{w} {size / MiB / samples[w][-1]:.0f} MiB/s" for w in names),
                    flush=True,
                )

    median = statistics.median
    rates = {way: size / MiB / median(times) for way, times in samples.items()}
    params: dict[str, Any] = {
        "size_mib": args.size_mib,
        "shards": args.shards,
        "rounds": args.rounds,
        "streams": args.streams,
        "mib_per_s": {way: round(rate, 1) for way, rate in rates.items()},
        "seconds": {way: [round(t, 2) for t in times] for way, times in samples.items()},
    }
    report(
        "checkpoint_restore_s3_vs_boto3", rates["restore s3"], rates["boto3"], "MiB/s", params, goal="≥1.0"
    )
    report(
        "checkpoint_restore_peer_vs_http_get",
        rates["restore peer"],
        rates["curl"],
        "MiB/s",
        params,
        goal="≥1.0",
    )


if __name__ == "__main__":
    main()
