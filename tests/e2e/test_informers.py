"""The shared informer against the bed's real apiserver: one list, then watches that resume."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from cairn.api.checkpoint import CheckpointPolicy
from cairn.informer import Informers
from cairn.kube import ResourceClient, load_api_client
from tests.testbed.bed import TestBed
from tests.testbed.waiting import wait_until

POLICY = {
    "target": {"endpoint": "http://s3.example:9000", "bucket": "ckpt", "credentialsSecretRef": {"name": "s3"}}
}


@pytest.fixture
def namespace(bed: TestBed) -> Iterator[str]:
    core = bed.core_v1()
    name = f"informer-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_a_cache_follows_creates_changes_and_deletes_with_one_list(bed: TestBed, namespace: str) -> None:
    api = load_api_client(str(bed.control_plane.kubeconfigs["admin"]))
    stop = threading.Event()
    scope = f"cairn.dev/test={namespace}"
    # Watches of 2 s, so the test sees several end and resume in a few seconds.
    informers = Informers(api, stop, watch_seconds=2)
    policies = informers.resources(CheckpointPolicy, label_selector=scope)
    events: list[tuple[str, str]] = []
    policies.cache.add_handler(lambda kind, item: events.append((kind, item.name)))
    other = ResourceClient(api, CheckpointPolicy)
    try:
        model = CheckpointPolicy.model_validate({"spec": POLICY})
        for name in ("one", "two"):
            policies.create(name, model, labels={"cairn.dev/test": namespace}, namespace=namespace)
        # A writer sees its own writes at once, before their watch events arrive.
        assert sorted(p.name for p in policies.list(label_selector=scope)) == ["one", "two"]
        # An object outside the cache's selector is not in it.
        other.create("unlabelled", model, namespace=namespace)
        time.sleep(5)  # two or more watches end and are re-opened
        assert policies.cache.watches >= 2
        assert "unlabelled" not in {p.name for p in policies.list(label_selector=scope)}
        # A selector outside the cache's scope is answered by the apiserver, not wrongly from the cache.
        assert "unlabelled" in {p.name for p in policies.list(label_selector="", namespace=namespace)}

        other.patch_spec("two", {"retention": {"keepLocal": 7}}, namespace=namespace)
        wait_until(
            lambda: (
                (found := policies.cache.get("two", namespace)) is not None
                and found.model.spec.retention.keep_local == 7
            ),
            timeout=10,
            what="the cache to carry another writer's change",
        )
        other.delete("one", namespace=namespace)
        wait_until(
            lambda: policies.cache.get("one", namespace) is None, timeout=10, what="the delete to reach it"
        )
        assert ("DELETED", "one") in events and ("MODIFIED", "two") in events
        # Everything after the first list came from watches resumed at their last version.
        assert policies.cache.lists == 1
    finally:
        stop.set()
        for name in ("one", "two", "unlabelled"):
            other.delete(name, namespace=namespace)


def test_core_kinds_are_cached_as_their_readers_need_them(bed: TestBed, namespace: str) -> None:
    api = load_api_client(str(bed.control_plane.kubeconfigs["admin"]))
    core = client.CoreV1Api(api)
    stop = threading.Event()
    informers = Informers(api, stop, watch_seconds=2)
    names = informers.core(
        "configmaps",
        core.list_namespaced_config_map,
        lambda cm: (cm["metadata"]["name"], cm.get("data") or {}),
        args=(namespace,),
    )
    try:
        assert names.wait_synced(10)
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "m"}, "data": {"k": "v"}})
        wait_until(lambda: names.get("m", namespace) == ("m", {"k": "v"}), timeout=10, what="the config map")
        # The same kind and scope asked for twice is one informer: one watch per process.
        again = informers.core(
            "configmaps", core.list_namespaced_config_map, lambda cm: cm, args=(namespace,)
        )
        assert again is names
    finally:
        stop.set()
