"""The volume populator: a PVC whose dataSourceRef is a Checkpoint or a Dataset gets a volume already
holding it.

external-provisioner leaves such claims alone ("an external populator will provision it"). Cairn
follows the Kubernetes populator protocol, but needs no populator pod: the fill happens in the
node agent that carves the volume, before the volume is Ready.

1. For a pending claim `c` with dataSourceRef {apiGroup cairn.dev, kind Checkpoint or Dataset}, once it can
   be placed (an Immediate class, or the scheduler's selected-node annotation), make a "prime"
   claim in the populator namespace: same class, size, access modes and selected node, annotated
   with the checkpoint to restore and the claim it is for.
2. external-provisioner provisions the prime claim as usual. CreateVolume reads those annotations
   and asks the agent to fill the new volume before reporting it Ready: a checkpoint is restored;
   a dataset is copied from the node's own verified copy (the node joins the swarm first if needed).
3. When the prime claim is Bound, its PV is rebound to `c` (claimRef with c's uid), and the PV
   binder completes the binding. Then the prime claim, now Lost, is deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn import API_GROUP, DRIVER_NAME
from cairn.api.names import POPULATE_FOR_ANNOTATION, POPULATE_FROM_ANNOTATION, PRIME_CLAIM_PREFIX
from cairn.api.volume import PopulateSource
from cairn.background import Coalescing
from cairn.events import EventRecorder
from cairn.informer import Informer, require_synced
from cairn.kube import ResourceClient

log = logging.getLogger("cairn.controller.populator")
SOURCE_KINDS = ("Checkpoint", "Dataset")
SELECTED_NODE = "volume.kubernetes.io/selected-node"


# -- pure decisions --------------------------------------------------------------------------------


def source_ref(claim: client.V1PersistentVolumeClaim) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the Checkpoint or Dataset a claim asks for; None for anything else."""
    ref = claim.spec.data_source_ref
    if ref is None or ref.kind not in SOURCE_KINDS or ref.api_group != API_GROUP:
        return None
    return ref.kind, ref.namespace or claim.metadata.namespace, ref.name


def prime_name(claim: client.V1PersistentVolumeClaim) -> str:
    return f"{PRIME_CLAIM_PREFIX}{claim.metadata.uid}"


def prime_claim(
    claim: client.V1PersistentVolumeClaim, source: tuple[str, str, str], populator_namespace: str
) -> dict[str, Any]:
    annotations = {
        POPULATE_FROM_ANNOTATION: "/".join(source),
        POPULATE_FOR_ANNOTATION: f"{claim.metadata.namespace}/{claim.metadata.name}",
    }
    selected = (claim.metadata.annotations or {}).get(SELECTED_NODE)
    if selected:
        annotations[SELECTED_NODE] = selected
    spec = claim.spec
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": prime_name(claim), "namespace": populator_namespace, "annotations": annotations},
        "spec": {
            "storageClassName": spec.storage_class_name,
            "accessModes": spec.access_modes,
            "volumeMode": spec.volume_mode or "Filesystem",
            "resources": {"requests": dict(spec.resources.requests or {})},
        },
    }


def populate_request(annotations: dict[str, str] | None) -> tuple[PopulateSource, str, str] | None:
    """From a prime claim's annotations: what to restore, and the (namespace, name) it is for."""
    annotations = annotations or {}
    if POPULATE_FROM_ANNOTATION not in annotations or POPULATE_FOR_ANNOTATION not in annotations:
        return None
    kind, _, rest = annotations[POPULATE_FROM_ANNOTATION].partition("/")
    namespace, _, name = rest.partition("/")
    for_namespace, _, for_name = annotations[POPULATE_FOR_ANNOTATION].partition("/")
    if kind not in SOURCE_KINDS or not (namespace and name and for_namespace and for_name):
        raise ValueError(f"malformed populate annotations {annotations[POPULATE_FROM_ANNOTATION]!r}")
    source = PopulateSource.model_validate({"kind": kind, "namespace": namespace, "name": name})
    return source, for_namespace, for_name


