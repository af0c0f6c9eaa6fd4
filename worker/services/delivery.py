"""One webhook delivery attempt: claim, check the address, POST, record.

Signing follows Standard Webhooks. The connection goes to an address that
was checked, redirects are not followed, the whole attempt has one deadline
and the response body is read only up to a small cap.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import logging
import socket
import ssl
import threading
import time
from email.utils import parsedate_to_datetime

from worker.domain.documents import Delivery
from worker.domain.retention import expire_at
from worker.domain.retries import Outcome, RetryPolicy
from worker.domain.statuses import DeliveryStatus
from worker.runtime import Runtime
from worker.services import urlguard
from worker.store import deliveries, tenants
from worker.telemetry import metrics

log = logging.getLogger(__name__)

RESPONSE_CAP = 64 * 1024


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def attempt(rt: Runtime, delivery_id: str) -> None:
    """Make the attempt that is due now, if any; later ones are scheduled in MongoDB."""
    policy = RetryPolicy.from_settings(rt.settings)
    claimed = deliveries.claim(rt.store, delivery_id, time.time(), policy.lease_seconds)
    if claimed is None:
        return  # not due, already being sent, or finished
    doc, token = claimed
    tenant = tenants.get(rt.store, doc["tenant"])
    signing = tenants.current_secrets(tenant) if tenant else []
    started = time.monotonic()
    if signing:
        outcome = post(rt, doc, signing)
    else:
        outcome = Outcome(None, "refused: the tenant has no signing secret")
    record(rt, policy, doc, token, outcome, int((time.monotonic() - started) * 1000))


def post(rt: Runtime, doc: Delivery, signing: list[str]) -> Outcome:
    timeout = rt.settings.webhook_timeout_seconds
    deadline = time.monotonic() + timeout
    try:
        target = urlguard.parse(doc["url"])
        # Checked again now: what a name resolves to can change after submission.
        addresses = urlguard.resolve(target, allow_private=rt.settings.webhook_allow_private)
    except urlguard.UrlRefused as exc:
        if exc.kind == urlguard.UNRESOLVED:
            return Outcome(None, f"network: {exc}")
        return Outcome(None, f"refused: {exc}")
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
        remaining = RESPONSE_CAP
        while remaining > 0:
            chunk = response.read(min(remaining, 8192))
            if not chunk:
                break
            remaining -= len(chunk)
        status, retry_after = response.status, response.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
            return Outcome(None, f"timeout: no complete answer within {timeout:g} s")
        return Outcome(None, f"network: {type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
        conn.close()
    if time.monotonic() >= deadline:
        return Outcome(None, f"timeout: no complete answer within {timeout:g} s")
    return Outcome(status, None, _retry_after(retry_after))


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


def record(
    rt: Runtime, policy: RetryPolicy, doc: Delivery, token: str, outcome: Outcome, duration_ms: int
) -> None:
    """Record the attempt and decide what follows, fenced by the lease."""
    now = time.time()
    entry = {
        "at": int(now),
        "status_code": outcome.status_code,
        "error": outcome.error,
        "duration_ms": duration_ms,
    }
    made = len(doc["attempts"]) + 1 - doc.get("retry_from", 0)
    delay = policy.next_delay(made, outcome)
    update: dict[str, object] = {"expire_at": expire_at(rt.settings, now)}
    if outcome.delivered:
        status = DeliveryStatus.DELIVERED
    elif delay is not None:
        # swept_at 0: the periodic sweep sends it once it is due.
        status = DeliveryStatus.PENDING
        update.update(next_attempt_at=now + delay, swept_at=0)
    else:
        status = DeliveryStatus.FAILED
    update["status"] = status
    recorded = deliveries.record_attempt(rt.store, doc["_id"], token, entry, update)
    metrics.webhook_attempt(status, duration_ms)
    if not recorded:
        log.warning("delivery %s: lease lost before its attempt was recorded", doc["_id"])
        return
    log.info(
        "delivery %s attempt %d: %s -> %s",
        doc["_id"],
        len(doc["attempts"]) + 1,
        outcome.status_code or outcome.error,
        status,
    )
