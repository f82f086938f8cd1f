"""The thin adapter between Cairn's pydantic resources and the Kubernetes API.

Everything that talks to the apiserver about Cairn's own kinds goes through here, so the
rest of the code handles typed models and never raw dicts.
"""

from __future__ import annotations

import base64
import builtins
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from cairn import API_GROUP, API_VERSION
from cairn.api.base import CairnModel, Resource
from cairn.egress import EgressPolicy, EgressRefused, cluster_ranges
from cairn.s3 import ReadSecret, SecretForbidden, SecretMissing

log = logging.getLogger("cairn.kube")
R = TypeVar("R", bound=Resource)
MERGE_PATCH = "application/merge-patch+json"


def load_api_client(kubeconfig: str | None) -> client.ApiClient:
    """A kubeconfig when given, else the in-cluster ServiceAccount."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    _send_bearer_tokens(configuration)
    api_client = client.ApiClient(configuration)
    _bound_every_request(api_client)
    return api_client


API_CONNECT_TIMEOUT = 10.0
"""A TCP connect and TLS handshake, as client-go allows; urllib3 tries three times more after it."""
API_READ_TIMEOUT = 30.0
"""Longest an answer to one ordinary request may take; the apiserver's own limit is 60 s."""
WATCH_READ_MARGIN = 15
"""A watch is silent until an event or its server-side timeout, so its read timeout sits above that."""


def _bound_every_request(api_client: client.ApiClient) -> None:
    """Give every request a connect and read timeout unless its caller set one.

    The generated client waits forever by default: on a half-open connection (an apiserver or
    load balancer that vanished without a reset) an informer, a lease renewal or a status patch
    would hang with no error to retry on. A pool-wide urllib3 default does not help, as the
    client passes its own (None) timeout explicitly.
    """
    rest = api_client.rest_client
    send = rest.request

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        timeout = _request_timeout or (API_CONNECT_TIMEOUT, API_READ_TIMEOUT)
        return send(method, url, *args, _request_timeout=timeout, **kwargs)

    rest.request = request


def _send_bearer_tokens(configuration: client.Configuration) -> None:
    """Work around the generated client ignoring tokens its own config loaders store.

    The loaders put the token under api_key["authorization"], but auth_settings() only sends
    api_key["BearerToken"]; without this every token-authenticated call is anonymous. Hooking
    the refresh keeps rotated in-cluster tokens flowing too.
    """
    loader_hook = configuration.refresh_api_key_hook

    def refresh(conf: client.Configuration) -> None:
        if loader_hook is not None:
            loader_hook(conf)
        if "authorization" in conf.api_key:
            conf.api_key["BearerToken"] = conf.api_key["authorization"]

    configuration.refresh_api_key_hook = refresh
    refresh(configuration)


class Typed(Generic[R]):
    """A resource object as it came from the apiserver: the model plus its metadata."""

    def __init__(self, model: R, metadata: dict[str, Any]) -> None:
        self.model = model
        self.metadata = metadata

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def resource_version(self) -> str:
        return str(self.metadata.get("resourceVersion", ""))


