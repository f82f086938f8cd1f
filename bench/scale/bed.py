"""The scale bed: a real etcd and kube-apiserver from the test bed, kwok keeping fake Nodes alive.

kwok (built from source by tools/build_tools.py) heartbeats every Node annotated for it, with a
Lease each as kubelets do, and runs any pod bound to one; there are no kubelets, containerd or
network namespaces, so a thousand Nodes cost the host no more than their API traffic.

The apiserver runs with API Priority and Fairness on (the test bed turns it off), because its
per-flow-schema request counts are how the bench tells Cairn's requests from everyone else's.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.testbed import controlplane
from tests.testbed.controlplane import CAIRN_NAMESPACE, ControlPlane
from tests.testbed.process import ManagedProcess
from tests.testbed.tools import tool_path

from ..common import leak_checked
from .objects import KWOK_ANNOTATION, KWOK_VALUE, flow_schema_body, node_body, priority_level_body

FAIRNESS_OFF = "--enable-priority-and-fairness=false"
CONTROLLER_FLOW = "cairn-scale-controller"
AGENTS_FLOW = "cairn-scale-node-agents"
FLOWS = {CONTROLLER_FLOW: "cairn-controller", AGENTS_FLOW: "cairn-node-agent"}
"""Flow schema -> the ServiceAccount whose requests it counts."""
KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
NODE_LEASE_SECONDS = 40
"""kwok's Node Leases last as long as kubelet's do by default."""


class FairControlPlane(ControlPlane):
    """The test bed's control plane, its apiserver started with Priority and Fairness enabled."""

    def _start_apiserver(self) -> None:
        # The bed builds the apiserver's command line inline; swapping one flag as the process is
        # made keeps every other setting the bed's own, instead of a copy that would drift.
        real = controlplane.ManagedProcess
        swapped: list[bool] = []

        def with_fairness(name: str, argv: Sequence[str], **kwargs: Any) -> ManagedProcess:
            if name == "kube-apiserver" and FAIRNESS_OFF in argv:
                argv = [a for a in argv if a != FAIRNESS_OFF] + ["--enable-priority-and-fairness=true"]
                swapped.append(True)
            return real(name, argv, **kwargs)

        controlplane.ManagedProcess = with_fairness  # type: ignore[misc,assignment]
        try:
            super()._start_apiserver()
        finally:
            controlplane.ManagedProcess = real  # type: ignore[misc]
        if not swapped:
            raise RuntimeError(
                f"the test bed's apiserver no longer passes {FAIRNESS_OFF}: bench/scale/bed.py must "
                "learn how it turns Priority and Fairness off, or flow-schema counts are not kept"
            )


class ScaleBed:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-scale-", dir="/var/tmp"))
        self.control_plane = FairControlPlane(self.workdir / "control-plane", run_id)
        self.kwok: ManagedProcess | None = None

    def start(self) -> ScaleBed:
        try:
            self.control_plane.start()
            for body in (priority_level_body(), *self._flow_schemas()):
                self.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(body))
            self.kwok = ManagedProcess(
                "kwok",
                [
                    str(tool_path("kwok")),
                    "--kubeconfig",
                    str(self.control_plane.kubeconfigs["admin"]),
                    "--config",
                    str(KWOK_STAGES),
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_VALUE}",
                    f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                    "--node-ip=10.254.0.1",
                    "--cidr=10.254.128.0/17",
                ],
                run_id=self.run_id,
                log_dir=self.workdir / "logs",
            )
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _flow_schemas() -> Iterable[dict[str, Any]]:
        for flow, account in FLOWS.items():
            yield flow_schema_body(flow, account, CAIRN_NAMESPACE)

    def stop(self) -> None:
        errors = []
        for what, step in (
            ("kwok", lambda: self.kwok and self.kwok.stop()),
            ("control plane", self.control_plane.stop),
        ):
            try:
                step()
            except Exception as error:  # tear down the rest, report every failure
                errors.append(f"{what}: {error}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("scale bed teardown incomplete: " + "; ".join(errors))

    # -- clients ---------------------------------------------------------------------------------

    def api_client(self, identity: str = "admin", pool: int = 32) -> client.ApiClient:
        api = self.control_plane.api_client(identity)
        # The generated client keeps cpu_count * 5 connections; a thread past that opens (and
        # throws away) a fresh TLS connection per request, which would be the bench's own cost.
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = pool
        return api

    def metrics_text(self) -> str:
        cp = self.control_plane
        context = ssl.create_default_context(cafile=str(cp.pki.ca.cert))
        context.load_cert_chain(str(cp.admin.cert), str(cp.admin.key))
        with urllib.request.urlopen(f"{cp.server_url}/metrics", timeout=30, context=context) as response:
            return response.read().decode()

    @staticmethod
    def count(list_call: Callable[..., Any], *args: Any, where: Callable[[dict], bool]) -> int:
        """How many listed objects satisfy `where`, read as raw JSON (10,000 models parse slowly)."""
        body = json.loads(list_call(*args, _preload_content=False).data)
        return sum(1 for item in body.get("items") or [] if where(item))

    # -- nodes -------------------------------------------------------------------------------------

    def add_nodes(self, names: list[str], workers: int = 16) -> None:
        core = client.CoreV1Api(self.api_client(pool=workers + 4))

        def create(name: str) -> None:
            try:
                core.create_node(node_body(name), _preload_content=False)
            except ApiException as error:
                if error.status != 409:
                    raise

        run_all(create, names, workers)

    def wait_nodes_ready(self, count: int, timeout: float) -> None:
        core = client.CoreV1Api(self.api_client())

        def ready(node: dict) -> bool:
            conditions = (node.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        wait_for(lambda: self.count(core.list_node, where=ready) >= count, timeout, f"{count} Nodes Ready")


def run_all(action: Callable[[Any], object], items: Sequence[Any], workers: int) -> None:
    """`action` on every item from a few threads; the first failure is raised after the rest ran."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(action, item) for item in items]:
            future.result()


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"not {what} after {timeout:.0f}s")


@contextmanager
def scale_bed() -> Iterator[ScaleBed]:
    """A scale bed stopped, and checked for leaks, however the benchmark ends."""
    with leak_checked(lambda run_id: ScaleBed(run_id).start(), "scale bench") as bed:
        yield bed
