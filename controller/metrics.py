"""The controller's Prometheus metrics: how CreateVolume fares, volumes by phase, datasets' progress.

The node agents report disks, pools, checkpoints and bytes moved (node-agent/metrics.py); the
controller adds what only it sees: the cluster's volumes and each Dataset's summary.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import prometheus_client
from prometheus_client import REGISTRY, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cairn.api.dataset import DatasetPhase
from cairn.api.volume import PoolClass, VolumePhase
from cairn.csi.errors import CsiError
from cairn.kube import ResourceClient

log = logging.getLogger("cairn.controller.metrics")

CREATE_VOLUME_SECONDS = Histogram(
    "cairn_controller_create_volume_seconds",
    "CreateVolume calls, from request to the agent's Ready or the error; code is the gRPC status.",
    ["code"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
DATASETS = Gauge("cairn_datasets", "Datasets by phase.", ["phase"])
DATASET_READY_NODES = Gauge(
    "cairn_dataset_ready_nodes", "Target nodes holding a verified copy.", ["namespace", "dataset"]
)
DATASET_TARGET_NODES = Gauge(
    "cairn_dataset_target_nodes", "Nodes a dataset is meant to be on.", ["namespace", "dataset"]
)
DATASET_EVICTIONS = prometheus_client.Counter(
    "cairn_dataset_evictions_total",
    "Dataset copies evicted to make room in a pool above its high watermark.",
    ["node", "pool"],
)
GATE_WAIT_SECONDS = Histogram(
    "cairn_dataset_gate_wait_seconds",
    "From a gated pod's creation to its gate lifting, for pods that waited for a Dataset.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600),
)


class GatedPods:
    """Pods held by the dataset gate, per Dataset they wait for; a pod waiting for two counts in each."""

    def __init__(self) -> None:
        self.gauge = Gauge(
            "cairn_dataset_gated_pods", "Pods waiting for a Dataset to be ready.", ["namespace", "dataset"]
        )
        self._shown: set[tuple[str, str]] = set()

    def set_all(self, waiting: Counter[tuple[str, str]]) -> None:
        for key in self._shown - set(waiting):
            self.gauge.remove(*key)
        for (namespace, dataset), count in waiting.items():
            self.gauge.labels(namespace=namespace, dataset=dataset).set(count)
        self._shown = set(waiting)


GATED_PODS = GatedPods()


def time_create_volume(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ControllerService.CreateVolume: observe its duration under its outcome's code."""

    @functools.wraps(handler)
    def timed(self, request, context):
        started = time.monotonic()
        code = grpc.StatusCode.INTERNAL  # what the server answers for anything unexpected
        try:
            response = handler(self, request, context)
            code = grpc.StatusCode.OK
            return response
        except CsiError as error:
            code = error.code
            raise
        finally:
            CREATE_VOLUME_SECONDS.labels(code=code.name).observe(time.monotonic() - started)

    return timed


class DatasetSummaries:
    """The controller's per-Dataset summary as gauges; a round ends by dropping datasets now gone."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], DatasetPhase] = {}

    def record(self, namespace: str, name: str, phase: DatasetPhase, ready: int, targets: int) -> None:
        self._phases[(namespace, name)] = phase
        DATASET_READY_NODES.labels(namespace=namespace, dataset=name).set(ready)
        DATASET_TARGET_NODES.labels(namespace=namespace, dataset=name).set(targets)

    def end_round(self, present: Iterable[tuple[str, str]]) -> None:
        present = set(present)
        for key in [k for k in self._phases if k not in present]:
            del self._phases[key]
            DATASET_READY_NODES.remove(*key)
            DATASET_TARGET_NODES.remove(*key)
        counts = Counter(self._phases.values())
        for phase in DatasetPhase:
            DATASETS.labels(phase=phase.value).set(counts[phase])


DATASET_SUMMARIES = DatasetSummaries()


class VolumeCollector(Collector):
    """LocalVolumes by phase and pool, listed when Prometheus scrapes (one list per scrape)."""

    def __init__(self, volumes: ResourceClient) -> None:
        self.volumes = volumes

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()  # so registering does not list volumes

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "cairn_controller_volumes",
            "LocalVolumes (claims' and datasets' copies) by phase and pool.",
            labels=["phase", "pool"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            items = self.volumes.list()
        except Exception:  # an unreachable API leaves the series out; the scrape still succeeds
            log.warning("listing volumes for /metrics failed", exc_info=True)
            return
        counts = Counter((v.model.status.phase, v.model.spec.pool) for v in items)
        family = self._family()
        for phase in VolumePhase:
            for pool in PoolClass:
                family.add_metric([phase.value, pool.value], counts[(phase, pool)])
        yield family


def serve(address: str, volumes: ResourceClient) -> None:
    REGISTRY.register(VolumeCollector(volumes))
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")
