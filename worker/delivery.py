"""One webhook delivery attempt: claim, check the address, POST, record.

Signing follows Standard Webhooks. The connection goes to the address that
was checked, redirects are not followed, the whole attempt has one deadline
and the response body is read only up to a small cap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import random
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from worker import tenants, urlguard
from worker.runtime import Runtime
from worker.store import Doc

RESPONSE_CAP = 64 * 1024
RETRYABLE_STATUS = {408, 429}


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        if self.status_code is None:
            return self.error is not None and not self.error.startswith("refused:")
        return self.status_code in RETRYABLE_STATUS or self.status_code >= 500


def attempt(rt: Runtime, delivery_id: str) -> None:
    """Make the attempt that is due now, if any; later ones are scheduled in MongoDB."""
    token = secrets.token_hex(16)
    now = time.time()
    doc = rt.store.deliveries.find_one_and_update(
        {
            "_id": delivery_id,
            "status": "pending",
            "next_attempt_at": {"$lte": now},
            "$or": [{"lease_expires": {"$exists": False}}, {"lease_expires": {"$lt": now}}],
        },
        {"$set": {"lease": token, "lease_expires": now + rt.settings.webhook_timeout_seconds + 60}},
    )
    if doc is None:
        return  # not due, already being sent, or finished
    tenant = tenants.get(rt.store, doc["tenant"])
    signing = tenants.current_secrets(tenant) if tenant else []
    started = time.monotonic()
    outcome = post(rt, doc, signing)
    record(rt, doc, token, outcome, duration_ms=int((time.monotonic() - started) * 1000))


def post(rt: Runtime, doc: Doc, signing: list[str]) -> Outcome:
    timeout = rt.settings.webhook_timeout_seconds
    deadline = time.monotonic() + timeout
    try:
        target = urlguard.parse(doc["url"])
        addresses = urlguard.resolve(target, allow_private=rt.settings.webhook_allow_private)
    except urlguard.UrlRefused as exc:
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
    conn = _connection(target, addresses[0], timeout)
    try:
        conn.request("POST", target.path, body=body.encode(), headers=headers)
        conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
        response = conn.getresponse()
        remaining = RESPONSE_CAP
        while remaining > 0 and time.monotonic() < deadline:
            chunk = response.read(min(remaining, 8192))
            if not chunk:
                break
            remaining -= len(chunk)
        if time.monotonic() > deadline:
            return Outcome(None, "timeout: no complete answer within the deadline")
        return Outcome(response.status, None, _retry_after(response.getheader("Retry-After")))
    except TimeoutError:
        return Outcome(None, "timeout: no answer within the deadline")
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(None, f"network: {type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _connection(
    target: urlguard.Target, address: str, timeout: float
) -> http.client.HTTPConnection:
    """A connection to the checked address that still speaks to the URL's host name."""

    class Pinned(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.create_connection((address, target.port), timeout=timeout)

    class PinnedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((address, target.port), timeout=timeout)
            context = ssl.create_default_context()
            self.sock = context.wrap_socket(raw, server_hostname=target.host)

    cls = PinnedTLS if target.scheme == "https" else Pinned
    return cls(target.host, target.port, timeout=timeout)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def record(rt: Runtime, doc: Doc, token: str, outcome: Outcome, duration_ms: int) -> None:
    """Record the attempt and decide what follows, fenced by the lease."""
    now = time.time()
    entry = {
        "at": int(now),
        "status_code": outcome.status_code,
        "error": outcome.error,
        "duration_ms": duration_ms,
    }
    made = len(doc["attempts"]) + 1 - doc.get("retry_from", 0)
    schedule = rt.settings.webhook_schedule
    update: Doc
    if outcome.delivered:
        update = {"status": "delivered"}
    elif outcome.retryable and made < len(schedule):
        delay = schedule[made]
        if outcome.retry_after is not None:
            delay = max(
                delay, min(outcome.retry_after, rt.settings.webhook_max_retry_after_seconds)
            )
        # Jitter spreads retries of many deliveries to one receiver apart.
        delay *= random.uniform(0.9, 1.1)
        update = {"status": "pending", "next_attempt_at": now + delay, "swept_at": 0}
    else:
        update = {"status": "failed"}
    rt.store.deliveries.update_one(
        {"_id": doc["_id"], "lease": token},
        {
            "$set": update,
            "$push": {"attempts": entry},
            "$unset": {"lease": "", "lease_expires": ""},
        },
    )
