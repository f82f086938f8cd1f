"""The agent's peer restore server: other nodes stream this node's checkpoint copies from it.

    GET /v1/checkpoints/<namespace>/<name>/manifest
    GET /v1/checkpoints/<namespace>/<name>/files/<relative path>
    GET /v1/datasets/<namespace>/<name>/parts/<index>/torrent

The last hands one part's .torrent of a Dataset to agents joining its swarm. It needs no vouching
either: the joining agent checks it against that part's info-hash in the Dataset's status.

Only Cairn agents get past TLS: the client must present the certificate its node's StorageNode
publishes (`identity`), so a hostNetwork pod sharing the node's address is refused at the handshake.
Each request is then authorised for the node it came from (`authorisation`): a checkpoint's copy
goes only to the node that wrote it, the node named as its replica, or a node restoring it into a
volume of the checkpoint's own namespace; a dataset's .torrent only to the dataset's targets (403
with the reason otherwise). A file is served only if the copy's manifest names it and that
manifest's digest is the one the Checkpoint records (404 otherwise). The bytes are sent as they are
on disk: the restoring side hashes every one, so the server never re-reads a file to vouch for it.

Nobody can hold the server: handshakes and request heads are read by one selector thread with a
deadline each, at most `pending_limit` at once and `per_address_limit` from one address, so a
slow-loris client costs a socket, never a worker. Only a complete, authenticated request reaches the
bounded worker pool; when it is full the client is told 503 at once, not queued without end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from cairn.api.disk import StorageNode
from cairn.api.volume import LocalVolume
from cairn.node_agent import metrics
from cairn.node_agent.host.files import Directory, open_beneath
from cairn.node_agent.manifests import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError
from cairn.node_agent.p2p.addresses import split_address
from cairn.node_agent.p2p.authorisation import CheckpointCopy, checkpoint_read_refusal
from cairn.node_agent.p2p.identity import IdentityError, PeerIdentity, fingerprint, pem_fingerprint
from cairn.paths import UnsafePathError, safe_relative_path

log = logging.getLogger("cairn.node.peer")
PREFIX = "/v1/checkpoints/"
DATASET_PREFIX = "/v1/datasets/"
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
VOLUME_HEADER = "X-Cairn-Volume"
"""A restoring agent names the LocalVolume it restores into; the server checks it is the asker's."""
MAX_HEAD_BYTES = 16 * 1024
DatasetTorrent = Callable[[str, str, int, str], bytes | None]
"""(namespace, name, part index, asking node) -> that part's .torrent on this node, or None;
raises PeerRefused when the asking node is not one of the dataset's targets."""
Locate = Callable[[str, str], CheckpointCopy | None]
"""(namespace, name) -> this node's copy and who may read it, or None."""
ReadVolume = Callable[[str], LocalVolume | None]


class PeerRefused(Exception):
    """The asking node may not have this; the message (sent to it) says why."""


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


class PeerDirectory:
    """The agents' published certificates, from StorageNodes: whom TLS admits, and which node each is.

    Re-listed every `max_age`, and sooner (at most every `min_interval`) when a handshake failed,
    so a node that just joined is let in within a second or two of its first try (clients retry a
    refused handshake), and a removed one is shut out. The apiserver being away keeps the last set:
    it never opens the door.
    """

    def __init__(
        self,
        list_nodes: Callable[[], list[StorageNode]],
        *,
        min_interval: float = 1.0,
        max_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.list_nodes = list_nodes
        self.min_interval = min_interval
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, str] = {}  # certificate fingerprint -> node name
        self._pems: tuple[str, ...] = ()
        self._listed_at: float | None = None
        self._stale = True
        self.version = 0

    def node_of(self, certificate_der: bytes) -> str | None:
        return self._nodes.get(fingerprint(certificate_der))

    def trusted(self) -> tuple[str, ...]:
        return self._pems

    def mark_stale(self) -> None:
        self._stale = True

    def refresh_if_due(self) -> bool:
        """Re-list if due; True if the set of certificates changed."""
        with self._lock:
            age = None if self._listed_at is None else self.clock() - self._listed_at
            if not (age is None or age >= self.max_age or (self._stale and age >= self.min_interval)):
                return False
            self._listed_at = self.clock()
            self._stale = False
            try:
                nodes = self.list_nodes()
            except Exception:
                log.warning("could not list StorageNodes to check peers; keeping the last set", exc_info=True)
                return False
            published = _published_certificates(nodes)
            if set(published) == set(self._nodes):
                return False
            self._nodes = {print_: name for print_, (name, _pem) in published.items()}
            self._pems = tuple(pem for _name, pem in published.values())
            self.version += 1
            return True