class ResourceClient(Generic[R]):
    """CRUD and watch for one Cairn kind."""

    def __init__(self, api_client: client.ApiClient, kind: type[R]) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.kind = kind

    def _parse(self, obj: dict[str, Any]) -> Typed[R]:
        body = {"spec": obj.get("spec", {}), "status": obj.get("status") or {}}
        return Typed(self.kind.model_validate(body), obj.get("metadata", {}))

    def _scope(self, namespace: str | None) -> dict[str, Any]:
        return {"namespace": namespace} if self.kind.NAMESPACED else {}

    def get(self, name: str, namespace: str | None = None) -> Typed[R] | None:
        try:
            if self.kind.NAMESPACED:
                obj = self.api.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, self.kind.PLURAL, name
                )
            else:
                obj = self.api.get_cluster_custom_object(API_GROUP, API_VERSION, self.kind.PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._parse(obj)

    def create(
        self,
        name: str,
        model: R,
        *,
        labels: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> Typed[R]:
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": self.kind.KIND,
            "metadata": {"name": name, "labels": labels or {}},
            "spec": model.spec.to_wire(),  # type: ignore[attr-defined]
        }
        if self.kind.NAMESPACED:
            obj = self.api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, self.kind.PLURAL, body
            )
        else:
            obj = self.api.create_cluster_custom_object(API_GROUP, API_VERSION, self.kind.PLURAL, body)
        return self._parse(obj)

    def delete(self, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone (deletes are idempotent)."""
        try:
            if self.kind.NAMESPACED:
                self.api.delete_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, self.kind.PLURAL, name
                )
            else:
                self.api.delete_cluster_custom_object(API_GROUP, API_VERSION, self.kind.PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def list(self, *, label_selector: str = "", namespace: str | None = None) -> builtins.list[Typed[R]]:
        return self._list_raw(label_selector, namespace)[0]

    def _list_raw(self, label_selector: str, namespace: str | None) -> tuple[builtins.list[Typed[R]], str]:
        if self.kind.NAMESPACED and namespace:
            result = self.api.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, self.kind.PLURAL, label_selector=label_selector
            )
        else:
            result = self.api.list_cluster_custom_object(
                API_GROUP, API_VERSION, self.kind.PLURAL, label_selector=label_selector
            )
        return [self._parse(o) for o in result["items"]], result["metadata"].get("resourceVersion", "")

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str | None = None) -> Typed[R]:
        return self._merge_patch(name, {"spec": spec}, namespace)

    def patch_metadata(
        self, name: str, metadata: dict[str, Any], *, resource_version: str = "", namespace: str | None = None
    ) -> Typed[R]:
        """Merge-patch metadata; with a resource version the patch fails (409) if the object moved."""
        body: dict[str, Any] = {"metadata": dict(metadata)}
        if resource_version:
            body["metadata"]["resourceVersion"] = resource_version
        return self._merge_patch(name, body, namespace)

    def patch_status(self, name: str, status: CairnModel, namespace: str | None = None) -> Typed[R]:
        """Merge-patch the status with the fields `status` was given (None deletes a field)."""
        return self._merge_patch(name, {"status": status.merge_patch()}, namespace, subresource="status")

    def patch_status_fields(
        self, name: str, fields: dict[str, Any], namespace: str | None = None
    ) -> Typed[R]:
        """Merge-patch raw status fields by their wire names, for what a model cannot say (a map
        entry set to None removes that entry)."""
        return self._merge_patch(name, {"status": fields}, namespace, subresource="status")

    def _merge_patch(
        self, name: str, body: dict[str, Any], namespace: str | None, subresource: str = ""
    ) -> Typed[R]:
        # The generated client would label a dict body json-patch; name the content type explicitly.
        suffix = f"_{subresource}" if subresource else ""
        if self.kind.NAMESPACED:
            patch = getattr(self.api, f"patch_namespaced_custom_object{suffix}")
            obj = patch(
                API_GROUP, API_VERSION, namespace, self.kind.PLURAL, name, body, _content_type=MERGE_PATCH
            )
        else:
            patch = getattr(self.api, f"patch_cluster_custom_object{suffix}")
            obj = patch(API_GROUP, API_VERSION, self.kind.PLURAL, name, body, _content_type=MERGE_PATCH)
        return self._parse(obj)

    def watch(
        self,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, Typed[R]]]:
        """Events (ADDED/MODIFIED/DELETED) from a resource version; ends after timeout_seconds."""
        w = watch.Watch()
        kwargs: dict[str, Any] = {
            "label_selector": label_selector,
            "field_selector": field_selector,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": False,
            "_request_timeout": (API_CONNECT_TIMEOUT, timeout_seconds + WATCH_READ_MARGIN),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        for event in w.stream(
            self.api.list_cluster_custom_object, API_GROUP, API_VERSION, self.kind.PLURAL, **kwargs
        ):
            if event["type"] == "ERROR":
                raise ApiException(
                    status=event["raw_object"].get("code", 500),
                    reason=event["raw_object"].get("message", "watch error"),
                )
            yield event["type"], self._parse(event["object"])

    def informer(
        self,
        on_event: Callable[[str, Typed[R]], None],
        *,
        label_selector: str = "",
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """List then watch forever, re-listing after any watch failure; runs in the caller's thread."""
        while not stop():
            try:
                items, version = self._list_raw(label_selector, None)
                for item in items:
                    on_event("ADDED", item)
                for kind, item in self.watch(
                    label_selector=label_selector, resource_version=version, timeout_seconds=60
                ):
                    on_event(kind, item)
                    if stop():
                        return
            except Exception:  # a dropped watch is routine: re-list and carry on
                log.warning("watch on %s failed; re-listing", self.kind.PLURAL, exc_info=True)
                time.sleep(1)


def made_once_secret(
    api_client: client.ApiClient, namespace: str, name: str, key: str, make: Callable[[], bytes]
) -> bytes:
    """The bytes under `key` in Secret namespace/name, creating it with `make()` the first time.

    Two replicas racing to create it both end up reading the one that won.
    """
    core_v1 = client.CoreV1Api(api_client)
    try:
        secret = core_v1.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            data={key: base64.b64encode(make()).decode()},
            type="Opaque",
        )
        try:
            core_v1.create_namespaced_secret(namespace, body)
        except ApiException as racing:
            if racing.status != 409:
                raise
        secret = core_v1.read_namespaced_secret(name, namespace)
    return base64.b64decode((secret.data or {})[key])


