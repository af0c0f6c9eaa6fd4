"""A closed-loop HTTP/1.1 load generator over raw sockets, the same for every target.

Each client thread keeps one connection alive, with `TCP_NODELAY`, and writes
each request (headers and body) with one `sendall`, so neither Nagle's
algorithm on our side nor a peer's delayed ACK can hold a request back. Replies
are read by `Content-Length` or chunked framing. A library client would add
its own per-request cost, different from one library to another; this one
costs the same for both servers compared.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

NO_BODY_STATUSES = {204, 304}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


class Connection:
    def __init__(self, host: str, port: int, timeout: float = 60) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer.clear()
        return sock

    def open(self) -> None:
        if self._sock is None:
            self._sock = self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def exchange(self, request: bytes) -> Reply:
        """Send one request in one write and read its whole reply."""
        self.open()
        assert self._sock is not None
        self._sock.sendall(request)
        reply = self._read_reply()
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            self.close()
            raise ConnectionError("connection closed by the server mid-reply")
        self._buffer += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            self._fill()
        data = bytes(self._buffer[:end])
        del self._buffer[: end + len(marker)]
        return data

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_head(self) -> tuple[int, dict[str, str]]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _read_reply(self) -> Reply:
        status, headers = self._read_head()
        while 100 <= status < 200:  # interim replies carry no body; the final one follows
            status, headers = self._read_head()
        if status in NO_BODY_STATUSES:
            return Reply(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Reply(status, headers, self._read_chunked())
        if "content-length" in headers:
            return Reply(status, headers, self._read_exactly(int(headers["content-length"])))
        # Neither framing: the body runs until the server closes the connection.
        body = bytearray(self._buffer)
        self._buffer.clear()
        assert self._sock is not None
        while chunk := self._sock.recv(65536):
            body += chunk
        self.close()
        return Reply(status, headers, bytes(body))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailer fields, if any, end with an empty line.
                while self._read_until(b"\r\n"):
                    pass
                return bytes(body)
            body += self._read_exactly(size)
            self._read_until(b"\r\n")


def post(path: str, host: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The whole request, head and body, as the bytes of one write."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Run:
    """What a closed-loop run saw: each request's latency and reply status."""

    clients: int
    elapsed: float  # from the first send until the last reply
    started: float  # time.perf_counter() of the first send
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    replies: list[Reply] = field(default_factory=list)

    def count(self, status: int) -> int:
        return self.statuses[status]


def closed_loop(
    host: str,
    port: int,
    clients: int,
    seconds: float,
    make_request: Callable[[int, int], bytes],
    keep: Callable[[Reply], bool] = lambda reply: False,
) -> Run:
    """`clients` threads, each sending its next request as soon as the last
    is answered, for `seconds`. `make_request(slot, i)` builds request `i` of
    client `slot`; replies for which `keep` is true are kept in the run."""
    connections = [Connection(host, port) for _ in range(clients)]
    for connection in connections:
        connection.open()
    per_client: list[tuple[list[float], Counter[int], list[Reply]]] = [
        ([], Counter(), []) for _ in range(clients)
    ]
    # All clients start together, after their connections are open.
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    def client(slot: int) -> None:
        latencies, statuses, kept = per_client[slot]
        connection = connections[slot]
        start.wait()
        i = 0
        while time.perf_counter() < deadline:
            request = make_request(slot, i)
            sent = time.perf_counter()
            reply = connection.exchange(request)
            latencies.append(time.perf_counter() - sent)
            statuses[reply.status] += 1
            if keep(reply):
                kept.append(reply)
            i += 1

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline = started + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    run = Run(clients=clients, elapsed=elapsed, started=started)
    for latencies, statuses, kept in per_client:
        run.latencies += latencies
        run.statuses += statuses
        run.replies += kept
    return run


# Bucket edges in milliseconds: fine below 10 ms, and around 40 ms, where a
# delayed ACK (Linux: 40 ms minimum) would add a second mode.
HISTOGRAM_EDGES_MS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 38, 42, 46, 50, 60, 80, 100, 150, 250)


def histogram(latencies: list[float]) -> str:
    counts = [0] * (len(HISTOGRAM_EDGES_MS) + 1)
    for value in latencies:
        ms = value * 1000
        index = next((i for i, edge in enumerate(HISTOGRAM_EDGES_MS) if ms < edge), -1)
        counts[index] += 1
    labels = [f"<{HISTOGRAM_EDGES_MS[0]}"]
    labels += [f"{a}-{b}" for a, b in itertools.pairwise(HISTOGRAM_EDGES_MS)]
    labels.append(f">={HISTOGRAM_EDGES_MS[-1]}")
    pairs = zip(labels, counts, strict=True)
    return " ".join(f"{label}:{count}" for label, count in pairs if count)


def delayed_ack_suspects(latencies: list[float], median: float) -> int:
    """Requests that took about 40 ms more than the median: a delayed-ACK stall
    adds 40 ms (or a little more) to an otherwise typical request."""
    low, high = median + 0.036, median + 0.048
    return sum(1 for value in latencies if low <= value < high)
