"""A TCP proxy that can stop answering without closing anything: a half-open connection on demand.

An apiserver or load balancer that vanishes without a reset leaves its clients' connections open
and silent. No real part does that when asked, so this proxy does: `stall()` turns every
connection it carries, and every one accepted until `resume()`, into a black hole that is never
closed and never forwards another byte. Connections made after `resume()` work normally, so a
client that cuts off silent calls and reconnects recovers, and one that waits forever does not.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)


class StallingProxy:
    def __init__(self, listen_host: str, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((listen_host, 0))
        self.address = self._listener.getsockname()
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="stall-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://{self.address[0]}:{self.address[1]}"

    def stall(self) -> None:
        with self._lock:
            self._stalled.set()
            for connection in self._connections:
                connection.frozen.set()

    def resume(self) -> None:
        """New connections forward again; the ones caught in the stall stay dead, as half-open ones do."""
        self._stalled.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                for end in (connection.client, connection.upstream):
                    with contextlib.suppress(OSError):
                        end.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            connection = _Connection(client, upstream)
            with self._lock:
                if self._stalled.is_set():
                    connection.frozen.set()
                self._connections.append(connection)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(connection, source, sink), daemon=True).start()

    def _pump(self, connection: _Connection, source: socket.socket, sink: socket.socket) -> None:
        while not self._closed.is_set():
            if connection.frozen.is_set():
                self._closed.wait()  # silent and open until the proxy itself goes
                return
            try:
                data = source.recv(65536)
            except OSError:
                return
            if connection.frozen.is_set():
                continue  # swallowed, and never a close passed on either
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return