def _published_certificates(nodes: Iterable[StorageNode]) -> dict[str, tuple[str, str]]:
    """Fingerprint -> (node, PEM) of every certificate TLS can load; one bad entry must not shut all out."""
    found: dict[str, tuple[str, str]] = {}
    for node in nodes:
        pem = node.status.endpoints.peer_certificate
        if not pem:
            continue
        try:
            ssl.create_default_context(cadata=pem)
            found[pem_fingerprint(pem)] = (node.spec.node_name, pem)
        except (IdentityError, ssl.SSLError, ValueError):
            log.warning("StorageNode %s publishes an unreadable peer certificate", node.spec.node_name)
    return found


@dataclass
class _Pending:
    """A connection still in its TLS handshake or request head: it holds a socket, never a thread."""

    sock: ssl.SSLSocket
    address: str
    deadline: float
    handshaken: bool = False
    head: bytearray = field(default_factory=bytearray)


@dataclass
class Refusals:
    """What the server turned away, by why: for the metric and tests."""

    node_name: str
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, why: str) -> None:
        metrics.PEER_REFUSED.labels(node=self.node_name, reason=why).inc()
        with self.lock:
            self.counts[why] = self.counts.get(why, 0) + 1

    def get(self, why: str) -> int:
        with self.lock:
            return self.counts.get(why, 0)


