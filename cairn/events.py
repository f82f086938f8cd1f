"""Kubernetes Events, so that what Cairn decides about an object shows in `kubectl describe`."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

log = logging.getLogger("cairn.events")


class EventRecorder:
    def __init__(self, api_client: client.ApiClient, component: str) -> None:
        self.core = client.CoreV1Api(api_client)
        self.component = component
        self.host = socket.gethostname()

    def record(self, involved: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """`involved`: apiVersion, kind, name, uid and (for namespaced objects) namespace."""
        namespace = involved.get("namespace") or "default"
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{involved['name']}.", namespace=namespace),
            involved_object=client.V1ObjectReference(
                **{
                    "api_version": involved.get("apiVersion"),
                    "kind": involved.get("kind"),
                    "name": involved["name"],
                    "uid": involved.get("uid"),
                    "namespace": involved.get("namespace"),
                }
            ),
            reason=reason,
            message=message,
            type="Warning" if warning else "Normal",
            source=client.V1EventSource(component=self.component, host=self.host),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component=self.component,
            reporting_instance=self.host,
        )
        try:
            self.core.create_namespaced_event(namespace, body)
        except Exception:  # an Event is best effort: never fail the action it describes
            log.warning("could not record event %s on %s", reason, involved.get("name"), exc_info=True)
