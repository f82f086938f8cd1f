"""Per-node agent Leases: how the controller tells a dead node from a quiet one.

Each agent renews a Lease named after its node (as kubelet does in kube-node-lease), in Cairn's
namespace. Readiness in a StorageNode is what the agent last said; only the Lease says whether it
is still there to say anything. The controller's judgement of it is in controller/nodes/fates.py.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.api.names import DEFAULT_NODE_LEASE_SECONDS as DEFAULT_LEASE_SECONDS
from cairn.api.names import NODE_LEASE_PREFIX

log = logging.getLogger("cairn.node_lease")


def node_lease_name(node: str) -> str:
    return f"{NODE_LEASE_PREFIX}{node}"[:253]


# -- the agent's side ------------------------------------------------------------------------------


class NodeLeaseRenewer:
    """Creates the node's Lease and renews it every quarter of its duration."""

    def __init__(
        self,
        coordination: client.CoordinationV1Api,
        namespace: str,
        node: str,
        duration_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.coordination = coordination
        self.namespace = namespace
        self.node = node
        self.name = node_lease_name(node)
        self.duration_seconds = duration_seconds

    def renew(self) -> None:
        now = datetime.now(UTC)
        spec = client.V1LeaseSpec(
            holder_identity=self.node, lease_duration_seconds=self.duration_seconds, renew_time=now
        )
        try:
            # A model, not a dict: the client writes its fields by their API names (renewTime, ...).
            self.coordination.patch_namespaced_lease(self.name, self.namespace, client.V1Lease(spec=spec))
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, labels={"cairn.dev/node": self.node}),
                spec=client.V1LeaseSpec(
                    holder_identity=self.node,
                    lease_duration_seconds=self.duration_seconds,
                    acquire_time=now,
                    renew_time=now,
                ),
            )
            self.coordination.create_namespaced_lease(self.namespace, body)

    def run(self, stop: threading.Event) -> None:
        interval = max(1.0, self.duration_seconds / 4)
        while not stop.is_set():
            try:
                self.renew()
            except Exception:  # the next renewal may succeed; three in a row may fail before expiry
                log.warning("could not renew node lease %s/%s", self.namespace, self.name, exc_info=True)
            stop.wait(interval)
