"""The informer's bookkeeping: selectors, versions, relists after 410 Gone, and wake-ups by shape.

The watch here is a scripted stand-in (`ScriptedWatchedKind`): the apiserver answers 410 Gone only
once etcd has compacted past a version, which no test can bring about on demand. The informer
against a real apiserver is in tests/e2e/test_informers.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from kubernetes.client.exceptions import ApiException

from cairn.informer import FAILURES_BEFORE_RELIST, Informer, Selector, WatchedKind, is_newer, trigger_on
from cairn.kube import Typed


def obj(name: str, version: int, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version), "labels": labels}}


class ScriptedWatchedKind(WatchedKind[Any]):
    """Lists and watches from a script: each list returns the next listing, each watch the next events."""

    def __init__(
        self,
        listings: list[list[dict[str, Any]]],
        watches: list[list[dict[str, Any]] | int],
        convert: Callable[[dict[str, Any]], Any] = lambda o: o,
    ) -> None:
        super().__init__("scripted", lambda: None, convert)
        self.listings = listings
        self.watch_script = watches
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def list(self) -> tuple[list[dict[str, Any]], str]:
        items = self.listings.pop(0)
        return items, str(max((int(i["metadata"]["resourceVersion"]) for i in items), default=1))

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
        self.watched_from.append(version)
        if not self.watch_script:
            self.done.set()
            threading.Event().wait(0.05)
            return
        step = self.watch_script.pop(0)
        if isinstance(step, int):
            raise ApiException(status=step)
        yield from step


def run_until_done(kind: ScriptedWatchedKind) -> Informer[dict[str, Any]]:
    informer = Informer(kind)
    stop = threading.Event()
    informer.start(stop)
    assert kind.done.wait(5)
    stop.set()
    return informer


def test_a_watch_that_ends_resumes_from_the_last_version_without_listing_again() -> None:
    kind = ScriptedWatchedKind(
        [[obj("a", 5)]],
        [
            [{"type": "MODIFIED", "object": obj("a", 7)}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}],
        ],
    )
    informer = run_until_done(kind)
    assert informer.lists == 1
    assert kind.watched_from[:3] == ["5", "7", "9"]
    assert informer.get("a", "ns")["metadata"]["resourceVersion"] == "7"


def test_gone_lists_again_and_reports_what_vanished_meanwhile() -> None:
    kind = ScriptedWatchedKind([[obj("a", 5), obj("b", 6)], [obj("b", 12), obj("c", 11)]], [410])
    informer = Informer(kind)
    seen: list[tuple[str, str]] = []
    informer.add_handler(lambda k, o: seen.append((k, o["metadata"]["name"])))
    stop = threading.Event()
    informer.start(stop)
    assert kind.done.wait(5)
    stop.set()
    assert informer.lists == 2
    assert sorted(o["metadata"]["name"] for o in informer.items()) == ["b", "c"]
    assert seen[2:] == [("DELETED", "a"), ("MODIFIED", "b"), ("ADDED", "c")]


def test_a_failed_watch_is_retried_from_its_version_not_relisted() -> None:
    kind = ScriptedWatchedKind([[obj("a", 5)]], [500, [{"type": "DELETED", "object": obj("a", 8)}]])
    informer = run_until_done(kind)
    assert informer.lists == 1
    assert kind.watched_from[:2] == ["5", "5"]
    assert informer.items() == []


def test_a_writers_answer_replaces_only_an_older_cached_copy() -> None:
    informer: Informer[dict[str, Any]] = Informer(ScriptedWatchedKind([], []))
    informer.observe(("ns", "a"), "10", obj("a", 10))
    informer.observe(("ns", "a"), "9", obj("a", 9))
    assert informer.get("a", "ns")["metadata"]["resourceVersion"] == "10"
    informer.observe(("ns", "a"), "11", obj("a", 11))
    assert informer.get("a", "ns")["metadata"]["resourceVersion"] == "11"
    assert is_newer("12", "9") and not is_newer("9", "12") and is_newer("x", "y")


@pytest.mark.parametrize(
    ("scope", "wanted", "covered"),
    [
        ("", "a=b", True),
        ("a=b", "a=b,c=d", True),
        ("a=b", "c=d", False),
        ("a=b", "", False),
        ("a", "a=x", True),
    ],
)
def test_a_cache_serves_only_selectors_inside_its_own(scope: str, wanted: str, covered: bool) -> None:
    assert Selector.parse(scope).covers(Selector.parse(wanted)) is covered


def test_selectors_match_equality_and_existence_and_refuse_the_rest() -> None:
    selector = Selector.parse("cairn.dev/node=n1, tier")
    assert selector.matches({"cairn.dev/node": "n1", "tier": "x"})
    assert not selector.matches({"cairn.dev/node": "n2", "tier": "x"})
    assert not selector.matches({"cairn.dev/node": "n1"})
    with pytest.raises(ValueError, match="only key=value"):
        Selector.parse("a!=b")


def phase(name: str, version: int, value: str) -> dict[str, Any]:
    return {"type": "MODIFIED", "object": {**obj(name, version), "phase": value}}


def test_a_loop_wakes_only_when_the_shape_it_acts_on_changes() -> None:
    events = [
        phase("a", 2, "Pending"),
        phase("a", 3, "Pending"),  # a progress tick: the same shape
        phase("b", 4, "ignored"),  # not one this loop acts on
        phase("a", 5, "Ready"),
        {"type": "DELETED", "object": {**obj("b", 6), "phase": "ignored"}},
    ]
    kind = ScriptedWatchedKind([[]], [events], convert=lambda o: Typed(o["phase"], o["metadata"]))
    informer: Informer[Typed[Any]] = Informer(kind)
    wakes: list[str] = []
    trigger_on(
        informer, lambda item: None if item.model == "ignored" else item.model, lambda: wakes.append("x")
    )
    stop = threading.Event()
    informer.start(stop)
    assert kind.done.wait(5)
    stop.set()
    assert len(wakes) == 2


def test_a_write_answer_is_read_at_once_and_an_older_watch_event_does_not_undo_it() -> None:
    kind = ScriptedWatchedKind([[obj("a", 5)]], [[{"type": "MODIFIED", "object": obj("a", 6)}]])
    informer: Informer[dict[str, Any]] = Informer(kind)
    seen: list[str] = []
    informer.add_handler(lambda _k, o: seen.append(o["metadata"]["resourceVersion"]))
    informer.observe(("ns", "a"), "7", obj("a", 7))  # what this process's own write returned
    stop = threading.Event()
    informer.start(stop)
    assert kind.done.wait(5)
    stop.set()
    assert informer.get("a", "ns")["metadata"]["resourceVersion"] == "7"
    # The list brought version 5 and the watch 6, both older than the write: handlers hear neither,
    # and the write itself is no event either (its own watch event will bring it).
    assert seen == []


def test_a_write_answered_after_its_objects_deletion_does_not_bring_it_back() -> None:
    # The write that removes an object's last finalizer: the watch may bring the deletion first.
    kind = ScriptedWatchedKind([[obj("a", 5)]], [[{"type": "DELETED", "object": obj("a", 9)}]])
    informer = run_until_done(kind)
    assert informer.get("a", "ns") is None
    informer.observe(("ns", "a"), "8", obj("a", 8))
    assert informer.get("a", "ns") is None, "a deleted object came back from a late write answer"
    informer.observe(("ns", "a"), "12", obj("a", 12))  # made again, under the same name
    assert informer.get("a", "ns") is not None


class StreamedResponse:
    """What the generated client returns with _preload_content=False: lines of JSON, one an event."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.closed = False

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self.body

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class ApiserverByScript:
    """A generated list function: a list answer, or a watch whose stream the script gives."""

    def __init__(self, listings: list[list[dict[str, Any]]], watches: list[list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.watches = watches
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watched_from.append(kwargs["resource_version"])
            if not self.watches:
                self.done.set()
                threading.Event().wait(0.05)
                return StreamedResponse([])
            return StreamedResponse(self.watches.pop(0))
        items = self.listings.pop(0)
        version = str(max(int(i["metadata"]["resourceVersion"]) for i in items))
        body = json.dumps({"items": items, "metadata": {"resourceVersion": version}}).encode()
        return SimpleNamespace(data=body)


def test_a_version_expired_mid_watch_lists_again_instead_of_retrying_it_for_ever() -> None:
    # The apiserver answers an expired version with 200 and an ERROR event in the stream, not 410.
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "old"}}
    api = ApiserverByScript(
        [[obj("a", 5)], [obj("a", 9), obj("b", 12)]],
        [[{"type": "MODIFIED", "object": obj("a", 7)}, gone]],
    )
    informer = Informer(WatchedKind("things", api, lambda o: o, watch_seconds=1))
    stop = threading.Event()
    informer.start(stop)
    try:
        assert api.done.wait(10), f"watched from {api.watched_from} and never listed again"
    finally:
        stop.set()
    assert informer.lists == 2
    assert api.watched_from[:2] == ["5", "12"]
    assert sorted(o["metadata"]["name"] for o in informer.items()) == ["a", "b"]


def run_with_quick_retries(kind: ScriptedWatchedKind) -> Informer[dict[str, Any]]:
    with patch("cairn.informer.RETRY_SECONDS", 0.01):
        return run_until_done(kind)


def test_a_watch_that_keeps_failing_from_one_version_lists_afresh() -> None:
    # A failure no status explains, again and again at the same version: the informer must not
    # retry it for ever (that is how an expired version once hid every change from the caches).
    kind = ScriptedWatchedKind([[obj("a", 5)], [obj("b", 9)]], [400] * FAILURES_BEFORE_RELIST)
    informer = run_with_quick_retries(kind)
    assert informer.lists == 2
    assert kind.watched_from[:FAILURES_BEFORE_RELIST] == ["5"] * FAILURES_BEFORE_RELIST
    assert [o["metadata"]["name"] for o in informer.items()] == ["b"]


def test_a_throttled_watch_is_retried_from_its_version_however_often() -> None:
    # Listing afresh under Priority and Fairness's 429s would only add to the load that refused it.
    kind = ScriptedWatchedKind([[obj("a", 5)]], [429] * (2 * FAILURES_BEFORE_RELIST))
    informer = run_with_quick_retries(kind)
    assert informer.lists == 1
    assert set(kind.watched_from) == {"5"}
