"""The CSI Controller service: volumes are LocalVolume objects that node agents carve.

CreateVolume chooses a node and pool from StorageNode reports, creates the LocalVolume under
a name derived from the CSI name (so a retried call finds its own earlier work) and waits
for the owning agent to report Ready or Failed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn import TOPOLOGY_KEY
from cairn.api.disk import StorageNode
from cairn.api.names import NODE_LABEL, POOL_LABEL, POOL_PARAMETER, is_volume_name, volume_name
from cairn.api.volume import (
    LocalVolume,
    LocalVolumeSpec,
    PoolClass,
    PopulateSource,
    VolumeAccess,
    VolumePhase,
)
from cairn.controller import metrics
from cairn.controller.populator import PopulateRefused, trusted_populate_request
from cairn.controller.volumes.capabilities import access_type_of, unsupported_capability
from cairn.controller.volumes.parameters import memory_volume_problem, parse_parameters
from cairn.controller.volumes.placement import NodeCapacity, choose_placement, clone_target
from cairn.controller.volumes.sizing import resolve_size, size_fits_range
from cairn.csi.errors import (
    Aborted,
    AlreadyExists,
    CsiError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    require,
)
from cairn.csi.proto import csi_pb2, csi_pb2_grpc
from cairn.events import EventRecorder
from cairn.fault_injection import crash_point
from cairn.informer import CachedResources
from cairn.kube import ResourceClient, Typed
from cairn.units import human_bytes

log = logging.getLogger("cairn.controller")
_RPC = csi_pb2.ControllerServiceCapability.RPC
VOLUME_CONTEXT_POOL = "cairn.dev/pool"
VOLUME_CONTEXT_NODE = "cairn.dev/node"
# Failure reasons an agent reports that mean "no room", which the CO should see as such.
NO_ROOM_REASONS = {"InsufficientSpace", "NotContiguous"}
# LVM's default extent size, for a pool whose report is not there to say otherwise.
DEFAULT_EXTENT_BYTES = 4 * 1024 * 1024
WAITING_CALLS = 12
"""Calls that may wait on agents at once: csi/server.py serves 16, and Probe and GetCapacity must
still find a worker while every agent is slow."""
DEADLINE_MARGIN_SECONDS = 1.0


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        volumes: ResourceClient,
        storage_nodes: CachedResources,
        *,
        default_pools: tuple[PoolClass, ...] = (PoolClass.NVME,),
        ready_timeout: float = 120.0,
        read_claim: Callable[[str, str], client.V1PersistentVolumeClaim | None] = lambda namespace, name: (
            None
        ),
        populator_namespace: str = "cairn-system",
        events: EventRecorder | None = None,
    ) -> None:
        self.read_claim = read_claim
        """The claim a volume is for: its annotations are how the populator says what to restore."""
        self.populator_namespace = populator_namespace
        self.events = events
        self.volumes = volumes
        self.storage_nodes = storage_nodes
        self.default_pools = default_pools
        self.ready_timeout = ready_timeout
        self._waiting = threading.BoundedSemaphore(WAITING_CALLS)

    # -- CreateVolume ------------------------------------------------------------------------

    @metrics.time_create_volume
    def CreateVolume(self, request, context: grpc.ServicerContext):
        require(request.name, "CreateVolume needs a name")
        require(request.volume_capabilities, "CreateVolume needs volume_capabilities")
        source = self._clone_source(request)
        problem = unsupported_capability(request.volume_capabilities)
        if problem:
            raise InvalidArgument(problem)
        access, fs_type = access_type_of(request.volume_capabilities)
        params = parse_parameters(dict(request.parameters), self.default_pools)
        fs_type = fs_type or params.fs_type
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes

        name = volume_name(request.name)
        existing = self.volumes.get(name)
        if existing is not None:
            self._check_compatible(existing, request.name, required, limit, access)
            if existing.model.status.phase != VolumePhase.FAILED:
                return self._volume_response(self._wait_settled(name, context))
            # A failed attempt leaves nothing on disk; start over, perhaps on another node.
            self._delete_and_wait(name, context)

        nodes = [NodeCapacity.from_storage_node(n.model) for n in self.storage_nodes.list()]
        requirements = request.accessibility_requirements
        preferred = [dict(t.segments) for t in requirements.preferred]
        requisite = [dict(t.segments) for t in requirements.requisite]
        if source is not None:
            target = clone_target(
                source.name,
                source.model.spec,
                source.model.status.capacity_bytes or source.model.spec.size_bytes,
                access,
                requisite,
                required,
                limit,
            )
            required = target.required_bytes
            nodes = [n for n in nodes if n.name == target.node]
            params = replace(params, pools=(target.pool,))
            preferred, requisite = [], []
        if problem := memory_volume_problem(params.pools, access, source.name if source else None):
            raise InvalidArgument(problem)
        if PoolClass.MEMORY in params.pools:
            fs_type = None  # a tmpfs is the filesystem; any fsType the CO passes is moot
        placement = choose_placement(
            nodes, params.pools, required, limit, preferred=preferred, requisite=requisite
        )
        populate, pvc_namespace, pvc_name = self._populate_request(params.pvc_namespace, params.pvc_name)
        spec = LocalVolumeSpec(
            csi_name=request.name,
            node_name=placement.node,
            pool=placement.pool,
            size_bytes=placement.size_bytes,
            access=access,
            fs_type=fs_type,
            checkpoint_policy=params.checkpoint_policy,
            pvc_name=pvc_name,
            pvc_namespace=pvc_namespace,
            source_volume=source.name if source is not None else None,
            populate_from=populate,
        )
        try:
            self.volumes.create(
                name,
                LocalVolume(spec=spec),
                labels={NODE_LABEL: placement.node, POOL_LABEL: placement.pool.value},
            )
        except ApiException as error:
            if error.status != 409:
                raise
            # A concurrent call with the same name won the race; its result is ours.
        crash_point("controller.create.object-written")
        log.info(
            "volume %s (%s): %s on node %s pool %s",
            name,
            request.name,
            human_bytes(spec.size_bytes),
            placement.node,
            placement.pool.value,
        )
        return self._volume_response(self._wait_settled(name, context))

    @contextlib.contextmanager
    def _waiting_for_agent(self, name: str, context: grpc.ServicerContext | None) -> Iterator[float]:
        """A wait slot and the monotonic deadline of the wait: ours, or the caller's if sooner.

        A wait holds a gRPC worker; unbounded, calls to unresponsive agents would take them all,
        and Probe would time out with the rest. The object is written either way, so a call
        turned away here is simply retried by the CO and finds it.
        """
        if not self._waiting.acquire(blocking=False):
            raise Aborted(
                f"{WAITING_CALLS} calls already wait for node agents; volume {name} is recorded and "
                "a retry continues where this one stopped"
            )
        try:
            deadline = time.monotonic() + self.ready_timeout
            remaining = context.time_remaining() if context is not None else None
            if remaining is not None:
                deadline = min(deadline, time.monotonic() + remaining - DEADLINE_MARGIN_SECONDS)
            yield deadline
        finally:
            self._waiting.release()

    def _populate_request(
        self, namespace: str | None, name: str | None
    ) -> tuple[PopulateSource | None, str | None, str | None]:
        """A prime claim's checkpoint to restore; the volume is recorded under the user's claim."""
        claim = self.read_claim(namespace, name) if namespace and name else None
        if claim is None:
            return None, namespace, name
        try:
            request = trusted_populate_request(claim, self.populator_namespace, self.read_claim)
        except PopulateRefused as refused:
            if self.events is not None:
                involved = {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": namespace,
                    "name": name,
                    "uid": claim.metadata.uid,
                }
                self.events.record(involved, refused.reason, str(refused), warning=True)
            raise InvalidArgument(str(refused)) from None
        except ValueError as error:
            raise InvalidArgument(f"claim {namespace}/{name}: {error}") from None
        if request is None:
            return None, namespace, name
        return request

    def _clone_source(self, request) -> Typed | None:
        if not request.HasField("volume_content_source"):
            return None
        content = request.volume_content_source
        if content.WhichOneof("type") != "volume":
            raise InvalidArgument("only volumes can be a content source; Cairn does not support snapshots")
        source_id = content.volume.volume_id
        require(source_id, "volume_content_source.volume needs a volume_id")
        source = self.volumes.get(source_id) if is_volume_name(source_id) else None
        if source is None:
            raise NotFound(f"clone source volume {source_id} does not exist")
        if source.model.status.phase != VolumePhase.READY:
            raise FailedPrecondition(f"clone source volume {source_id} is {source.model.status.phase.value}")
        return source

    def _check_compatible(
        self, existing: Typed, csi_name: str, required: int, limit: int, access: VolumeAccess
    ) -> None:
        spec: LocalVolumeSpec = existing.model.spec
        if spec.csi_name != csi_name:
            raise AlreadyExists(f"volume name {csi_name!r} collides with {spec.csi_name!r}")
        if not size_fits_range(spec.size_bytes, required, limit):
            raise AlreadyExists(
                f"volume {csi_name!r} already exists with size {human_bytes(spec.size_bytes)}, "
                f"which does not fit the requested range (required {human_bytes(required)}, "
                f"limit {human_bytes(limit)})"
            )
        if spec.access != access:
            raise AlreadyExists(f"volume {csi_name!r} already exists as a {spec.access.value} volume")

    def _wait_settled(self, name: str, context: grpc.ServicerContext | None = None) -> Typed:
        """Wait until the agent reports Ready (returned) or Failed (raised as a CSI error)."""
        current = self.volumes.get(name)
        if current is not None and current.model.status.phase == VolumePhase.PENDING:
            with self._waiting_for_agent(name, context) as deadline:
                current = self._watch_while_pending(current, deadline)
        if current is None:
            raise Aborted(f"volume {name} was deleted while it was being created; retry")
        status = current.model.status
        if status.phase == VolumePhase.FAILED:
            message = f"node {current.model.spec.node_name}: {status.message or status.reason}"
            # Nothing is on disk for a failed volume; dropping the object lets the CO's retry place
            # it afresh, and leaves no stale objects behind if the claim goes away instead.
            self.volumes.delete(name)
            if status.reason in NO_ROOM_REASONS:
                raise ResourceExhausted(message)
            raise CsiError(message)
        return current

    def _watch_while_pending(self, current: Typed | None, deadline: float) -> Typed | None:
        while current is not None and current.model.status.phase == VolumePhase.PENDING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"node {current.model.spec.node_name} has not carved volume {current.name} yet; "
                    "is its cairn-node-agent running? A retry goes on waiting"
                )
            for _kind, item in self.volumes.watch(
                field_selector=f"metadata.name={current.name}",
                resource_version=current.resource_version,
                timeout_seconds=max(1, int(min(remaining, 30))),
            ):
                current = item
                if item.model.status.phase != VolumePhase.PENDING:
                    break
            else:
                current = self.volumes.get(current.name)
        return current

    def _volume_response(self, volume: Typed) -> csi_pb2.CreateVolumeResponse:
        message = self._volume_message(volume)
        if volume.model.spec.source_volume:
            message.content_source.volume.volume_id = volume.model.spec.source_volume
        return csi_pb2.CreateVolumeResponse(volume=message)

    @staticmethod
    def _volume_message(volume: Typed) -> csi_pb2.Volume:
        spec: LocalVolumeSpec = volume.model.spec
        return csi_pb2.Volume(
            volume_id=volume.name,
            capacity_bytes=volume.model.status.capacity_bytes or spec.size_bytes,
            volume_context={VOLUME_CONTEXT_POOL: spec.pool.value, VOLUME_CONTEXT_NODE: spec.node_name},
            accessible_topology=[csi_pb2.Topology(segments={TOPOLOGY_KEY: spec.node_name})],
        )

    # -- DeleteVolume ------------------------------------------------------------------------

    def DeleteVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "DeleteVolume needs a volume_id")
        if is_volume_name(request.volume_id):
            self._delete_and_wait(request.volume_id, context)
        return csi_pb2.DeleteVolumeResponse()

    def _delete_and_wait(self, name: str, context: grpc.ServicerContext | None = None) -> None:
        """Delete and wait for the agent's finalizer: success means the LV is really gone."""
        if not self.volumes.delete(name):
            return
        crash_point("controller.delete.object-deleted")
        if self.volumes.get(name) is None:
            return
        with self._waiting_for_agent(name, context) as deadline:
            self._wait_removed(name, deadline)

    def _wait_removed(self, name: str, deadline: float) -> None:
        while (volume := self.volumes.get(name)) is not None:
            if time.monotonic() > deadline:
                status = volume.model.status
                if status.reason == "Draining":
                    raise DeadlineExceeded(
                        f"volume {name} on node {volume.model.spec.node_name} is draining its "
                        f"checkpoints to S3 before it goes: {status.message}"
                    )
                raise DeadlineExceeded(
                    f"node {volume.model.spec.node_name} has not removed volume {name} yet; "
                    "is its cairn-node-agent running? A retry goes on waiting"
                )
            time.sleep(0.05)

    # -- the rest ------------------------------------------------------------------------------

    def ValidateVolumeCapabilities(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "ValidateVolumeCapabilities needs a volume_id")
        require(request.volume_capabilities, "ValidateVolumeCapabilities needs volume_capabilities")
        volume = self._get_volume(request.volume_id)
        problem = unsupported_capability(request.volume_capabilities)
        if problem is None:
            access, _ = access_type_of(request.volume_capabilities)
            if access != volume.model.spec.access:
                problem = f"volume {request.volume_id} is a {volume.model.spec.access.value} volume"
        if problem:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=problem)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def _get_volume(self, volume_id: str) -> Typed:
        volume = self.volumes.get(volume_id) if is_volume_name(volume_id) else None
        if volume is None:
            raise NotFound(f"volume {volume_id} does not exist")
        return volume

    def ListVolumes(self, request, context: grpc.ServicerContext):
        # Tokens are the last name returned, so deleting listed volumes never shifts later pages.
        token = request.starting_token
        if token and not is_volume_name(token):
            raise Aborted(
                f"starting_token {token!r} was not issued by this driver; list again from the start"
            )
        if request.max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        volumes = sorted(self.volumes.list(), key=lambda v: v.name)
        page = [
            v
            for v in volumes
            # Datasets' own volumes (ds-...) are Cairn's, not the CO's.
            if is_volume_name(v.name) and v.name > token and v.model.status.phase == VolumePhase.READY
        ]
        next_token = ""
        if request.max_entries and len(page) > request.max_entries:
            page = page[: request.max_entries]
            next_token = page[-1].name
        entries = [csi_pb2.ListVolumesResponse.Entry(volume=self._volume_message(v)) for v in page]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=next_token)

    def GetCapacity(self, request, context: grpc.ServicerContext):
        params = parse_parameters(dict(request.parameters), self.default_pools)
        if request.volume_capabilities and unsupported_capability(request.volume_capabilities):
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        segment = dict(request.accessible_topology.segments)
        wanted_node = segment.get(TOPOLOGY_KEY)
        pool = params.pools[0] if POOL_PARAMETER in request.parameters else None
        available = largest = 0
        for item in self._storage_nodes_at(wanted_node):
            node: StorageNode = item.model
            if wanted_node and node.spec.node_name != wanted_node:
                continue
            for status in node.status.pools:
                if (pool is None and status.pool_class in params.pools) or status.pool_class == pool:
                    available += status.free_bytes
                    largest = max(largest, status.free_bytes)
        return csi_pb2.GetCapacityResponse(
            available_capacity=available,
            maximum_volume_size={"value": largest},
        )

    def _storage_nodes_at(self, node_name: str | None) -> list[Typed]:
        """One node's StorageNode (named after it) or all: external-provisioner asks GetCapacity once
        per node and class every minute, which must not cost a walk over every node each time."""
        if node_name:
            found = self.storage_nodes.cached(node_name)
            return [found] if found is not None else []
        return self.storage_nodes.list()

    def ControllerExpandVolume(self, request, context: grpc.ServicerContext):
        require(request.volume_id, "ControllerExpandVolume needs a volume_id")
        require(request.HasField("capacity_range"), "ControllerExpandVolume needs a capacity_range")
        volume = self._get_volume(request.volume_id)
        spec: LocalVolumeSpec = volume.model.spec
        extent = self._extent_bytes(spec.node_name, spec.pool)
        target = resolve_size(
            request.capacity_range.required_bytes, request.capacity_range.limit_bytes, extent
        )
        node_expansion = spec.access == VolumeAccess.MOUNT
        current = volume.model.status.capacity_bytes or spec.size_bytes
        if target <= current:
            return csi_pb2.ControllerExpandVolumeResponse(
                capacity_bytes=current, node_expansion_required=node_expansion
            )
        self.volumes.patch_spec(volume.name, {"sizeBytes": target})
        deadline = time.monotonic() + self.ready_timeout
        while True:
            status = self._get_volume(volume.name).model.status
            if (status.capacity_bytes or 0) >= target:
                return csi_pb2.ControllerExpandVolumeResponse(
                    capacity_bytes=status.capacity_bytes, node_expansion_required=node_expansion
                )
            if status.expansion_error:
                # Put the spec back so the agent stops retrying an extension that cannot happen.
                self.volumes.patch_spec(volume.name, {"sizeBytes": current})
                raise ResourceExhausted(f"node {spec.node_name}: {status.expansion_error}")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"node {spec.node_name} has not extended volume {volume.name} "
                    f"to {human_bytes(target)} within {self.ready_timeout:.0f}s"
                )
            time.sleep(0.05)

    def _extent_bytes(self, node_name: str, pool: PoolClass) -> int:
        # An agent publishes its StorageNode under its node's name.
        node = self.storage_nodes.get(node_name)
        for status in node.model.status.pools if node else []:
            if status.pool_class == pool:
                return status.extent_size_bytes
        return DEFAULT_EXTENT_BYTES

    def ControllerGetCapabilities(self, request, context: grpc.ServicerContext):
        rpcs = [
            _RPC.CREATE_DELETE_VOLUME,
            _RPC.GET_CAPACITY,
            _RPC.LIST_VOLUMES,
            _RPC.EXPAND_VOLUME,
            _RPC.CLONE_VOLUME,
        ]
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[csi_pb2.ControllerServiceCapability(rpc=_RPC(type=t)) for t in rpcs]
        )

    # No attach: a local volume is usable only on its node, so the CSIDriver says attachRequired false.
    def ControllerPublishVolume(self, request, context: grpc.ServicerContext):
        raise CsiError(
            "ControllerPublishVolume is not supported: Cairn needs no attach", grpc.StatusCode.UNIMPLEMENTED
        )

    def ControllerUnpublishVolume(self, request, context: grpc.ServicerContext):
        raise CsiError(
            "ControllerUnpublishVolume is not supported: Cairn needs no attach", grpc.StatusCode.UNIMPLEMENTED
        )
