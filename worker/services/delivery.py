"""One webhook delivery attempt: claim, take slots, POST (`sending`), record.

Before the POST, the attempt takes a slot of its endpoint (a cap on attempts
in flight per tenant and origin) and of its tenant (a cap across all its
origins) and, to the tenant's endpoint, passes its circuit breaker
(`worker.domain.endpoints`). An attempt that may not go now is put back as
due later, without spending an attempt and without holding the worker. One
that finds a cap reached waits in that cap's line (`slots`) until an attempt
gives a slot back and wakes it, or at the latest about an attempt's lease
later, when every slot taken before has been given back or has lapsed: a
tenant with hundreds of deliveries to hanging receivers costs an attempt per
slot freed, not hundreds of attempts put back every second.
A receiver's 429 or 503 with `Retry-After` holds its endpoint's other
deliveries as well as its own until then.

While the tenant's endpoint is disabled (after `410 Gone`, or days of
failures) a delivery to it is kept as failed, "endpoint disabled", and never
attempted; `POST /v1/webhook_deliveries/recover` sends such ones again.
"""

from __future__ import annotations

import logging
import time

from worker.domain import endpoints as endpoint_rules
from worker.domain.documents import Delivery
from worker.domain.retention import expire_at
from worker.domain.retries import Outcome, RetryPolicy, jitter
from worker.domain.statuses import DeliveryStatus
from worker.runtime import Runtime
from worker.services import outbox, sending, slots
from worker.store import deliveries, endpoints, tenants
from worker.telemetry import metrics

log = logging.getLogger(__name__)

# Answers whose Retry-After holds the endpoint's other deliveries too.
SLOWED_BY = (429, 503)
# Deliveries put back by the breaker or a Retry-After are spread over this
# (seconds), so they do not all come due at once.
SLOT_WAIT_SECONDS = (0.5, 1.5)
# A delivery waiting in line for a slot is due at the latest this many leases
# later (spread), should no attempt wake it.
SLOT_WAIT_SPREAD = (1.0, 1.5)


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
        record(rt, policy, doc, token, sending.Sent(outcome, None), 0)
        return
    to_endpoint = endpoint_rules.is_endpoint(tenant, doc["url"])
    if to_endpoint and tenant and tenant.get(endpoint_rules.DISABLED_AT) is not None:
        hold(rt, doc, token)
        return
    slowed = slots.held_until(rt, endpoint_rules.slot_key(doc["tenant"], doc["url"]))
    if slowed is not None:
        defer(rt, doc, token, slowed + jitter(*SLOT_WAIT_SECONDS), "retry_after")
        return
    slot = slots.take(rt, slot_limits(rt, doc), policy.lease_seconds)
    if isinstance(slot, slots.Full):
        wait = policy.lease_seconds * jitter(*SLOT_WAIT_SPREAD)
        if defer(rt, doc, token, time.time() + wait, slot.limit.reason, waiting=True):
            slots.wait_for(rt, slot.limit, doc["_id"], wait)
            # A slot given back since the take woke nobody: if one is free now,
            # taking and giving it back wakes the first in line.
            poke = slots.take(rt, [slot.limit], policy.lease_seconds)
            if isinstance(poke, slots.Slot):
                wake(rt, slots.give_back(rt, poke))
        return
    try:
        if to_endpoint:
            wait_until = breaker_wait(rt, policy, doc["tenant"], doc["url"])
            if wait_until is not None:
                defer(rt, doc, token, wait_until, "breaker")
                return
        started = time.monotonic()
        sent = sending.post(rt, doc, signing)
        record(rt, policy, doc, token, sent, int((time.monotonic() - started) * 1000))
        slow_down(rt, policy, doc, sent.outcome)
        if to_endpoint:
            endpoint_health(rt, policy, doc, sent.outcome)
    finally:
        # Given back once the outcome is known to the breaker, so the next
        # attempt to take this slot sees it.
        wake(rt, slots.give_back(rt, slot))


def wake(rt: Runtime, delivery_ids: list[str]) -> None:
    """Send the deliveries that waited for the slots just given back."""
    now = time.time()
    woken = [i for i in delivery_ids if deliveries.wake(rt.store, i, now)]
    if woken:
        outbox.send(rt, woken)


