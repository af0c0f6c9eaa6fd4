"""One webhook POST: signed per Standard Webhooks, to an address that was checked,
under one deadline, and what the receiver answered, kept in short.

Redirects are not followed and the response body is read only up to a small
cap. Of the answer, the status, a short allow-list of headers and the first
KiB of the body are kept for the attempt log: what a receiver's owner needs
to see why it failed. Nothing of the request is kept (its signature, the
secret), and no other header of the answer (a receiver's cookies).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from worker.domain.documents import Delivery, Doc
from worker.domain.retries import Outcome
from worker.runtime import Runtime
from worker.services import urlguard

RESPONSE_CAP = 64 * 1024
# What the attempt log keeps of an answer.
KEPT_HEADERS = ("content-type", "retry-after")
KEPT_BODY_BYTES = 1024


@dataclass(frozen=True)
class Sent:
    outcome: Outcome
    response: Doc | None  # None: no answer (a network failure, a timeout)


def kept(status: int, headers: list[tuple[str, str]], head: bytes, cut: bool) -> Doc:
    """The answer as the attempt log shows it."""
    wanted = {name.lower(): value for name, value in headers if name.lower() in KEPT_HEADERS}
    return {
        "status_code": status,
        "headers": {name: wanted[name][:256] for name in KEPT_HEADERS if name in wanted},
        "body": head[:KEPT_BODY_BYTES].decode("utf-8", errors="replace"),
        "body_truncated": cut or len(head) > KEPT_BODY_BYTES,
    }


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def post(rt: Runtime, doc: Delivery, signing: list[str]) -> Sent:
    timeout = rt.settings.webhook_timeout_seconds
    deadline = time.monotonic() + timeout
    try:
        target = urlguard.parse(doc["url"])
        # Checked again now: what a name resolves to can change after submission.
        addresses = urlguard.resolve(target, allow_private=rt.settings.webhook_allow_private)
    except urlguard.UrlRefused as exc:
        if exc.kind == urlguard.UNRESOLVED:
            return Sent(Outcome(None, f"network: {exc}"), None)
        return Sent(Outcome(None, f"refused: {exc}"), None)
    timestamp = int(time.time())
    body = doc["body"]
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "assistant-ingest-webhooks/1",
        "webhook-id": doc["_id"],
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, doc["_id"], timestamp, body) for s in signing),
    }
    conn = _connection(target, addresses, deadline)
    # Socket timeouts bound each read, not the exchange: a receiver dripping
    # a byte at a time could outlast them. The watchdog cuts the connection
    # when the deadline passes, whatever it is doing.
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, args=(conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target.path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        head, remaining, cut = b"", RESPONSE_CAP, False
        while True:
            chunk = response.read(min(remaining, 8192)) if remaining > 0 else b""
            if not chunk:
                # At the cap with more to come: the body was cut.
                cut = remaining <= 0 and bool(response.read(1))
                break
            remaining -= len(chunk)
            if len(head) <= KEPT_BODY_BYTES:
                head += chunk[: KEPT_BODY_BYTES + 1 - len(head)]
        status, retry_after = response.status, response.getheader("Retry-After")
        answer = kept(status, response.getheaders(), head, cut)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
            return Sent(Outcome(None, f"timeout: no complete answer within {timeout:g} s"), None)
        return Sent(Outcome(None, f"network: {type(exc).__name__}: {exc}"), None)
    finally:
        watchdog.cancel()
        conn.close()
    if time.monotonic() >= deadline:
        return Sent(Outcome(None, f"timeout: no complete answer within {timeout:g} s"), None)
    return Sent(Outcome(status, None, _retry_after(retry_after)), answer)


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _connect(addresses: list[str], port: int, deadline: float) -> socket.socket:
    """A connection to the first checked address that answers, within the deadline."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connect: deadline passed")
        try:
            return socket.create_connection((address, port), timeout=remaining)
        except OSError as exc:
            error = exc
    raise error


def _connection(
    target: urlguard.Target, addresses: list[str], deadline: float
) -> http.client.HTTPConnection:
    """A connection to the checked addresses that still speaks to the URL's host name."""
    timeout = max(0.01, deadline - time.monotonic())

    class Pinned(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(addresses, target.port, deadline)

    class PinnedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = _connect(addresses, target.port, deadline)
            context = ssl.create_default_context()
            self.sock = context.wrap_socket(raw, server_hostname=target.host)

    cls = PinnedTLS if target.scheme == "https" else Pinned
    return cls(target.host, target.port, timeout=timeout)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After of delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
