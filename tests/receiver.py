"""A real HTTP receiver for webhook tests: a threaded http.server on loopback.

It records every request (path, headers, body, when it arrived) and answers
from a programme of replies, one per request, then a default (200):

    with Receiver() as hook:
        hook.fail(2)                 # 500, 500, then 200
        hook.then(Reply(410))
        hook.then(Hang())            # hold the request past the sender's timeout
        hook.then(Reply(429, {"Retry-After": "3"}))
        hook.then(Endless())         # 200, then a body that never ends
        hook.then(Drip(0.3))         # a header a byte at a time, never finished
        hook.release()               # answer what hangs now, and 200 from here on

Receivers given one `Tally` count the requests they hold at once, together.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from cli.embedded import free_port


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


@dataclass(frozen=True)
class Hang:
    """Answer nothing until released (at stop) or `seconds` pass, then 200."""

    seconds: float = 30.0


@dataclass(frozen=True)
class Endless:
    """Answer 200 with a body that goes on until the sender hangs up."""


@dataclass(frozen=True)
class Drip:
    """A 200 status line, then a header one byte every `interval` seconds,
    never finished: each read is quick, the answer never completes."""

    interval: float = 0.3


Action = Reply | Hang | Endless | Drip


class Tally:
    """Requests held at once by a group of receivers, and the most ever held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() on arrival
    answered: int | None  # the status it was answered with; None if it hung

    @property
    def text(self) -> str:
        return self.body.decode()


class Receiver:
    def __init__(self, port: int | None = None, tally: Tally | None = None) -> None:
        self.port = port or free_port()
        self.tally = tally
        self.default: Reply = Reply()
        self._programme: deque[Action] = deque()
        self._requests: list[Received] = []
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests it held at once
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- programming ------------------------------------------------------
    def then(self, *replies: Action) -> Receiver:
        with self._lock:
            self._programme.extend(replies)
        return self

    def fail(self, times: int, status: int = 500) -> Receiver:
        return self.then(*[Reply(status, body=b"failing")] * times)

    def release(self) -> None:
        """Answer every held request now (200), and every later one with 200."""
        with self._lock:
            self._programme.clear()
            self.default = Reply()
        self._released.set()

    # -- what arrived -----------------------------------------------------
    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.requests
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests, got {len(got)}")
            time.sleep(0.05)

    # -- running ----------------------------------------------------------
    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_POST
            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        # A sender that gave up closes the socket under a hanging handler.
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        if self.tally is not None:
            self.tally.enter()
        try:
            self._answer(handler)
        finally:
            with self._lock:
                self._in_flight -= 1
            if self.tally is not None:
                self.tally.leave()

    def _hold(self, handler: BaseHTTPRequestHandler, seconds: float) -> bool:
        """Hold the request for `seconds` or until released; False if the sender
        hung up meanwhile (so `max_in_flight` counts only requests it still waits on)."""
        deadline = time.monotonic() + seconds
        connection = handler.connection
        while not self._released.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0.05)
            if readable:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        return False
                except OSError:
                    return False
        return True

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        arrived = time.time()
        with self._lock:
            action = self._programme.popleft() if self._programme else self.default
        headers = {name.lower(): value for name, value in handler.headers.items()}
        answered = action.status if isinstance(action, Reply) else None
        if isinstance(action, Endless):
            answered = 200
        with self._lock:
            self._requests.append(Received(handler.path, headers, body, arrived, answered))
        if isinstance(action, Hang):
            if not self._hold(handler, action.seconds):
                return  # the sender hung up
            action = Reply()
        if isinstance(action, Drip):
            handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Drip: ")
            while not self._released.wait(action.interval):
                handler.wfile.write(b"a")
                handler.wfile.flush()
            return
        if isinstance(action, Endless):
            handler.send_response(200)
            handler.end_headers()  # no Content-Length: the body ends when the connection does
            chunk = b"x" * 65536
            while not self._released.is_set():
                handler.wfile.write(chunk)
            return
        handler.send_response(action.status)
        for name, value in action.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(action.body)))
        handler.end_headers()
        handler.wfile.write(action.body)
