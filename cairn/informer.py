"""Shared informers: one list, then one watch per kind and selector, and a local cache every loop reads.

A loop that lists cluster-wide objects on every pass costs the apiserver O(objects) per pass per
process: at 1,000 agents that is the quadratic load operators protect the apiserver from. An
informer lists once and then follows a watch, resuming from the last resource version it saw (watch
bookmarks keep that version fresh while nothing changes), so in steady state a process makes about
one request per kind every `WATCH_SECONDS`, whatever the cluster's size. It lists again only when the
apiserver says the version is too old (410 Gone).

Readers get the cache (`items`, `get`) and handlers that fire on each change, so a loop can wake on
the events it acts on instead of polling. Handlers run in the informer's thread and must be quick:
typically they set an Event.

`CachedResources` puts a Cairn kind's informer behind the same `list` as `ResourceClient`, so the
loops need no change of shape: lists come from the cache, while get and every write still go to the
apiserver. What a write returns is stored in the cache at once, so the writer's next pass never
acts on the version before its own write.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from cairn import API_GROUP, API_VERSION
from cairn.kube import API_CONNECT_TIMEOUT, WATCH_READ_MARGIN, R, ResourceClient, Typed

log = logging.getLogger("cairn.informer")
T = TypeVar("T")
Key = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped kinds."""

WATCH_SECONDS = 60
"""How long one watch request lasts before it is re-opened from the last version seen."""
RETRY_SECONDS = 1.0
FAILURES_BEFORE_RELIST = 5
"""Watches failed in a row from one version before the informer lists afresh instead."""
RETRY_AS_IS = frozenset({429, 500, 502, 503, 504})
"""Statuses that say nothing about the version: retried from it however often they come."""
DELETIONS_REMEMBERED = 10_000
"""Far more than can be deleted between a write and its answer; bounds the memory they take."""
HTTP_GONE = 410


