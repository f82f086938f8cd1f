"""The agent's peer restore server: other nodes stream this node's checkpoint copies from it.

    GET /v1/checkpoints/<namespace>/<name>/manifest
    GET /v1/checkpoints/<namespace>/<name>/files/<relative path>
    GET /v1/datasets/<namespace>/<name>/parts/<index>/torrent

The last hands one part's .torrent of a Dataset to agents joining its swarm. It needs no vouching
either: the joining agent checks it against that part's info-hash in the Dataset's status.

Only nodes of the cluster may ask (403 otherwise), and only for a file the copy's manifest names,
where that manifest's digest is the one the Checkpoint records (404 with the reason otherwise). The
bytes are sent as they are on disk: the restoring side hashes every one, so the server never
re-reads a file just to vouch for it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from cairn.api.disk import StorageNode
from cairn.node_agent.host.files import Directory, open_beneath
from cairn.node_agent.manifests import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError
from cairn.node_agent.p2p.addresses import split_address
from cairn.paths import UnsafePathError, safe_relative_path

log = logging.getLogger("cairn.node.peer")
PREFIX = "/v1/checkpoints/"
DATASET_PREFIX = "/v1/datasets/"
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DatasetTorrent = Callable[[str, str, int], bytes | None]
"""(namespace, name, part index) -> that part's .torrent on this node, or None."""
Locate = Callable[[str, str], tuple[Directory, str] | None]
"""(namespace, name) -> (the copy's directory, the manifest digest the Checkpoint records), or None."""