def secret_reader(api_client: client.ApiClient) -> ReadSecret:
    """Reads one Secret's data by (namespace, name): `get` only, never list or watch."""
    core_v1 = client.CoreV1Api(api_client)

    def read(namespace: str, name: str) -> dict[str, str]:
        try:
            secret = core_v1.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                raise SecretMissing(f"{namespace}/{name}") from None
            if error.status == 403:
                raise SecretForbidden(f"{namespace}/{name}") from None
            raise
        return dict(secret.data or {})

    return read


def claim_reader(
    api_client: client.ApiClient,
) -> Callable[[str, str], client.V1PersistentVolumeClaim | None]:
    """Reads one PersistentVolumeClaim by (namespace, name); None when it is gone."""
    core_v1 = client.CoreV1Api(api_client)

    def read(namespace: str, name: str) -> client.V1PersistentVolumeClaim | None:
        try:
            claim: client.V1PersistentVolumeClaim = core_v1.read_namespaced_persistent_volume_claim(
                name, namespace
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return claim

    return read


def egress_policy_reader(
    api_client: client.ApiClient, allowed: list[str], denied: list[str], ttl: float = 60.0
) -> Callable[[], EgressPolicy]:
    """The origin policy with this cluster's node addresses, pod ranges and service ranges denied,
    re-read at most every `ttl` seconds. Without them it refuses every origin: failing open would
    let a tenant reach the nodes while the apiserver is away."""
    core_v1 = client.CoreV1Api(api_client)
    networking = client.NetworkingV1Api(api_client)
    cached: list[tuple[float, EgressPolicy]] = []

    def read() -> EgressPolicy:
        if cached and time.monotonic() - cached[0][0] < ttl:
            return cached[0][1]
        try:
            nodes = core_v1.list_node().items
            try:
                services = [c for s in networking.list_service_cidr().items for c in (s.spec.cidrs or [])]
            except ApiException as error:
                if error.status != 404:  # an apiserver without the ServiceCIDR API
                    raise
                services = []
        except ApiException as error:
            if cached:
                return cached[0][1]
            raise EgressRefused(f"the cluster's address ranges cannot be read ({error.reason})") from None
        policy = EgressPolicy.build([*cluster_ranges(nodes, services), *denied], allowed)
        cached[:] = [(time.monotonic(), policy)]
        return policy

    return read