class PopulateRefused(ValueError):
    """Populate annotations Cairn did not put there: the claim is provisioned for no one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def trusted_populate_request(
    claim: client.V1PersistentVolumeClaim,
    populator_namespace: str,
    read_claim: Callable[[str, str], client.V1PersistentVolumeClaim | None],
) -> tuple[PopulateSource, str, str] | None:
    """What a claim being provisioned asks to be filled with, if Cairn itself asked for it.

    The annotations are honoured only on a prime claim: in the populator's namespace, named after
    the uid of the claim it names as its target, which must still exist with that uid and ask for
    the same source through its own dataSourceRef, from its own namespace. Anyone can annotate an
    ordinary claim; only Cairn can create claims in its own namespace.
    """
    request = populate_request(claim.metadata.annotations)
    if request is None:
        return None
    namespace, name = claim.metadata.namespace, claim.metadata.name
    if namespace != populator_namespace or not name.startswith(PRIME_CLAIM_PREFIX):
        raise PopulateRefused(
            "PopulateAnnotationRefused",
            f"claim {namespace}/{name} carries {POPULATE_FROM_ANNOTATION} or {POPULATE_FOR_ANNOTATION}, "
            f"which Cairn sets, and honours, only on its own claims in namespace {populator_namespace}; "
            "to fill a claim, set its spec.dataSourceRef to a Checkpoint or Dataset in its namespace",
        )
    source, for_namespace, for_name = request
    target = read_claim(for_namespace, for_name)
    if target is None or PRIME_CLAIM_PREFIX + (target.metadata.uid or "") != name:
        raise PopulateRefused(
            "PopulateTargetMismatch",
            f"prime claim {namespace}/{name} is for {for_namespace}/{for_name}, "
            "which no longer exists with the uid it was made for",
        )
    if source_ref(target) != (source.kind, source.namespace, source.name):
        raise PopulateRefused(
            "PopulateTargetMismatch",
            f"prime claim {namespace}/{name} names {source.kind} {source.namespace}/{source.name}, "
            f"which is not what {for_namespace}/{for_name} asks for in its dataSourceRef",
        )
    if source.namespace != for_namespace:
        raise PopulateRefused(
            "CrossNamespaceSource",
            f"{source.kind} {source.namespace}/{source.name} is in another namespace than "
            f"claim {for_namespace}/{for_name}",
        )
    return request


# -- the loop ------------------------------------------------------------------------------------


def claim_of_interest(claim: dict[str, Any], populator_namespace: str) -> bool:
    """A claim asking for a Cairn Checkpoint or Dataset, or one of the populator's own prime claims.

    Read from the raw object, so the cache keeps (and parses into models) only these: the watch sees
    every claim in the cluster, as no server-side selector can pick a data source.
    """
    metadata = claim.get("metadata") or {}
    name = str(metadata.get("name", ""))
    if metadata.get("namespace") == populator_namespace and name.startswith(PRIME_CLAIM_PREFIX):
        return True
    ref = (claim.get("spec") or {}).get("dataSourceRef") or {}
    return ref.get("apiGroup") == API_GROUP and ref.get("kind") in SOURCE_KINDS


def claims_of_interest(
    convert: Callable[[dict[str, Any]], client.V1PersistentVolumeClaim], populator_namespace: str
) -> Callable[[dict[str, Any]], client.V1PersistentVolumeClaim | None]:
    """The converter of the populator's claim cache: a model for a claim of interest, else nothing."""

    def keep(claim: dict[str, Any]) -> client.V1PersistentVolumeClaim | None:
        return convert(claim) if claim_of_interest(claim, populator_namespace) else None

    return keep