class _NotServed(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ManifestCache:
    """Parsed manifests by (directory, expected digest, file identity): one parse per copy, not per file."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], tuple[Manifest, bytes]] = {}

    def load(self, directory: Directory, expected: str) -> tuple[Manifest, bytes]:
        try:
            file = open_beneath(directory, PurePosixPath(MANIFEST_NAME))
        except OSError as error:
            raise _NotServed(
                HTTPStatus.NOT_FOUND, f"the copy on this node has no readable manifest ({_why(error)})"
            ) from None
        with file:
            info = os.fstat(file.fileno())
            key = (str(directory), expected, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            text = file.read(MAX_MANIFEST_BYTES + 1)
        try:
            if len(text) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"it is over {MAX_MANIFEST_BYTES} bytes")
            manifest = Manifest.from_json(text)
        except ManifestError as error:
            raise _NotServed(HTTPStatus.NOT_FOUND, f"the copy's manifest is unusable: {error}") from None
        if manifest.digest != expected:
            raise _NotServed(
                HTTPStatus.NOT_FOUND,
                f"the copy's manifest digest {manifest.digest} is not the checkpoint's {expected}",
            )
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (manifest, text)
        return manifest, text


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: str,
        locate: Locate,
        allowed: Callable[[str], bool],
        dataset_torrent: DatasetTorrent = lambda namespace, name, part: None,
    ) -> None:
        self.dataset_torrent = dataset_torrent
        self.locate = locate
        self.allowed = allowed
        self.manifests = _ManifestCache()
        super().__init__(split_address(address), _Handler)

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{host}:{port}"

    def serve_in_background(self, stop: threading.Event | None = None) -> PeerServer:
        threading.Thread(target=self.serve_forever, name="peer-restore", daemon=True).start()
        if stop is not None:

            def close_on_stop() -> None:
                stop.wait()
                self.shutdown()
                self.server_close()

            threading.Thread(target=close_on_stop, name="peer-restore-stop", daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: PeerServer
    timeout = 60  # a peer that stops reading must not hold a thread forever

    def do_GET(self) -> None:
        try:
            if not self.server.allowed(self.client_address[0]):
                raise _NotServed(
                    HTTPStatus.FORBIDDEN,
                    f"{self.client_address[0]} is not a Cairn node's address; only agents' peers may restore",
                )
            if self.path.startswith(DATASET_PREFIX):
                self._send_torrent()
                return
            namespace, name, what = _parse_path(self.path)
            try:
                located = self.server.locate(namespace, name)
            except Exception as error:  # the apiserver away: say so instead of dropping the connection
                log.warning("could not look up checkpoint %s/%s", namespace, name, exc_info=True)
                raise _NotServed(
                    HTTPStatus.SERVICE_UNAVAILABLE, f"cannot look up checkpoint {namespace}/{name}: {error}"
                ) from None
            if located is None:
                raise _NotServed(
                    HTTPStatus.NOT_FOUND, f"checkpoint {namespace}/{name} has no copy on this node"
                )
            directory, expected = located
            manifest, text = self.server.manifests.load(directory, expected)
            if what == "manifest":
                self._send_bytes(text)
            else:
                self._send_file(directory, manifest, what)
        except _NotServed as refusal:
            self._refuse(refusal.status, str(refusal))
        except (BrokenPipeError, ConnectionResetError):
            log.debug("peer %s went away mid-response", self.client_address[0])

    def _send_torrent(self) -> None:
        segments = self.path.split("?", 1)[0][len(DATASET_PREFIX) :].split("/")
        if (
            len(segments) != 5
            or segments[2] != "parts"
            or not re.fullmatch(r"[0-9]{1,4}", segments[3])
            or segments[4] != "torrent"
            or not all(_DNS_NAME.fullmatch(s) for s in segments[:2])
        ):
            raise _NotServed(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}")
        namespace, name, part = segments[0], segments[1], int(segments[3])
        torrent = self.server.dataset_torrent(namespace, name, part)
        if torrent is None:
            raise _NotServed(
                HTTPStatus.NOT_FOUND,
                f"dataset {namespace}/{name} has no torrent for part {part} on this node",
            )
        self._send_bytes(torrent, "application/x-bittorrent")

    def _send_bytes(self, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_file(self, directory: Directory, manifest: Manifest, name: str) -> None:
        entry = next((e for e in manifest.files if e.path == name), None)
        if entry is None:
            raise _NotServed(HTTPStatus.NOT_FOUND, f"{name!r} is not a file of this checkpoint's manifest")
        try:
            file = open_beneath(directory, safe_relative_path(name))
        except OSError as error:
            raise _NotServed(
                HTTPStatus.NOT_FOUND, f"{name} cannot be read on this node ({_why(error)})"
            ) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            if size != entry.size:
                # Changed since its commit: never send more (or other) bytes than the manifest names.
                raise _NotServed(
                    HTTPStatus.NOT_FOUND,
                    f"{name} is {size} bytes here, not the {entry.size} its manifest names",
                )
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            # sendfile: the kernel streams it in chunks of its choosing, no copy through Python.
            self.connection.sendfile(file, 0, size)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


def _why(error: Exception) -> str:
    # strerror, not str(error): the message goes to another node and must not carry this node's paths.
    return (error.strerror or type(error).__name__) if isinstance(error, OSError) else str(error)


def _parse_path(raw: str) -> tuple[str, str, str]:
    """(namespace, name, "manifest" or a file's relative path) from a request path."""
    path = raw.split("?", 1)[0]
    if not path.startswith(PREFIX):
        raise _NotServed(
            HTTPStatus.NOT_FOUND, f"no such endpoint {path}; try {PREFIX}<namespace>/<name>/manifest"
        )
    parts = path[len(PREFIX) :].split("/", 3)
    if len(parts) >= 3:
        namespace, name = unquote(parts[0]), unquote(parts[1])
        if not (_DNS_NAME.fullmatch(namespace) and _DNS_NAME.fullmatch(name)):
            raise _NotServed(HTTPStatus.NOT_FOUND, f"{namespace!r}/{name!r} is not a checkpoint's name")
        if len(parts) == 3 and parts[2] == "manifest":
            return namespace, name, "manifest"
        if len(parts) == 4 and parts[2] == "files":
            relative = os.fsdecode(unquote_to_bytes(parts[3]))
            try:
                return namespace, name, str(safe_relative_path(relative))
            except UnsafePathError as error:
                raise _NotServed(HTTPStatus.NOT_FOUND, str(error)) from None
    raise _NotServed(HTTPStatus.NOT_FOUND, f"no such endpoint {path}")


# -- the agent's wiring ---------------------------------------------------------------------------


def host_of(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return split_address(address)[0]
    except ValueError:
        return None


def peer_hosts(nodes: Iterable[StorageNode]) -> frozenset[str]:
    """The addresses Cairn agents publish: the only clients a peer server answers."""
    hosts = set()
    for node in nodes:
        endpoints = node.status.endpoints
        hosts |= {h for h in (host_of(endpoints.peer_restore_address), host_of(endpoints.p2p_address)) if h}
    return frozenset(hosts)


class AllowedPeers:
    """Is a client IP one of the cluster's agents? From StorageNodes, re-listed at most every few seconds.

    An unknown IP triggers a re-list (a node that just joined is let in within `min_interval`), and
    the set is refreshed every `max_age` regardless, so a removed node is shut out too.
    """

    def __init__(
        self,
        list_nodes: Callable[[], list[StorageNode]],
        *,
        min_interval: float = 3.0,
        max_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.list_nodes = list_nodes
        self.min_interval = min_interval
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._hosts: frozenset[str] = frozenset()
        self._listed_at: float | None = None

    def __call__(self, client_ip: str) -> bool:
        with self._lock:
            age = None if self._listed_at is None else self.clock() - self._listed_at
            if (
                age is None
                or age >= self.max_age
                or (client_ip not in self._hosts and age >= self.min_interval)
            ):
                self._refresh()
            return client_ip in self._hosts

    def _refresh(self) -> None:
        try:
            self._hosts = peer_hosts(self.list_nodes())
        except Exception:  # the apiserver being away must not open the door; keep the last set
            log.warning(
                "could not list StorageNodes to check a peer; keeping the last known set", exc_info=True
            )
        self._listed_at = self.clock()


class _Expiring:
    """Remembers `locate` answers for a few seconds: one GET per copy per burst, not per file."""

    def __init__(self, locate: Locate, ttl: float = 5.0) -> None:
        self.locate = locate
        self.ttl = ttl
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], tuple[float, tuple[Directory, str] | None]] = {}

    def __call__(self, namespace: str, name: str) -> tuple[Directory, str] | None:
        now = time.monotonic()
        with self._lock:
            self._answers = {k: v for k, v in self._answers.items() if now - v[0] < self.ttl}
            if (namespace, name) in self._answers:
                return self._answers[namespace, name][1]
        answer = self.locate(namespace, name)
        with self._lock:
            self._answers[namespace, name] = (now, answer)
        return answer


def start_peer_server(
    address: str,
    locate: Locate,
    list_nodes: Callable[[], list[StorageNode]],
    stop: threading.Event,
    dataset_torrent: DatasetTorrent = lambda namespace, name, part: None,
) -> PeerServer:
    """The node agent's peer server: `locate` finds copies, StorageNodes name the clients let in."""
    server = PeerServer(address, _Expiring(locate), AllowedPeers(list_nodes), dataset_torrent)
    server.serve_in_background(stop)
    log.info("serving checkpoint copies to peers on %s", server.address)
    return server
