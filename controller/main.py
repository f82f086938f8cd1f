"""`cairn-controller`: the CSI Controller and Identity services for the cluster."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from kubernetes import client

from cairn.api.checkpoint import Checkpoint
from cairn.api.dataset import Dataset
from cairn.api.disk import StorageNode
from cairn.api.names import WAITING_FOR_DATA_LABEL
from cairn.api.volume import LocalVolume, PoolClass
from cairn.controller import metrics
from cairn.controller.datasets.claim_gate import ClaimGate
from cairn.controller.datasets.controller import DatasetController
from cairn.controller.datasets.eviction import Watermarks
from cairn.controller.datasets.gate import DatasetGate
from cairn.controller.datasets.swarm_authority import SEED_BYTES, SWARM_AUTHORITY_SECRET, SwarmAuthority
from cairn.controller.nodes.lifecycle import NodeLifecycle, node_lease_sighting
from cairn.controller.populator import VolumePopulator, claims_of_interest
from cairn.controller.volumes.service import ControllerService
from cairn.csi.identity import IdentityService
from cairn.csi.proto import csi_pb2_grpc
from cairn.csi.server import serve
from cairn.events import EventRecorder
from cairn.informer import CachedResources, Informer, Informers, as_model
from cairn.kube import ResourceClient, claim_reader, load_api_client, made_once_secret
from cairn.leader import LeaseElector
from cairn.logs import setup_logging

log = logging.getLogger("cairn.controller")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cairn-controller", description=__doc__)
    parser.add_argument("--endpoint", default="unix:///csi/csi.sock", help="CSI socket (unix:///path)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file; in-cluster config if unset")
    parser.add_argument(
        "--default-pools",
        default="nvme",
        help="pools to try, in order, when a StorageClass names none (e.g. nvme,ssd)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for a node agent to carve or remove a volume",
    )
    parser.add_argument(
        "--populator-namespace",
        default="cairn-system",
        help="namespace for the claims the volume populator provisions before handing them over",
    )
    parser.add_argument(
        "--no-populator",
        action="store_true",
        help="do not fill claims whose dataSourceRef is a Checkpoint",
    )
    parser.add_argument("--metrics-address", default=None, help="host:port to serve /metrics on")
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        help="run the dataset and populator loops only while holding the Lease (for several replicas)",
    )
    parser.add_argument(
        "--leader-elect-namespace", default="cairn-system", help="namespace of the cairn-controller Lease"
    )
    parser.add_argument(
        "--node-lease-namespace",
        default="cairn-system",
        help="namespace of the agents' per-node Leases (cairn-node-<node>)",
    )
    parser.add_argument(
        "--dataset-eviction-high-watermark",
        type=float,
        default=0.9,
        help="fraction of a node's pool in use above which Dataset copies no one uses are evicted",
    )
    parser.add_argument(
        "--dataset-eviction-low-watermark",
        type=float,
        default=0.8,
        help="fraction of the pool that eviction brings it down to, least recently used copy first",
    )
    parser.add_argument(
        "--no-dataset-eviction", action="store_true", help="never evict a Dataset copy to make room"
    )
    parser.add_argument(
        "--claim-gate-address",
        default="",
        help="host:port to serve the admission webhook gating pods whose claims come from a Dataset",
    )
    parser.add_argument(
        "--claim-gate-certificate", default="", help="PEM serving certificate of that webhook"
    )
    parser.add_argument("--claim-gate-key", default="", help="PEM key of that certificate")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.claim_gate_address and not (args.claim_gate_certificate and args.claim_gate_key):
        parser.error("--claim-gate-address needs --claim-gate-certificate and --claim-gate-key")
    try:
        args.watermarks = (
            None
            if args.no_dataset_eviction
            else Watermarks(args.dataset_eviction_high_watermark, args.dataset_eviction_low_watermark)
        )
    except ValueError as error:
        parser.error(f"--dataset-eviction-*-watermark: {error}")
    return args


def node_name_and_labels(node: dict[str, Any]) -> tuple[str, dict[str, str]]:
    metadata = node["metadata"]
    return str(metadata["name"]), dict(metadata.get("labels") or {})


def start_cluster_loops(
    args: argparse.Namespace,
    api_client: client.ApiClient,
    informers: Informers,
    stop: threading.Event,
) -> None:
    """The Dataset controller and the volume populator: one set per cluster.

    Every loop reads shared informer caches (cairn/informer.py), so none lists anything per pass.
    """
    core = client.CoreV1Api(api_client)
    volumes = informers.resources(LocalVolume)
    storage_nodes = informers.resources(StorageNode)
    datasets_cache = informers.resources(Dataset)
    nodes: Informer[tuple[str, dict[str, str]]] = informers.core(
        "nodes", core.list_node, node_name_and_labels
    )
    seed = made_once_secret(
        api_client,
        args.populator_namespace,
        SWARM_AUTHORITY_SECRET,
        "seed",
        lambda: secrets.token_bytes(SEED_BYTES),
    )
    datasets = DatasetController(
        datasets_cache,
        volumes,
        storage_nodes,
        nodes,
        core,
        SwarmAuthority(seed),
        watermarks=args.watermarks,
        events=EventRecorder(api_client, "cairn-controller"),
    )
    threading.Thread(target=datasets.run, args=(stop,), name="datasets", daemon=True).start()
    waiting_pods = informers.core(
        "pods",
        core.list_pod_for_all_namespaces,
        lambda pod: pod,
        label_selector=f"{WAITING_FOR_DATA_LABEL}=true",
    )
    gate = DatasetGate(core, datasets_cache, waiting_pods, EventRecorder(api_client, "cairn-controller"))
    threading.Thread(target=gate.run, args=(stop,), name="dataset-gate", daemon=True).start()
    leases = informers.core(
        "leases",
        client.CoordinationV1Api(api_client).list_namespaced_lease,
        node_lease_sighting,
        args=(args.node_lease_namespace,),
    )
    lifecycle = NodeLifecycle(
        storage_nodes,
        volumes,
        ResourceClient(api_client, Checkpoint),
        datasets_cache,
        leases,
        nodes,
        core,
        EventRecorder(api_client, "cairn-controller"),
    )
    threading.Thread(target=lifecycle.run, args=(stop,), name="node-lifecycle", daemon=True).start()
    if not args.no_populator:
        populator = VolumePopulator(
            core,
            informers.core(
                "persistentvolumeclaims",
                core.list_persistent_volume_claim_for_all_namespaces,
                claims_of_interest(as_model(api_client, "V1PersistentVolumeClaim"), args.populator_namespace),
            ),
            informers.core(
                "storageclasses",
                client.StorageV1Api(api_client).list_storage_class,
                as_model(api_client, "V1StorageClass"),
            ),
            ResourceClient(api_client, Checkpoint),
            ResourceClient(api_client, Dataset),
            EventRecorder(api_client, "cairn-controller"),
            args.populator_namespace,
        )
        threading.Thread(target=populator.run, args=(stop,), name="populator", daemon=True).start()


def run_cluster_loops(
    args: argparse.Namespace,
    api_client: client.ApiClient,
    informers: Informers,
    stop: threading.Event,
) -> None:
    """Every replica serves CSI for its own sidecars; only the leader runs the cluster-wide loops."""

    def start() -> None:
        start_cluster_loops(args, api_client, informers, stop)

    if not args.leader_elect:
        start()
        return
    elector = LeaseElector(
        client.CoordinationV1Api(api_client),
        args.leader_elect_namespace,
        "cairn-controller",
        f"{socket.gethostname()}-{os.getpid()}",
    )
    threading.Thread(target=elector.run, args=(start, stop), name="leader", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        default_pools = tuple(PoolClass(p.strip()) for p in args.default_pools.split(",") if p.strip())
    except ValueError as error:
        raise SystemExit(f"--default-pools: {error}; valid pools are nvme, ssd, hdd") from None
    api_client = load_api_client(args.kubeconfig)
    stop = threading.Event()
    informers = Informers(api_client, stop)
    volumes: CachedResources[LocalVolume] = informers.resources(LocalVolume)
    storage_nodes: CachedResources[StorageNode] = informers.resources(StorageNode)
    if args.metrics_address:
        metrics.serve(args.metrics_address, volumes)
    ready = threading.Event()

    def api_reachable() -> bool:
        if not ready.is_set():
            try:
                ResourceClient(api_client, StorageNode).list()
                ready.set()
            except Exception:  # while the API is unreachable, "not ready" is the answer
                log.warning("Kubernetes API not reachable yet", exc_info=True)
        return ready.is_set()

    controller = ControllerService(
        volumes,
        storage_nodes,
        default_pools=default_pools,
        ready_timeout=args.ready_timeout,
        read_claim=claim_reader(api_client),
        populator_namespace=args.populator_namespace,
        events=EventRecorder(api_client, "cairn-controller"),
    )
    run_cluster_loops(args, api_client, informers, stop)
    if args.claim_gate_address:
        # Every replica answers: the webhook is stateless, and the Service spreads the apiserver's calls.
        threading.Thread(
            target=ClaimGate(client.CoreV1Api(api_client)).serve,
            args=(
                args.claim_gate_address,
                Path(args.claim_gate_certificate),
                Path(args.claim_gate_key),
                stop,
            ),
            name="claim-gate",
            daemon=True,
        ).start()

    def register(server) -> None:
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(api_reachable), server)
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)

    server = serve(args.endpoint, register)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("cairn-controller serving on %s", args.endpoint)
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