class PeerServer:
    """The peer server: TLS for Cairn agents only, a deadline on every head, a bounded worker pool."""

    def __init__(
        self,
        address: str,
        identity: PeerIdentity,
        peers: PeerDirectory,
        locate: Locate,
        read_volume: ReadVolume = lambda name: None,
        dataset_torrent: DatasetTorrent = lambda namespace, name, part, node: None,
        *,
        workers: int = 16,
        queue: int = 16,
        pending_limit: int = 256,
        per_address_limit: int = 16,
        head_deadline: float = 10.0,
        io_timeout: float = 60.0,
    ) -> None:
        self.identity = identity
        self.node_name = identity.node_name
        self.peers = peers
        self.locate = locate
        self.read_volume = read_volume
        self.dataset_torrent = dataset_torrent
        self.manifests = _ManifestCache()
        self.pending_limit = pending_limit
        self.per_address_limit = per_address_limit
        self.head_deadline = head_deadline
        self.io_timeout = io_timeout
        self.refused = Refusals(self.node_name)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peer-worker")
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._listener = socket.create_server(split_address(address), backlog=128)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._pending: dict[int, _Pending] = {}
        self._stopped = threading.Event()
        self._context = self._new_context()

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def _new_context(self) -> ssl.SSLContext:
        self._context_version = self.peers.version
        return self.identity.server_context(self.peers.trusted())

    def serve_in_background(self, stop: threading.Event | None = None) -> PeerServer:
        self.peers.refresh_if_due()
        self._context = self._new_context()
        self._front_thread = threading.Thread(target=self._front, name="peer-front", daemon=True)
        self._front_thread.start()
        if stop is not None:

            def close_on_stop() -> None:
                stop.wait()
                self.close()

            threading.Thread(target=close_on_stop, name="peer-stop", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop accepting and close the listener (in-flight responses finish on their own)."""
        self._stopped.set()
        thread = getattr(self, "_front_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # -- the front stage: accept, handshake and head, never blocking ----------------------------

    def _front(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._stopped.is_set():
                for key, _events in self._selector.select(timeout=0.25):
                    if key.fileobj is self._listener:
                        self._accept()
                    else:
                        self._advance(self._pending[key.fd])
                self._expire()
                if self.peers.refresh_if_due() or self.peers.version != self._context_version:
                    self._context = self._new_context()
        finally:
            for pending in list(self._pending.values()):
                self._drop(pending, None)
            self._selector.close()
            self._listener.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _accept(self) -> None:
        while True:
            try:
                raw, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            address = str(peer[0])
            from_there = sum(1 for p in self._pending.values() if p.address == address)
            if len(self._pending) >= self.pending_limit or from_there >= self.per_address_limit:
                self.refused.add("too many pending")
                raw.close()
                continue
            raw.setblocking(False)
            sock = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            pending = _Pending(sock, address, time.monotonic() + self.head_deadline)
            self._pending[sock.fileno()] = pending
            self._selector.register(sock, selectors.EVENT_READ)
            self._advance(pending)

    def _advance(self, pending: _Pending) -> None:
        try:
            if not pending.handshaken:
                pending.sock.do_handshake()
                pending.handshaken = True
            while b"\r\n\r\n" not in pending.head:
                chunk = pending.sock.recv(4096)
                if not chunk:
                    self._drop(pending, "closed early")
                    return
                pending.head += chunk
                if len(pending.head) > MAX_HEAD_BYTES:
                    self._drop(pending, "head too large")
                    return
        except ssl.SSLWantReadError:
            self._selector.modify(pending.sock, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(pending.sock, selectors.EVENT_WRITE)
            return
        except ssl.SSLError as error:
            log.info("peer %s refused at TLS: %s", pending.address, error.reason or error)
            self.peers.mark_stale()  # perhaps a node that joined since the last listing
            self._drop(pending, "tls")
            return
        except OSError:
            self._drop(pending, "closed early")
            return
        self._dispatch(pending)

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            log.info(
                "peer %s took over %.0fs to send its request; closed", pending.address, self.head_deadline
            )
            self._drop(pending, "deadline")

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        self._selector.unregister(pending.sock)

    def _drop(self, pending: _Pending, why: str | None) -> None:
        if why is not None:
            self.refused.add(why)
        self._forget(pending)
        pending.sock.close()

    def _dispatch(self, pending: _Pending) -> None:
        self._forget(pending)
        certificate = pending.sock.getpeercert(binary_form=True)
        node = self.peers.node_of(certificate) if certificate else None
        sock, head = pending.sock, bytes(pending.head)
        sock.setblocking(True)
        sock.settimeout(self.io_timeout)
        if node is None or not self._slots.acquire(blocking=False):
            self.refused.add("unknown certificate" if node is None else "busy")
            status = HTTPStatus.FORBIDDEN if node is None else HTTPStatus.SERVICE_UNAVAILABLE
            sock.settimeout(1.0)
            message = "this certificate is no node's" if node is None else "too busy; retry shortly"
            _answer_and_close(sock, status, message)
            return
        self._pool.submit(self._work, sock, pending.address, head, node)

    def _work(self, sock: ssl.SSLSocket, address: str, head: bytes, node: str) -> None:
        try:
            _Handler(sock, (address, 0), self, head, node)
        except Exception:
            log.warning("peer request from %s (%s) failed", node, address, exc_info=True)
        finally:
            self._slots.release()
            with contextlib.suppress(OSError):
                sock.close()


def _answer_and_close(sock: ssl.SSLSocket, status: HTTPStatus, message: str) -> None:
    body = (message + "\n").encode()
    head = f"HTTP/1.0 {status.value} {status.phrase}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    try:
        sock.sendall(head + body)
    except OSError:
        pass
    finally:
        sock.close()


class _SocketWriter(io.RawIOBase):
    """Every byte or an error: a raw socket file may write only part of a buffer."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class _Handler(BaseHTTPRequestHandler):
    server: PeerServer  # type: ignore[assignment]

    def __init__(
        self, sock: ssl.SSLSocket, address: tuple[str, int], server: PeerServer, head: bytes, node: str
    ) -> None:
        self.head = head
        self.requester = node
        super().__init__(sock, address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self.head)  # the head the front stage read; GETs carry no body
        self.wfile = _SocketWriter(self.connection)  # type: ignore[assignment]

    def do_GET(self) -> None:
        try:
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
            self._authorise_checkpoint(located)
            manifest, text = self.server.manifests.load(located.directory, located.digest)
            if what == "manifest":
                self._send_bytes(text)
            else:
                self._send_file(located.directory, manifest, what)
        except _NotServed as refusal:
            self._refuse(refusal.status, str(refusal))
        except PeerRefused as refusal:
            self.server.refused.add("forbidden")
            self._refuse(HTTPStatus.FORBIDDEN, str(refusal))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("peer %s went away mid-response", self.requester)

    def _authorise_checkpoint(self, located: CheckpointCopy) -> None:
        volume_name = self.headers.get(VOLUME_HEADER)
        volume: tuple[str, LocalVolume] | None = None
        if volume_name and _DNS_NAME.fullmatch(volume_name):
            try:
                found = self.server.read_volume(volume_name)
                volume = None if found is None else (volume_name, found)
            except Exception as error:
                raise _NotServed(
                    HTTPStatus.SERVICE_UNAVAILABLE, f"cannot look up volume {volume_name}: {error}"
                ) from None
        refusal = checkpoint_read_refusal(located, self.requester, self.server.node_name, volume)
        if refusal is not None:
            log.warning("refused node %s checkpoint %s/%s: %s", self.requester, *located.key, refusal)
            raise PeerRefused(refusal)

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
        torrent = self.server.dataset_torrent(namespace, name, part, self.requester)
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
            self.connection.sendfile(file, 0, size)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.requester, *args)


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


class _Expiring:
    """Remembers `locate` answers for a few seconds: one GET per copy per burst, not per file."""

    def __init__(self, locate: Locate, ttl: float = 5.0) -> None:
        self.locate = locate
        self.ttl = ttl
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], tuple[float, CheckpointCopy | None]] = {}

    def __call__(self, namespace: str, name: str) -> CheckpointCopy | None:
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
    identity: PeerIdentity,
    peers: PeerDirectory,
    locate: Locate,
    read_volume: ReadVolume,
    stop: threading.Event,
    dataset_torrent: DatasetTorrent = lambda namespace, name, part, node: None,
) -> PeerServer:
    """The node agent's peer server: `locate` finds copies, StorageNodes' certificates name the clients."""
    server = PeerServer(address, identity, peers, _Expiring(locate), read_volume, dataset_torrent)
    server.serve_in_background(stop)
    log.info("serving checkpoint copies to Cairn agents over TLS on %s", server.address)
    return server
