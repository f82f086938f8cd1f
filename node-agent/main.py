"""`cairn-node-agent`: one per node. Owns the node's pools and serves the CSI Node service."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from cairn.api.disk import AgentEndpoints, StorageNode
from cairn.api.volume import LocalVolume
from cairn.csi.identity import IdentityService
from cairn.csi.proto import csi_pb2_grpc
from cairn.csi.server import serve

from cairn.kube import ResourceClient, load_api_client
from cairn.logs import setup_logging

from .lvm import Lvm
from .node_service import NodeService
from .pools import ensure_pools, parse_pool_spec
from .storage_node import StorageNodePublisher
from .volume_reconciler import VolumeReconciler

log = logging.getLogger("cairn.node")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cairn-node-agent", description=__doc__)
    parser.add_argument("--node-name", required=True, help="this node's Kubernetes Node name")
    parser.add_argument("--endpoint", default="unix:///csi/csi.sock", help="CSI socket (unix:///path)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file; in-cluster config if unset")
    parser.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="CLASS=DEV[,DEV...]",
        help="devices of a pool, e.g. nvme=/dev/nvme1n1,/dev/nvme2n1 (repeatable)",
    )
    parser.add_argument(
        "--lvm-system-dir",
        default=None,
        help="LVM_SYSTEM_DIR for lvm commands (default: the host's /etc/lvm)",
    )
    parser.add_argument("--max-volumes", type=int, default=1000, help="volumes this node may carry")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


class Debounced:
    """Runs `action` in the background at most every `interval` seconds after `trigger()`."""

    def __init__(self, action, interval: float, stop: threading.Event) -> None:
        self._action = action
        self._interval = interval
        self._stop = stop
        self._dirty = threading.Event()
        threading.Thread(target=self._loop, name="debounced", daemon=True).start()

    def trigger(self) -> None:
        self._dirty.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(timeout=1.0):
                self._dirty.clear()
                try:
                    self._action()
                except Exception:  # the next trigger retries
                    log.warning("background publish failed", exc_info=True)
                self._stop.wait(self._interval)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        pools = parse_pool_spec(args.pool)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    devices = [d for listed in pools.values() for d in listed]
    # lvm sees only this agent's pool devices: it never scans, or trips over, other disks.
    lvm = Lvm(devices=devices, system_dir=args.lvm_system_dir)
    log.info("LVM activation mode: %s", lvm.mode.value)
    ensure_pools(lvm, pools)

    api_client = load_api_client(args.kubeconfig)
    stop = threading.Event()
    publisher = StorageNodePublisher(
        args.node_name,
        lvm,
        ResourceClient(api_client, StorageNode),
        list(pools),
        AgentEndpoints(csi_socket=args.endpoint),
    )
    publish_soon = Debounced(publisher.publish, 0.5, stop)
    reconciler = VolumeReconciler(
        args.node_name, lvm, ResourceClient(api_client, LocalVolume), on_change=publish_soon.trigger
    )
    publisher.publish()
    ready = threading.Event()

    def reconcile_forever() -> None:
        ready.set()
        reconciler.run(stop)

    threading.Thread(target=reconcile_forever, name="volumes", daemon=True).start()
    node = NodeService(args.node_name, reconciler.lookup, reconciler.health, max_volumes=args.max_volumes)

    def register(server) -> None:
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(ready.is_set), server)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)

    server = serve(args.endpoint, register)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("cairn-node-agent for node %s serving on %s", args.node_name, args.endpoint)
    stop.wait()
    publisher.mark_not_ready()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
