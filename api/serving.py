"""The edge's gunicorn worker: gevent, so a waiting request, an idle connection or a
client that dawdles costs a greenlet, never one of a few dozen threads.

On top of gevent's worker:

- A cap on open connections per client address, so one address cannot take
  every connection of a process. When an address is at its cap, its oldest
  idle connection (kept alive between requests, or that has not sent a whole
  request yet) is closed to make room; only when every one of them has a
  request in progress is the new one refused (503). So idle connections, with
  or without a key, never take the place of a request that is sent: a NAT or a
  client holding 700 idle connections still gets its `/healthz` answered.
- Trusted proxies (FORWARDED_ALLOW_IPS): a connection from one is not capped as
  one client; each request through it is counted for its real client (the
  PROXY protocol's address when gunicorn was told to read it, else the
  rightmost X-Forwarded-For entry that is not itself a trusted proxy, as
  Werkzeug's ProxyFix and gunicorn read it), which is also the request's
  REMOTE_ADDR. A real client with the cap's number of requests in progress
  through the proxies is refused (503) and that connection closed.
- A read timeout on every connection, so a client that stops sending (or stops
  reading a response) is dropped, and a deadline on reading a request's body
  (BODY_TIMEOUT_SECONDS, then BODY_MIN_BYTES_PER_SECOND): a body trickled a
  byte at a time is cut off with a 408 (api/errors.py). A request's headers
  must arrive within `keepalive` seconds, which gunicorn's gevent worker
  already enforces.

On a graceful stop (SIGTERM) the connections kept alive between requests are
closed at once: gunicorn's worker waits until every connection's greenlet ends,
and an idle one would otherwise end only when its keep-alive ran out, so every
stop took that long. Requests in progress finish, and their connections close;
those held by `Prefer: wait` answer at once, with their job as it is (a 202
for one not finished), rather than hold the stop for up to a minute.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker

from worker.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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

# What a connection is doing, for choosing which to close at the cap.
NEW, BUSY, IDLE = 0, 1, 2


class TrustedProxies:
    """The addresses and networks whose X-Forwarded-For is believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.everyone = False
        self.networks: list[Network] = []
        for entry in entries:
            if entry == "*":
                self.everyone = True
            else:
                self.networks.append(ipaddress.ip_network(entry, strict=False))

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts(self, address: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The real client of a request from `peer`: the rightmost entry of the
        X-Forwarded-For chain that is not a trusted proxy (entries to its left
        were written by the client itself and prove nothing)."""
        if not self.trusts(peer):
            return peer
        chain = [part.strip() for value in forwarded_for for part in value.split(",")]
        chain = [part for part in chain if part]
        for entry in reversed(chain):
            if not self.trusts(entry):
                return entry
        # Every hop a trusted proxy: the leftmost is as far as the chain goes.
        return chain[0] if chain else peer


class BodyTooSlow(TimeoutError):
    """The request body did not arrive within its deadline."""


class DeadlineBody:
    """A request body whose reads end by a deadline: `grace` seconds from the
    first read, plus a second for every `rate` bytes received (Apache's
    `RequestReadTimeout body=...,MinRate=...`). A client that keeps sending at
    the rate or faster is never cut; one trickling a byte every few seconds is
    cut once the grace runs out, whatever its socket read timeout says."""

    def __init__(self, body: Any, grace: float, rate: float) -> None:
        self._body = body
        self._grace = grace
        self._rate = rate
        self._started: float | None = None
        self.received = 0
        # gunicorn's parser closes the connection rather than read on a body
        # whose reading failed.
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)

    def _remaining(self) -> float:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        allowed = self._grace + (self.received / self._rate if self._rate > 0 else 0)
        remaining = self._started + allowed - now
        if remaining <= 0:
            self.failed = True
            raise BodyTooSlow("The request body did not arrive in time")
        return remaining

    def _timed(self, read: Any, *args: Any) -> Any:
        import gevent  # type: ignore[import-untyped]

        data = b""
        with gevent.Timeout(self._remaining(), False):
            data = read(*args)
            self.received += len(data) if isinstance(data, bytes | bytearray) else 0
            return data
        self.failed = True
        raise BodyTooSlow("The request body did not arrive in time")

    def read(self, size: int | None = None) -> bytes:
        """Up to `size` bytes (all, without one), read a piece at a time: one
        read of gunicorn's body waits for all it was asked, and the deadline
        grows only as pieces arrive. A piece is about a second's worth at the
        minimum rate, so a client sending at that rate is never cut mid-piece."""
        piece = int(min(1 << 16, max(1024, self._rate)))
        wanted = -1 if size is None or size < 0 else size
        parts: list[bytes] = []
        while wanted != 0:
            data: bytes = self._timed(self._body.read, piece if wanted < 0 else min(piece, wanted))
            if not data:
                break
            parts.append(data)
            if wanted > 0:
                wanted -= len(data)
        return b"".join(parts)

    def readline(self, size: int | None = None) -> bytes:
        data: bytes = self._timed(self._body.readline, size)
        return data

    def readlines(self, size: int | None = None) -> list[bytes]:
        lines: list[bytes] = []
        while line := self.readline():
            lines.append(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class EdgeLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger without its access line: the app writes its own, as
    JSON with the request id (api/logging_setup.py). gunicorn builds its line
    whenever a logging configuration is given, as the edge's is (for JSON), and
    the configuration then drops it: about 4 % of the edge's CPU at 8 clients
    (py-spy, bench.versus), for nothing."""

    @property
    def access_log_enabled(self) -> bool:
        return False


class EdgeWorker(GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        settings = Settings()
        self.per_address_cap = settings.max_connections_per_client
        self.read_timeout = settings.read_timeout_seconds
        self.body_grace = settings.body_timeout_seconds
        self.body_rate = settings.body_min_bytes_per_second
        self.proxies = TrustedProxies(settings.forwarded_allow_ips)
        # Per client address, its open connections, oldest first, each NEW (no
        # request yet), BUSY (a request in progress) or IDLE (kept alive after one).
        self.by_address: dict[str, dict[Any, int]] = {}
        # Requests in progress per real client, through trusted proxies.
        self.proxied: collections.Counter[str] = collections.Counter()
        # Connections waiting for their next request; closed when the worker stops.
        self.idle: set[Any] = set()
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        address = addr[0] if isinstance(addr, tuple) else str(addr)
        capped = not self.proxies.trusts(address)
        if capped and not self._make_room(address):
            _refuse(client)
            client.close()
            return
        if capped:
            self.by_address.setdefault(address, {})[client] = NEW
        client.settimeout(self.read_timeout)
        self.idle.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self.idle.discard(client)
            if capped:
                self._forget(address, client)

    def _make_room(self, address: str) -> bool:
        """Whether `address` may open one more connection: under its cap, or
        once its oldest idle connection is closed for it."""
        open_ = self.by_address.get(address)
        if open_ is None or len(open_) < self.per_address_cap:
            return True
        # The oldest that has never sent a request, else the oldest kept alive
        # after one: a client that has been served keeps its connection longest.
        idle = [sock for sock, state in open_.items() if state == NEW]
        idle = idle or [sock for sock, state in open_.items() if state == IDLE]
        if not idle:
            return False  # every one has a request in progress
        del open_[idle[0]]
        _end(idle[0])
        return True

    def _forget(self, address: str, client: Any) -> None:
        open_ = self.by_address.get(address)
        if open_ is not None:
            open_.pop(client, None)
            if not open_:
                del self.by_address[address]

    def _mark(self, addr: Any, sock: Any, state: int) -> None:
        address = addr[0] if isinstance(addr, tuple) else str(addr)
        open_ = self.by_address.get(address)
        if open_ is not None and sock in open_:
            open_[sock] = state

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self.idle.discard(sock)
        self._mark(addr, sock, BUSY)
        req.body = DeadlineBody(req.body, self.body_grace, self.body_rate)
        peer = addr[0] if isinstance(addr, tuple) else str(addr)
        client = None
        try:
            if self.proxies and self.proxies.trusts(peer):
                client = self._real_client(req, peer)
                if self.proxied[client] >= self.per_address_cap:
                    client = None
                    _refuse(sock)
                    raise StopIteration  # gunicorn's way to close the connection
                self.proxied[client] += 1
                addr = (client, addr[1] if isinstance(addr, tuple) else 0)
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if client is not None:
                self.proxied[client] -= 1
                if self.proxied[client] <= 0:
                    del self.proxied[client]
            self._mark((peer,), sock, IDLE)
            if self.alive:
                self.idle.add(sock)
            else:
                # The stop came while this request ran: its answer is sent, and no
                # other request is to be read on this connection.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _real_client(self, req: Any, peer: str) -> str:
        info = getattr(req, "proxy_protocol_info", None)
        if info and info.get("client_addr"):
            return str(info["client_addr"])
        forwarded = [value for name, value in req.headers if name == "X-FORWARDED-FOR"]
        return self.proxies.client(peer, forwarded)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        for client in list(self.idle):
            _end(client)
        app = getattr(self, "wsgi", None)  # None while the worker boots
        if app is not None:
            # Imported here: the arbiter, which imports this module, never
            # imports the store's driver. Out of the signal handler, as
            # gunicorn's gevent worker does for SIGQUIT: it takes a lock.
            import gevent

            from api.context import end_waits

            gevent.spawn(end_waits, app)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, client, addr, exc)
        # A request refused before it was read whole (a request line or headers
        # over the limits): see _linger.
        _linger(client)


def _end(client: Any) -> None:
    """End a connection another greenlet is reading: a shutdown of the socket
    itself, not a close, so that greenlet reads the end of the stream and ends
    quietly, closing the socket in its own handler. (gevent's own shutdown
    would wake it with "File descriptor was closed in another greenlet", an
    error gunicorn logs with its traceback.)"""
    with contextlib.suppress(OSError):
        getattr(client, "_sock", client).shutdown(socket.SHUT_RDWR)


def _refuse(client: Any) -> None:
    """Answer 503 on a connection that is not served, and close it gently."""
    with contextlib.suppress(OSError):
        client.sendall(REFUSAL)
    _linger(client)


def _linger(client: Any) -> None:
    """Read what the client still sends before closing (for a second at most),
    since closing with unread data resets the connection and the client may
    lose the answer it was sent (a lingering close)."""
    with contextlib.suppress(OSError):
        client.shutdown(socket.SHUT_WR)
        client.settimeout(1)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and client.recv(65536):
            pass
