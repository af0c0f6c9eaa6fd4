"""The edge's gunicorn worker: gevent, so a waiting request, an idle connection or a
client that dawdles costs a greenlet, never one of a few dozen threads.

On top of gevent's worker: a cap on open connections per client address (a
503 beyond it, so one address cannot take every connection of a process), and
a read timeout on every connection, so a client that stops sending (or stops
reading a response) is dropped. A request's headers must arrive within
`keepalive` seconds, which gunicorn's gevent worker already enforces.

On a graceful stop (SIGTERM) the connections kept alive between requests are
closed at once: gunicorn's worker waits until every connection's greenlet ends,
and an idle one would otherwise end only when its keep-alive ran out, so every
stop took that long. Requests in progress finish, and their connections close.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import time
from typing import Any

from gunicorn.workers.ggevent import GeventWorker

from worker.settings import Settings


def _refusal() -> bytes:
    body = json.dumps({"detail": "Too many connections from this address"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


REFUSAL = _refusal()


class EdgeWorker(GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        settings = Settings()
        self.per_address_cap = settings.max_connections_per_client
        self.read_timeout = settings.read_timeout_seconds
        self.open_by_address: collections.Counter[str] = collections.Counter()
        # Connections waiting for their next request; closed when the worker stops.
        self.idle: set[Any] = set()
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        address = addr[0] if isinstance(addr, tuple) else str(addr)
        if self.open_by_address[address] >= self.per_address_cap:
            with contextlib.suppress(OSError):
                client.sendall(REFUSAL)
            client.close()
            return
        self.open_by_address[address] += 1
        client.settimeout(self.read_timeout)
        self.idle.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self.idle.discard(client)
            self.open_by_address[address] -= 1
            if not self.open_by_address[address]:
                del self.open_by_address[address]

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self.idle.discard(sock)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if self.alive:
                self.idle.add(sock)
            else:
                # The stop came while this request ran: its answer is sent, and no
                # other request is to be read on this connection.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # A shutdown, not a close: the greenlet reading the socket sees the end of
        # the stream and ends; the socket is closed by its own handler.
        for client in list(self.idle):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, client, addr, exc)
        # A request refused before it was read whole (a request line or headers
        # over the limits): read what the client still sends before closing, since
        # closing with unread data resets the connection and the client may lose
        # the answer it was sent (a lingering close).
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
            client.settimeout(1)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline and client.recv(65536):
                pass