@dataclass
class VolumePopulator:
    core: client.CoreV1Api
    claims: Informer[client.V1PersistentVolumeClaim]
    """Claims of interest (`claims_of_interest`), from one watch of every claim."""
    storage_classes: Informer[client.V1StorageClass]
    checkpoints: ResourceClient
    datasets: ResourceClient
    events: EventRecorder
    namespace: str
    """Where prime claims live: the controller's own namespace, invisible to users."""
    period: float = 30.0
    """A round reads the caches; this one re-runs what a missed wake-up would leave waiting."""
    _warned: set[str] = field(default_factory=set)

    def run(self, stop: threading.Event) -> None:
        """A round when a claim it acts on changes (at most every 0.2 s), and every `period`."""
        rounds = Coalescing("populator round", self.sync, stop, min_interval=0.2, period=self.period)
        wake = rounds.start().trigger
        self.claims.add_handler(lambda _kind, _claim: wake())
        self.storage_classes.add_handler(lambda _kind, _class: wake())
        stop.wait()

    def sync(self) -> None:
        require_synced(self.claims, self.storage_classes)
        claims = self.claims.items()
        by_key = {(c.metadata.namespace, c.metadata.name): c for c in claims}
        for claim in claims:
            source = source_ref(claim)
            if source is not None and not claim.spec.volume_name and self._ours(claim):
                self._populate(claim, source)
        for claim in claims:
            if claim.metadata.namespace == self.namespace and claim.metadata.name.startswith(
                PRIME_CLAIM_PREFIX
            ):
                self._finish_prime(claim, by_key)

    def _ours(self, claim: client.V1PersistentVolumeClaim) -> bool:
        if not claim.spec.storage_class_name:
            return False
        storage_class = self.storage_classes.get(claim.spec.storage_class_name)
        return storage_class is not None and storage_class.provisioner == DRIVER_NAME

    def _populate(self, claim: client.V1PersistentVolumeClaim, source: tuple[str, str, str]) -> None:
        key = f"{claim.metadata.namespace}/{claim.metadata.name}"
        kind, namespace, name = source
        if namespace != claim.metadata.namespace:
            self._warn_once(claim, "CrossNamespaceSource", f"a {kind} in another namespace cannot be used")
            return
        found = self.checkpoints if kind == "Checkpoint" else self.datasets
        if found.get(name, namespace=namespace) is None:
            self._warn_once(claim, f"{kind}NotFound", f"{kind} {namespace}/{name} does not exist; waiting")
            return
        if self._binding_waits_for_node(claim):
            return  # WaitForFirstConsumer: the scheduler has not picked a node yet
        prime = prime_name(claim)
        existing = self.claims.get(prime, self.namespace)
        if existing is None:
            try:
                self.core.create_namespaced_persistent_volume_claim(
                    self.namespace, prime_claim(claim, source, self.namespace)
                )
            except ApiException as error:
                if error.status == 409:
                    return  # made by the previous round; its watch event has not arrived yet
                raise
            self._event(claim, "Populating", f"filling a new volume from {kind} {namespace}/{name}")
            log.info("claim %s: populating from %s %s/%s", key, kind, namespace, name)
            return
        if existing.status.phase != "Bound" or not existing.spec.volume_name:
            return
        volume = self.core.read_persistent_volume(existing.spec.volume_name)
        ref = volume.spec.claim_ref
        if ref is not None and ref.uid == claim.metadata.uid:
            return  # rebound already; the PV binder finishes the claim's side
        self.core.patch_persistent_volume(
            volume.metadata.name,
            {
                "spec": {
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": claim.metadata.namespace,
                        "name": claim.metadata.name,
                        "uid": claim.metadata.uid,
                        "resourceVersion": claim.metadata.resource_version,
                    }
                }
            },
        )
        self._event(
            claim,
            "Populated",
            f"volume {volume.metadata.name} holds {kind} {namespace}/{name}, verified; binding it",
        )
        log.info("claim %s: volume %s populated, rebound", key, volume.metadata.name)

    def _binding_waits_for_node(self, claim: client.V1PersistentVolumeClaim) -> bool:
        storage_class = self.storage_classes.get(claim.spec.storage_class_name)
        delayed = storage_class is not None and storage_class.volume_binding_mode == "WaitForFirstConsumer"
        return delayed and SELECTED_NODE not in (claim.metadata.annotations or {})

    def _finish_prime(
        self, prime: client.V1PersistentVolumeClaim, claims: dict[tuple[str, str], Any]
    ) -> None:
        request = populate_request(prime.metadata.annotations)
        if request is None:
            return
        _, namespace, name = request
        target = claims.get((namespace, name))
        if target is None:
            # The claim went away first; deleting the prime releases the volume to its reclaim policy.
            self.core.delete_namespaced_persistent_volume_claim(prime.metadata.name, self.namespace)
            return
        handed_over = target.spec.volume_name and target.spec.volume_name == prime.spec.volume_name
        if handed_over and target.status.phase == "Bound":
            # The prime claim is Lost now; its volume belongs to the user's claim.
            self.core.delete_namespaced_persistent_volume_claim(prime.metadata.name, self.namespace)

    def _warn_once(self, claim: client.V1PersistentVolumeClaim, reason: str, message: str) -> None:
        key = f"{claim.metadata.uid}/{reason}"
        if key not in self._warned:
            self._warned.add(key)
            self._event(claim, reason, message, warning=True)

    def _event(
        self, claim: client.V1PersistentVolumeClaim, reason: str, message: str, *, warning: bool = False
    ) -> None:
        involved = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "name": claim.metadata.name,
            "namespace": claim.metadata.namespace,
            "uid": claim.metadata.uid,
        }
        self.events.record(involved, reason, message, warning=warning)