def hold(rt: Runtime, doc: Delivery, token: str) -> None:
    """Keep a delivery to the disabled endpoint as failed, never attempted."""
    now = time.time()
    if deliveries.hold(
        rt.store, doc["_id"], token, endpoint_rules.DISABLED_ERROR, expire_at(rt.settings, now)
    ):
        metrics.webhook_held()
        log.info("delivery %s held: %s", doc["_id"], endpoint_rules.DISABLED_ERROR)


def slow_down(rt: Runtime, policy: RetryPolicy, doc: Delivery, outcome: Outcome) -> None:
    """A receiver that asks for time (429 or 503 with Retry-After) gets it from
    every delivery to its endpoint, not only the one it answered."""
    if outcome.status_code not in SLOWED_BY or not outcome.retry_after:
        return
    seconds = min(outcome.retry_after, policy.max_retry_after)
    slots.hold_for(rt, endpoint_rules.slot_key(doc["tenant"], doc["url"]), seconds)


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


def breaker_wait(rt: Runtime, policy: RetryPolicy, tenant: str, url: str) -> float | None:
    """When an attempt to the failing endpoint may be made, or None: now. Read
    with the slot held, so it includes every outcome of the attempts before."""
    health = endpoints.get(rt.store, tenant)
    if health is None or health.get("webhook_url") != url:
        return None
    if health.get(endpoint_rules.DISABLED_AT) is not None:
        return time.time()  # disabled meanwhile: the next claim holds it
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
    if outcome.status_code == 410:
        # Standard Webhooks: 410 Gone means the receiver wants no more.
        disable(rt, tenant, url, now, endpoint_rules.GONE, None)
        return
    health = endpoints.failed(rt.store, tenant, url, now)
    if health is None:
        return  # the endpoint changed, or is disabled already
    failing_since = health[endpoint_rules.FAILING_SINCE]
    if now - failing_since >= rt.settings.webhook_disable_after_seconds and disable(
        rt, tenant, url, now, endpoint_rules.FAILING, failing_since
    ):
        return
    failures = health[endpoint_rules.FAILURES]
    endpoints.space(
        rt.store, tenant, url, failures, now + endpoint_rules.spacing(policy.schedule, failures)
    )


def disable(
    rt: Runtime, tenant: str, url: str, now: float, reason: str, failing_since: float | None
) -> bool:
    """Disable the tenant's endpoint (for days of failures: only if it has failed
    that long), and say so in the log and the metrics."""
    why = endpoint_rules.disabled_reason(reason, failing_since)
    failing_before = None
    if reason == endpoint_rules.FAILING:
        failing_before = now - rt.settings.webhook_disable_after_seconds
    if not endpoints.disable(rt.store, tenant, url, now, why, failing_before):
        return False
    metrics.webhook_endpoint_disabled(reason)
    log.warning(
        "webhook endpoint of %s disabled: %s",
        tenant,
        why,
        extra={"tenant": tenant, "reason": reason},
    )
    # Its deliveries that wait (in line for a slot, or spaced by the breaker,
    # up to a lease away) are held now rather than at their due time.
    held = deliveries.due_now(rt.store, tenant, url, time.time())
    if held:
        outbox.send(rt, held)
    return True


def defer(
    rt: Runtime, doc: Delivery, token: str, due: float, reason: str, waiting: bool = False
) -> bool:
    """Put the delivery back as due at `due`, its attempts untouched."""
    if not deliveries.defer(rt.store, doc["_id"], token, due, waiting):
        return False
    metrics.webhook_deferred(reason)
    return True


def record(
    rt: Runtime,
    policy: RetryPolicy,
    doc: Delivery,
    token: str,
    sent: sending.Sent,
    duration_ms: int,
) -> None:
    """Record the attempt and decide what follows, fenced by the lease."""
    now, outcome = time.time(), sent.outcome
    entry = {
        "at": int(now),
        "status_code": outcome.status_code,
        "error": outcome.error,
        "duration_ms": duration_ms,
        "response": sent.response,
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
