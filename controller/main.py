"""`cairn-controller`: the CSI Controller and Identity services for the cluster."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from cairn.api.disk import StorageNode
from cairn.api.volume import LocalVolume, PoolClass
from cairn.csi.identity import IdentityService
from cairn.csi.proto import csi_pb2_grpc
from cairn.csi.server import serve

from cairn.kube import ResourceClient, load_api_client
from cairn.logs import setup_logging

from .service import ControllerService

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
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        default_pools = tuple(PoolClass(p.strip()) for p in args.default_pools.split(",") if p.strip())
    except ValueError as error:
        raise SystemExit(f"--default-pools: {error}; valid pools are nvme, ssd, hdd") from None
    api_client = load_api_client(args.kubeconfig)
    volumes = ResourceClient(api_client, LocalVolume)
    storage_nodes = ResourceClient(api_client, StorageNode)
    ready = threading.Event()

    def api_reachable() -> bool:
        if not ready.is_set():
            try:
                storage_nodes.list()
                ready.set()
            except Exception:  # while the API is unreachable, "not ready" is the answer
                log.warning("Kubernetes API not reachable yet", exc_info=True)
        return ready.is_set()

    controller = ControllerService(
        volumes, storage_nodes, default_pools=default_pools, ready_timeout=args.ready_timeout
    )

    def register(server) -> None:
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(api_reachable), server)
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)

    server = serve(args.endpoint, register)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("cairn-controller serving on %s", args.endpoint)
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