def object_key(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _version_number(version: str) -> int | None:
    # Resource versions are opaque to clients, but etcd's are integers; comparing them only when
    # both are lets a write's answer replace an older cached copy, and never a newer one.
    return int(version) if version.isdigit() else None


def is_newer(candidate: str, cached: str) -> bool:
    new, old = _version_number(candidate), _version_number(cached)
    if new is None or old is None:
        return candidate != cached
    return new > old


@dataclass(frozen=True)
class Selector:
    """An equality label selector (`a=b,c`), as Cairn's own selectors are; matched in memory."""

    terms: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        terms: list[tuple[str, str | None]] = []
        for term in filter(None, (t.strip() for t in text.split(","))):
            if any(op in term for op in ("!=", " in ", " notin ", "!")):
                raise ValueError(f"label selector {text!r}: only key=value and key terms are supported")
            key, sep, value = term.replace("==", "=").partition("=")
            terms.append((key.strip(), value.strip() if sep else None))
        return cls(tuple(sorted(terms, key=lambda t: (t[0], t[1] or ""))))

    def matches(self, labels: dict[str, str]) -> bool:
        return all(key in labels and (value is None or labels[key] == value) for key, value in self.terms)

    def covers(self, narrower: Selector) -> bool:
        """Whether every object `narrower` selects is also selected by this one."""
        wanted = dict(narrower.terms)
        return all(key in wanted and (value is None or wanted[key] == value) for key, value in self.terms)


@dataclass
class WatchedKind(Generic[T]):
    """How to list and watch one kind: a generated client list function, and what an item becomes."""

    name: str
    list_call: Callable[..., Any]
    convert: Callable[[dict[str, Any]], T | None]
    args: tuple[Any, ...] = ()
    label_selector: str = ""
    field_selector: str = ""
    watch_seconds: int = WATCH_SECONDS

    def list(self) -> tuple[list[dict[str, Any]], str]:
        response = self.list_call(
            *self.args,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            _preload_content=False,
        )
        body = json.loads(response.data)
        return body.get("items") or [], str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
        """The events of one watch request, ERROR events included, as the apiserver sent them.

        Read line by line here rather than through the client's `Watch`: undeserialized, it fails
        on the ERROR event that carries 410 Gone (a KeyError, not an ApiException), and a caller
        that retries the expired version from there never lists again.
        """
        response = self.list_call(
            *self.args,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            watch=True,
            _preload_content=False,
            _request_timeout=(API_CONNECT_TIMEOUT, self.watch_seconds + WATCH_READ_MARGIN),
        )
        try:
            for line in iter_resp_lines(response):
                yield json.loads(line)
        finally:
            response.close()
            response.release_conn()


Handler = Callable[[str, T], None]


@dataclass
class Informer(Generic[T]):
    """The cache of one `WatchedKind`, kept current by a watch in a thread of its own."""

    kind: WatchedKind[T]
    _items: dict[Key, T] = field(default_factory=dict)
    _versions: dict[Key, str] = field(default_factory=dict)
    _observed: dict[Key, str] = field(default_factory=dict)
    """Versions written by this process and not yet seen on the watch."""
    _deleted: OrderedDict[Key, str] = field(default_factory=OrderedDict)
    """Recent deletions and their versions, so a write's answer that arrives after the object's
    deletion (the write that removed its last finalizer, say) cannot bring it back to the cache."""
    _handlers: list[Handler[T]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _notifying: threading.RLock = field(default_factory=threading.RLock)
    """Handlers are called one at a time, in event order, as a single watch thread would call them."""
    _synced: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    lists: int = 0
    watches: int = 0

    # -- reading ---------------------------------------------------------------------------------

    def items(self) -> builtins.list[T]:
        with self._lock:
            return builtins.list(self._items.values())

    def get(self, name: str, namespace: str = "") -> T | None:
        with self._lock:
            return self._items.get((namespace, name))

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def add_handler(self, handler: Handler[T]) -> None:
        """`handler(kind, item)` on every ADDED, MODIFIED and DELETED, and for each item already cached."""
        with self._notifying:
            with self._lock:
                self._handlers.append(handler)
                present = builtins.list(self._items.values())
            for item in present:
                handler("ADDED", item)

    # -- writing from outside the watch --------------------------------------------------------

    def observe(self, key: Key, version: str, item: T) -> None:
        """Store what a write returned, unless the watch has brought a newer version already.

        Handlers are not called: the write's own watch event will call them, in order. (A writer that
        is itself a handler would otherwise re-enter itself.)
        """
        with self._lock:
            known = self._versions.get(key)
            if known is not None and not is_newer(version, known):
                return
            gone = self._deleted.get(key)
            if gone is not None and not is_newer(version, gone):
                return
            self._items[key] = item
            self._versions[key] = version
            self._observed[key] = version

    # -- the loop ----------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> Informer[T]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run, args=(stop,), name=f"informer-{self.kind.name}", daemon=True
            )
            self._thread.start()
        return self

    def run(self, stop: threading.Event) -> None:
        version = ""
        failures = 0
        while not stop.is_set():
            if failures >= FAILURES_BEFORE_RELIST:
                # Whatever keeps failing at this version (one the apiserver no longer serves, in a
                # way no status says), a fresh list is the way out: never the same failure for ever.
                log.warning(
                    "watch on %s failed %d times from %s; listing again", self.kind.name, failures, version
                )
                version, failures = "", 0
            try:
                if not version:
                    version = self._relist()
                version = self._follow(version, stop)
                failures = 0
            except ApiException as error:
                if error.status == HTTP_GONE:
                    log.info("watch on %s: version %s is gone; listing again", self.kind.name, version)
                    version = ""
                    continue
                # Throttled or unavailable is the apiserver's state, not the version's: a list
                # would only add to the load that refused the watch.
                if error.status not in RETRY_AS_IS:
                    failures += 1
                log.warning("watch on %s failed (%s); retrying", self.kind.name, error.status)
                stop.wait(RETRY_SECONDS)
            except Exception:  # a dropped connection is routine: resume from the last version
                failures += 1
                log.warning("watch on %s failed; retrying", self.kind.name, exc_info=True)
                stop.wait(RETRY_SECONDS)

    def _relist(self) -> str:
        listed, version = self.kind.list()
        self.lists += 1
        fresh = {object_key(obj): obj for obj in listed}
        with self._lock:
            gone = [key for key in self._items if key not in fresh]
        for key in gone:
            with self._lock:
                item = self._items.pop(key, None)
                self._versions.pop(key, None)
                self._observed.pop(key, None)
                self._remember_deleted(key, version)
            if item is not None:
                self._notify("DELETED", item)
        for key, obj in fresh.items():
            with self._lock:
                known = self._versions.get(key)
            seen_version = str(obj["metadata"].get("resourceVersion", ""))
            if known != seen_version:
                self._apply("MODIFIED" if known is not None else "ADDED", obj)
        self._synced.set()
        return version

    def _follow(self, version: str, stop: threading.Event) -> str:
        """Apply watch events until the request ends; the version to resume from."""
        self.watches += 1
        for event in self.kind.watch(version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(str(kind), obj)
            if stop.is_set():
                break
        return version

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        # A converter may answer None: an object its readers never look at is not kept at all.
        item: T | None = self.kind.convert(obj)
        version = str(obj["metadata"].get("resourceVersion", ""))
        with self._lock:
            written = self._observed.get(key)
            if kind == "DELETED" or item is None:
                dropped = self._items.pop(key, None)
                self._versions.pop(key, None)
                self._observed.pop(key, None)
                if kind == "DELETED":
                    self._remember_deleted(key, version)
            elif written is not None and is_newer(written, version):
                return  # older than what this process wrote: readers keep the newer one
            else:
                self._observed.pop(key, None)
                self._items[key] = item
                self._versions[key] = version
        if item is None or kind == "DELETED":
            if dropped is not None:
                self._notify("DELETED", dropped)
            return
        self._notify(kind, item)

    def _remember_deleted(self, key: Key, version: str) -> None:
        self._deleted[key] = version
        self._deleted.move_to_end(key)
        while len(self._deleted) > DELETIONS_REMEMBERED:
            self._deleted.popitem(last=False)

    def _notify(self, kind: str, item: T) -> None:
        with self._notifying:
            with self._lock:
                handlers = builtins.list(self._handlers)
            for handler in handlers:
                try:
                    handler(kind, item)
                except Exception:  # one reader's bug must not stop the cache every other reader uses
                    log.exception("a handler of %s failed", self.kind.name)


def trigger_on(
    informer: Informer[Typed[R]], shape: Callable[[Typed[R]], object], trigger: Callable[[], None]
) -> None:
    """Call `trigger` when an object's `shape` changes, appears or goes.

    One informer serves every loop; `shape` picks what a loop acts on, so N agents' progress reports
    do not wake a loop that only cares about, say, targets. An object whose shape is None is one the
    loop ignores: it wakes nothing coming or going.
    """
    seen: dict[Key, object] = {}
    lock = threading.Lock()

    def on_event(kind: str, item: Typed[R]) -> None:
        key = (str(item.metadata.get("namespace", "")), item.name)
        with lock:
            before = seen.get(key, _UNSEEN)
            if kind == "DELETED":
                seen.pop(key, None)
                if before is None or before is _UNSEEN:
                    return
            else:
                current = seen[key] = shape(item)
                if before == current or (before is _UNSEEN and current is None):
                    return
        trigger()

    informer.add_handler(on_event)


_UNSEEN = object()


class CachedResources(ResourceClient[R]):
    """A `ResourceClient` whose `list` reads an informer's cache; get and writes go to the apiserver."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kind: type[R],
        cache: Informer[Typed[R]],
        *,
        serve_gets: bool = False,
    ) -> None:
        super().__init__(api_client, kind)
        self.cache = cache
        self.serve_gets = serve_gets
        self.scope = Selector.parse(cache.kind.label_selector)

    def list(self, *, label_selector: str = "", namespace: str | None = None) -> builtins.list[Typed[R]]:
        wanted = Selector.parse(label_selector)
        if not self.scope.covers(wanted) or self.cache.kind.field_selector:
            return super().list(label_selector=label_selector, namespace=namespace)
        require_synced(self.cache)
        return [
            item
            for item in self.cache.items()
            if (namespace is None or item.metadata.get("namespace", "") == namespace)
            and wanted.matches(item.metadata.get("labels") or {})
        ]

    def get(self, name: str, namespace: str | None = None) -> Typed[R] | None:
        """From the cache when it serves gets (a miss still asks the apiserver), else the apiserver."""
        if self.serve_gets and self.cache.synced:
            found = self.cache.get(name, namespace or "")
            if found is not None:
                return found
        return super().get(name, namespace)

    def cached(self, name: str, namespace: str | None = None) -> Typed[R] | None:
        """The cached object, for loops that look one up on every pass; None when absent."""
        return self.cache.get(name, namespace or "")

    # What a write returns is the newest version the writer knows: the cache takes it at once.

    def create(
        self,
        name: str,
        model: R,
        *,
        labels: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> Typed[R]:
        created = super().create(name, model, labels=labels, namespace=namespace)
        self._observe(created)
        return created

    def _merge_patch(
        self, name: str, body: dict[str, Any], namespace: str | None, subresource: str = ""
    ) -> Typed[R]:
        patched = super()._merge_patch(name, body, namespace, subresource)
        self._observe(patched)
        return patched

    def _observe(self, item: Typed[R]) -> None:
        key = (str(item.metadata.get("namespace") or ""), item.name)
        self.cache.observe(key, item.resource_version, item)


class Informers:
    """One informer per kind and selector in a process, started on first use, shared by every loop."""

    def __init__(
        self, api_client: client.ApiClient, stop: threading.Event, *, watch_seconds: int = WATCH_SECONDS
    ) -> None:
        self.api_client = api_client
        self.stop = stop
        self.watch_seconds = watch_seconds
        self._made: dict[tuple[str, str, str], Informer[Any]] = {}
        self._lock = threading.Lock()

    def _shared(self, key: tuple[str, str, str], make: Callable[[], WatchedKind[T]]) -> Informer[T]:
        with self._lock:
            found = self._made.get(key)
            if found is None:
                found = self._made[key] = Informer(make()).start(self.stop)
            return found

    def resources(
        self, kind: type[R], *, label_selector: str = "", serve_gets: bool = False
    ) -> CachedResources[R]:
        """A Cairn kind, cluster-wide or within a label selector (an agent's own node).

        With `serve_gets`, get reads the cache too: for loops that look an object up on every pass
        and can act on a version a moment old (a policy, say), never for read-after-write logic.
        """
        plain = ResourceClient(self.api_client, kind)

        def make() -> WatchedKind[Typed[R]]:
            return WatchedKind(
                name=kind.PLURAL,
                list_call=plain.api.list_cluster_custom_object,
                args=(API_GROUP, API_VERSION, kind.PLURAL),
                convert=plain._parse,
                label_selector=label_selector,
                watch_seconds=self.watch_seconds,
            )

        informer = self._shared((kind.PLURAL, label_selector, ""), make)
        return CachedResources(self.api_client, kind, informer, serve_gets=serve_gets)

    def core(
        self,
        name: str,
        list_call: Callable[..., Any],
        convert: Callable[[dict[str, Any]], T | None],
        *,
        args: tuple[Any, ...] = (),
        label_selector: str = "",
        field_selector: str = "",
    ) -> Informer[T]:
        """A built-in kind, read as `convert` makes it: keep only what the readers need."""
        key = ("/".join([name, *map(str, args)]), label_selector, field_selector)
        return self._shared(
            key,
            lambda: WatchedKind(
                name, list_call, convert, args, label_selector, field_selector, self.watch_seconds
            ),
        )


def as_model(api_client: client.ApiClient, type_name: str) -> Callable[[dict[str, Any]], Any]:
    """A converter to a generated model (`V1PersistentVolumeClaim`), for readers written against one."""

    def convert(obj: dict[str, Any]) -> Any:
        return api_client._ApiClient__deserialize(obj, type_name)

    return convert


SYNC_TIMEOUT = 60.0


def require_synced(*caches: Informer[Any], timeout: float = SYNC_TIMEOUT) -> None:
    """Wait for each cache's first list; a pass must not act on an empty cache as if nothing existed."""
    deadline = time.monotonic() + timeout
    for cache in caches:
        if not cache.wait_synced(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"the cache of {cache.kind.name} has not synced yet")
