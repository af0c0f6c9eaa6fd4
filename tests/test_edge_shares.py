"""The edge's shares of connections and time, on a real gunicorn edge: idle
connections give way to requests at the per-address cap, a trusted proxy's
clients are each counted as themselves, and a body trickled in is cut off.

Loopback only (each kind of client from its own 127.x address), bounded in
time; what is asserted is an answer or a refusal, never a speed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.serving import TrustedProxies
from cli.embedded import wait_for_port
from tests.attackers import Crowd, connect, crowds, request_head
from tests.stack import Servers, Stack

CAP = 8
PROXY = "127.0.0.70"


@pytest.fixture(scope="module")
def edge(servers: Servers, logs_dir: Path) -> Iterator[Stack]:
    stack = Stack(
        servers,
        logs_dir,
        overrides={
            "MAX_CONNECTIONS_PER_CLIENT": str(CAP),
            "FORWARDED_ALLOW_IPS": f"{PROXY},10.9.0.0/16",
            "BODY_TIMEOUT_SECONDS": "4",
            "BODY_MIN_BYTES_PER_SECOND": "1000",
            "READ_TIMEOUT_SECONDS": "30",
        },
    )
    try:
        # One process: every connection of an address meets the same cap.
        process = stack.spawn(
            "api", "api", "--host", "127.0.0.1", "--port", str(stack.port), "--workers", "1"
        )
        wait_for_port(stack.port, process, timeout=60)
        yield stack
    finally:
        stack.stop()


def answer(sock: socket.socket, timeout: float = 20) -> bytes:
    """The answer the edge sends back on `sock`: its head and body (by its
    Content-Length), or what came before it closed (or the timeout)."""
    sock.settimeout(timeout)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            length = [
                int(row.split(b":")[1])
                for row in head.split(b"\r\n")
                if row.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
    except TimeoutError:
        pass
    return reply


def get(port: int, source: str, path: str = "/healthz", **headers: str) -> bytes:
    with connect(port, source) as sock:
        sock.sendall(request_head("GET", path, {"Connection": "close", **headers}))
        return answer(sock)


def busy(edge: Stack, source: str, count: int, **headers: str) -> Crowd:
    """`count` requests in progress: a create whose body is announced and never
    sent (with a key, so that the edge reads it)."""
    headers = {
        "Authorization": f"Bearer {key(edge)}",
        "Content-Type": "application/json",
        **headers,
    }
    head = request_head("POST", "/v1/assistants", headers, content_length=100)
    return Crowd(edge.port, source, head).open(count)


_keys: dict[str, str] = {}


def key(edge: Stack) -> str:
    if edge.name not in _keys:
        _keys[edge.name] = edge.new_tenant().api_key
    return _keys[edge.name]


def test_idle_connections_give_way_to_requests_at_the_cap(edge: Stack) -> None:
    source = "127.0.0.60"
    with crowds(Crowd(edge.port, source, b"").open(CAP * 5)) as (idle,):
        # Far over the cap, none with a request: each request still gets in.
        for _ in range(3):
            assert get(edge.port, source).startswith(b"HTTP/1.1 200"), "healthz refused"
        # The oldest idle connections were closed to make room.
        assert idle.answered() >= CAP * 4


def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(edge: Stack) -> None:
    source = "127.0.0.61"
    with crowds(busy(edge, source, CAP)):
        time.sleep(0.5)  # each request's head read: all CAP busy
        reply = get(edge.port, source)
    assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
    assert b"Retry-After: 1" in reply
    # Another address is not affected.
    assert get(edge.port, "127.0.0.62").startswith(b"HTTP/1.1 200")


def test_a_trusted_proxy_is_not_capped_as_one_client(edge: Stack) -> None:
    # More busy requests through the proxy than the cap, each from its own client.
    clients = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(CAP * 2)]
    with crowds(*[busy(edge, PROXY, 1, **client) for client in clients]):
        time.sleep(0.5)
        assert get(edge.port, PROXY, **{"X-Forwarded-For": "198.51.100.1"}).startswith(
            b"HTTP/1.1 200"
        )


def test_through_a_trusted_proxy_the_real_client_is_capped(edge: Stack) -> None:
    client = {"X-Forwarded-For": "198.51.100.7"}
    with crowds(busy(edge, PROXY, CAP, **client)):
        time.sleep(0.5)
        refused = get(edge.port, PROXY, **client)
        # The client's own claims to its left prove nothing: still 198.51.100.7.
        spoofed = get(edge.port, PROXY, **{"X-Forwarded-For": "192.0.2.1, 198.51.100.7"})
        other = get(edge.port, PROXY, **{"X-Forwarded-For": "198.51.100.8"})
    assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
    assert spoofed.startswith(b"HTTP/1.1 503"), spoofed[:200]
    assert other.startswith(b"HTTP/1.1 200"), other[:200]


def test_an_untrusted_peer_cannot_claim_another_address(edge: Stack) -> None:
    source = "127.0.0.63"
    with crowds(busy(edge, source, CAP, **{"X-Forwarded-For": "198.51.100.9"})):
        time.sleep(0.5)
        # Its X-Forwarded-For is ignored: it is counted as itself, at its cap.
        reply = get(edge.port, source, **{"X-Forwarded-For": "198.51.100.10"})
    assert reply.startswith(b"HTTP/1.1 503"), reply[:200]


def test_a_body_trickled_in_is_cut_off_with_408(edge: Stack) -> None:
    tenant = edge.new_tenant()
    head = request_head(
        "POST",
        "/v1/assistants",
        {"Authorization": f"Bearer {tenant.api_key}", "Content-Type": "application/json"},
        content_length=400,
    )
    # A byte every half second: never idle long enough for the read timeout (30 s),
    # far under the minimum rate once the 4 s grace has run out.
    with crowds(Crowd(edge.port, "127.0.0.64", head, drip=b" " * 400, interval=0.5).open(1)) as (
        trickle,
    ):
        started = time.monotonic()
        reply = answer(trickle.sockets[0], timeout=30)
        took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive in time" in reply
    assert took < 25, took  # not the 200 s the trickle would take


def test_a_body_sent_at_a_fair_rate_is_read_whole(edge: Stack) -> None:
    tenant = edge.new_tenant()
    body = b'{"model": "m", "name": "' + b"x" * 12000 + b'"}'
    head = request_head(
        "POST",
        "/v1/assistants",
        {
            "Authorization": f"Bearer {tenant.api_key}",
            "Content-Type": "application/json",
            "Connection": "close",
        },
        content_length=len(body),
    )
    with connect(edge.port, "127.0.0.65") as sock:
        sock.sendall(head)
        # 12 KB over 6 s: past the 4 s grace, but at twice the minimum rate.
        for start in range(0, len(body), 1000):
            sock.sendall(body[start : start + 1000])
            time.sleep(0.5)
        reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 202"), reply[:300]


def test_the_real_client_is_the_rightmost_untrusted_hop() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])
    assert proxies.client("10.1.2.3", ["198.51.100.1"]) == "198.51.100.1"
    assert proxies.client("10.1.2.3", ["1.1.1.1, 198.51.100.1, 10.0.0.5"]) == "198.51.100.1"
    assert proxies.client("10.1.2.3", ["1.1.1.1", "198.51.100.1,192.0.2.1"]) == "198.51.100.1"
    assert proxies.client("198.51.100.2", ["1.1.1.1"]) == "198.51.100.2"  # not a proxy
    assert proxies.client("10.1.2.3", []) == "10.1.2.3"
    assert proxies.client("10.1.2.3", ["10.0.0.9"]) == "10.0.0.9"  # proxies all the way
    assert proxies.client("::ffff:10.1.2.3", ["198.51.100.3"]) == "198.51.100.3"
    assert not TrustedProxies([])
    assert TrustedProxies(["*"]).trusts("203.0.113.5")


def test_healthz_is_answered_while_a_large_dry_run_is_planned(edge: Stack) -> None:
    tenant = edge.new_tenant()
    body = {"model": "m", "instructions": "y" * 2000}
    data = b"".join(
        json.dumps({"custom_id": f"k{i}", "body": body}).encode() + b"\n" for i in range(8000)
    )
    done: list[float] = []

    def dry_run() -> None:
        started = time.monotonic()
        answer = tenant.request(
            "POST",
            "/v1/batches?mode=apply&dry_run=true",
            data=data,
            headers={"Content-Type": "application/x-ndjson"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text[:300]
        done.append(time.monotonic() - started)

    running = threading.Thread(target=dry_run)
    running.start()
    probes = []
    while running.is_alive():
        started = time.monotonic()
        assert get(edge.port, "127.0.0.66").startswith(b"HTTP/1.1 200")
        probes.append(time.monotonic() - started)
        time.sleep(0.05)
    running.join()
    assert done, "the dry run failed"
    # The one process parses and plans for seconds; a probe waits for its turn,
    # never for the dry run to end (which it did before the edge gave turns).
    assert len(probes) >= 5, (probes, done)
    assert max(probes) < done[0] / 3, (max(probes), done[0])
