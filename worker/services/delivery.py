"""One webhook delivery attempt: claim, check the address, POST, record.

Signing follows Standard Webhooks. The connection goes to an address that
was checked, redirects are not followed, the whole attempt has one deadline
and the response body is read only up to a small cap.

Before the POST, the attempt takes a slot of its endpoint (a cap on attempts
in flight per tenant and origin) and of its tenant (a cap across all its
origins) and, to the tenant's endpoint, passes its circuit breaker
(`worker.domain.endpoints`). An attempt that may not go now is put back as
due later, without spending an attempt and without holding the worker. One
that keeps finding its slots taken waits longer each time, up to the
attempt deadline (within which a slot is given back), so a tenant whose
receivers hang does not flood the queue with attempts put back every second.
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
from typing import cast

from worker.domain import endpoints as endpoint_rules
from worker.domain.documents import Delivery, Doc
from worker.domain.retention import expire_at
from worker.domain.retries import Outcome, RetryPolicy, jitter
from worker.domain.statuses import DeliveryStatus
from worker.runtime import Runtime
from worker.services import slots, urlguard
from worker.store import deliveries, endpoints, tenants
from worker.telemetry import metrics

log = logging.getLogger(__name__)

RESPONSE_CAP = 64 * 1024
# An attempt that finds every slot of its endpoint taken is due again this soon
# (then twice as long each time it finds them taken again).
SLOT_WAIT_SECONDS = (0.5, 1.5)


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
    if not signing:
        outcome = Outcome(None, "refused: the tenant has no signing secret")
        record(rt, policy, doc, token, outcome, 0)
        return
    to_endpoint = endpoint_rules.is_endpoint(tenant, doc["url"])
    if to_endpoint and tenant and tenant.get(endpoint_rules.DISABLED_AT) is not None:
        record(rt, policy, doc, token, Outcome(None, endpoint_rules.disabled_error(tenant)), 0)
        return
    slot = slots.take(rt, slot_limits(rt, doc), policy.lease_seconds)
    if isinstance(slot, slots.Full):
        defer(rt, doc, token, time.time() + slot_wait(policy, doc), slot.limit.reason)
        return
    try:
        if to_endpoint:
            wait_until = breaker_wait(rt, policy, doc["tenant"], doc["url"])
            if wait_until is not None:
                defer(rt, doc, token, wait_until, "breaker")
                return
        started = time.monotonic()
        outcome = post(rt, doc, signing)
        record(rt, policy, doc, token, outcome, int((time.monotonic() - started) * 1000))
        if to_endpoint:
            endpoint_health(rt, policy, doc, outcome)
    finally:
        # Given back once the outcome is known to the breaker, so the next
        # attempt to take this slot sees it.
        slots.give_back(rt, slot)


def slot_limits(rt: Runtime, doc: Delivery) -> list[slots.Limit]:
    tenant, url = doc["tenant"], doc["url"]
    return [
        slots.Limit(
            "slots", endpoint_rules.slot_key(tenant, url), rt.settings.webhook_endpoint_concurrency
        ),
        slots.Limit(
            "tenant", endpoint_rules.tenant_slot_key(tenant), rt.settings.webhook_tenant_concurrency
        ),
    ]


def slot_wait(policy: RetryPolicy, doc: Delivery) -> float:
    """How long a delivery that found its slots taken waits: doubled each time it
    found them so since its last attempt, up to the attempt deadline, jittered
    so those that wait together come due apart."""
    deferrals = int(cast(Doc, doc).get("deferrals") or 0)
    wait = min(2.0 ** min(deferrals, 16), max(1.0, policy.timeout))
    return wait * jitter(*SLOT_WAIT_SECONDS)


def breaker_wait(rt: Runtime, policy: RetryPolicy, tenant: str, url: str) -> float | None:
    """When an attempt to the failing endpoint may be made, or None: now. Read
    with the slot held, so it includes every outcome of the attempts before."""
    health = endpoints.get(rt.store, tenant)
    if health is None or health.get("webhook_url") != url:
        return None
    if health.get(endpoint_rules.DISABLED_AT) is not None:
        return time.time()  # disabled meanwhile: the next claim records it
    if not health.get(endpoint_rules.FAILURES):
        return None
    now = time.time()
    retry_at = health.get(endpoint_rules.RETRY_AT) or 0.0
    if retry_at <= now and endpoints.take_probe(
        rt.store, tenant, url, now, now + policy.lease_seconds
    ):
        return None
    # Spread the deliveries that waited, so they do not all come due at once.
    return max(retry_at, now) + jitter(*SLOT_WAIT_SECONDS)


def endpoint_health(rt: Runtime, policy: RetryPolicy, doc: Delivery, outcome: Outcome) -> None:
    """Tell the tenant's endpoint's breaker how the attempt went."""
    tenant, url, now = doc["tenant"], doc["url"], time.time()
    if outcome.delivered:
        endpoints.delivered(rt.store, tenant, url)
        return
    health = endpoints.failed(rt.store, tenant, url, now)
    if health is None:
        return  # the endpoint changed, or is disabled already
    failing_since = health[endpoint_rules.FAILING_SINCE]
    if now - failing_since >= rt.settings.webhook_disable_after_seconds and endpoints.disable(
        rt.store, tenant, url, now, now - rt.settings.webhook_disable_after_seconds
    ):
        log.warning("webhook endpoint of %s disabled: failing since %d", tenant, failing_since)
        return
    failures = health[endpoint_rules.FAILURES]
    endpoints.space(
        rt.store, tenant, url, failures, now + endpoint_rules.spacing(policy.schedule, failures)
    )


def defer(rt: Runtime, doc: Delivery, token: str, due: float, reason: str) -> None:
    """Put the delivery back as due at `due`, its attempts untouched."""
    if deliveries.defer(rt.store, doc["_id"], token, due, counted=reason != "breaker"):
        metrics.webhook_deferred(reason)


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
