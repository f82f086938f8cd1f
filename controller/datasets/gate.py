"""The gate opener: lifts `cairn.dev/dataset` from pods whose data is ready, sending each where it is.

Admission (the chart's MutatingAdmissionPolicy) gives a pod that names its Datasets the scheduling
gate and the label `cairn.dev/waiting-for-data`, so this loop lists only waiting pods, never every
pod in the cluster. The decisions are in gating.py; this file reads and writes the API.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.api.dataset import Dataset, DatasetStatus
from cairn.api.names import DATASET_GATE, WAITING_FOR_DATA_LABEL
from cairn.background import Coalescing
from cairn.controller import metrics
from cairn.controller.datasets.gating import (
    DatasetReadiness,
    GateDecision,
    GateInputError,
    claim_names,
    consumed_datasets,
    gate_decision,
    narrowed_affinity,
    without_gate,
)
from cairn.events import EventRecorder
from cairn.informer import CachedResources, Informer, require_synced, trigger_on
from cairn.kube import Typed

log = logging.getLogger("cairn.controller.datasets.gate")


@dataclass
class DatasetGate:
    core: client.CoreV1Api
    datasets: CachedResources[Dataset]
    waiting_pods: Informer[dict[str, Any]]
    """Pods labelled as waiting for data, as the apiserver sends them (the gate works on raw pods)."""
    events: EventRecorder
    period: float = 2.0
    _told: dict[str, str] = field(default_factory=dict)
    """Per pod uid, the last reason and message its Event said, so a waiting pod is told each change once."""

    def run(self, stop: threading.Event) -> None:
        """A round whenever a Dataset's readiness changes, and every `period` for new waiting pods."""
        rounds = Coalescing("dataset gate round", self.sync, stop, min_interval=0.2, period=self.period)
        wake = rounds.start().trigger
        trigger_on(self.datasets.cache, readiness_shape, wake)
        self.waiting_pods.add_handler(lambda _kind, _pod: wake())
        stop.wait()

    def sync(self) -> None:
        require_synced(self.waiting_pods)
        waiting: Counter[tuple[str, str]] = Counter()
        live: set[str] = set()
        for raw in self.waiting_pods.items():
            live.add(raw["metadata"].get("uid", ""))
            try:
                for dataset in self.reconcile(raw):
                    waiting[(raw["metadata"]["namespace"], dataset)] += 1
            except Exception:
                meta = raw["metadata"]
                log.warning("gate of pod %s/%s failed", meta["namespace"], meta["name"], exc_info=True)
        self._told = {uid: said for uid, said in self._told.items() if uid in live}
        metrics.GATED_PODS.set_all(waiting)
        self._publish_waiting(waiting)

    def reconcile(self, pod: dict[str, Any]) -> set[str]:
        """Open the gate if the data is ready, else say why not; returns the Datasets still awaited."""
        meta, spec = pod["metadata"], pod.get("spec", {})
        namespace = meta["namespace"]
        if not any(g.get("name") == DATASET_GATE for g in spec.get("schedulingGates") or []):
            self._drop_label(pod)  # someone else lifted it; stop listing this pod
            return set()
        mounted = claim_names(spec)
        claims = {name: self._claim(namespace, name) for name in mounted}
        try:
            names = consumed_datasets(meta.get("annotations"), mounted, claims)
        except GateInputError as error:
            self._tell(pod, GateDecision(False, (), "InvalidDatasetAnnotation", str(error)), warning=True)
            return set()
        readiness = []
        for name in names:
            found = self.datasets.get(name, namespace=namespace)
            readiness.append(
                DatasetReadiness(name, found.model.status, found.model.spec.ready_when)
                if found is not None
                else DatasetReadiness(name, None)
            )
        decision = gate_decision(namespace, readiness)
        if not decision.open:
            self._tell(pod, decision)
            return names
        self._open(pod, decision)
        return set()

    def _claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        return self.core.api_client.sanitize_for_serialization(claim)

    def _open(self, pod: dict[str, Any], decision: GateDecision) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        # One JSON patch, guarded by the resource version: the affinity is narrowed in the same write
        # that lifts the gate, so the scheduler never sees the pod ungated and unconfined.
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {
                "op": "replace",
                "path": "/spec/schedulingGates",
                "value": without_gate(spec["schedulingGates"], DATASET_GATE),
            },
            {
                "op": "add",
                "path": "/spec/affinity",
                "value": narrowed_affinity(spec.get("affinity"), decision.nodes),
            },
            {"op": "remove", "path": f"/metadata/labels/{_pointer(WAITING_FOR_DATA_LABEL)}"},
        ]
        try:
            self.core.patch_namespaced_pod(meta["name"], meta["namespace"], patch)
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or changed under us: the next round sees it anew
                log.info(
                    "gate of pod %s/%s not lifted this round: %s",
                    meta["namespace"],
                    meta["name"],
                    _api_message(error),
                )
                return
            raise
        self._told.pop(meta.get("uid", ""), None)
        created = pod["metadata"].get("creationTimestamp")
        if created:
            waited = datetime.now(UTC) - datetime.fromisoformat(str(created).replace("Z", "+00:00"))
            metrics.GATE_WAIT_SECONDS.observe(max(0.0, waited.total_seconds()))
        log.info("pod %s/%s: %s", meta["namespace"], meta["name"], decision.message)
        self.events.record(_involved(pod), decision.reason, decision.message)

    def _drop_label(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        patch = [{"op": "remove", "path": f"/metadata/labels/{_pointer(WAITING_FOR_DATA_LABEL)}"}]
        try:
            self.core.patch_namespaced_pod(meta["name"], meta["namespace"], patch)
        except ApiException as error:
            if error.status not in (404, 422):
                raise

    def _tell(self, pod: dict[str, Any], decision: GateDecision, *, warning: bool = False) -> None:
        uid = pod["metadata"].get("uid", "")
        said = f"{decision.reason}: {decision.message}"
        if self._told.get(uid) == said:
            return
        self._told[uid] = said
        self.events.record(_involved(pod), decision.reason, decision.message, warning=warning)

    def _publish_waiting(self, waiting: Counter[tuple[str, str]]) -> None:
        """Each Dataset's count of pods waiting for it, for `kubectl get datasets`."""
        for item in self.datasets.list():
            namespace = item.metadata.get("namespace", "")
            count = waiting.get((namespace, item.name), 0)
            if item.model.status.waiting_pods != count:
                self.datasets.patch_status_fields(item.name, {"waitingPods": count}, namespace=namespace)


def readiness_shape(item: Typed[Dataset]) -> object:
    status: DatasetStatus = item.model.status
    return (item.model.spec.ready_when, status.digest, tuple(status.target_nodes), status.ready_count)


def _pointer(key: str) -> str:
    """A label key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _involved(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
    }


def _api_message(error: ApiException) -> str:
    """The apiserver's own sentence for a refusal, which names the field or policy at fault."""
    try:
        return str(json.loads(error.body).get("message", error.reason))
    except (TypeError, ValueError):
        return str(error.reason)
