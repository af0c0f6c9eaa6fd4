"""Clients that hold an edge's connections: slow, idle, or waiting. Raw sockets,
so each costs the attacker one file descriptor, and loopback source addresses
(any 127.x.y.z is this machine) so each kind of client comes from its own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Crowd:
    """Connections that were sent `head` and then a byte of `drip` every `interval`
    seconds (nothing more when `drip` is empty), until closed."""

    port: int
    source: str
    head: bytes
    drip: bytes = b""
    interval: float = 2.0
    sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def open(self, count: int) -> Crowd:
        for _ in range(count):
            sock = connect(self.port, self.source)
            sock.sendall(self.head)
            self.sockets.append(sock)
        if self.drip:
            threading.Thread(target=self._drip, daemon=True).start()
        return self

    def _drip(self) -> None:
        position = 0
        while not self._stop.wait(self.interval) and position < len(self.drip):
            byte = self.drip[position : position + 1]
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(byte)
            position += 1

    def answered(self) -> int:
        """How many connections have an answer (or were closed) by now."""
        count = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1, socket.MSG_PEEK)  # data, or b"" once closed
                count += 1
            except BlockingIOError:
                pass
            except OSError:
                count += 1
            finally:
                sock.setblocking(True)
        return count

    def close(self) -> None:
        self._stop.set()
        for sock in self.sockets:
            sock.close()


def request_head(
    method: str, path: str, headers: dict[str, str], content_length: int | None = None
) -> bytes:
    """A request's line and headers, ready for its body (if any) to follow."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@contextmanager
def crowds(*made: Crowd) -> Iterator[list[Crowd]]:
    try:
        yield list(made)
    finally:
        for crowd in made:
            crowd.close()


def timed_get(port: int, path: str, timeout: float = 10) -> float:
    """Seconds for one GET on a fresh connection; raises if it is not answered 200."""
    started = time.perf_counter()
    with connect(port, "127.0.0.1") as sock:
        sock.settimeout(timeout)
        sock.sendall(request_head("GET", path, {"Connection": "close"}))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    if not reply.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"GET {path}: {reply[:200]!r}")
    return time.perf_counter() - started
