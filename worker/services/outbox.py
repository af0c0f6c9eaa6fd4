"""Webhook events: from the outbox of finished jobs and batches to delivery records.

A finished unit or batch carries `events_pending` in the same write as its
result. Flushing turns that into delivery documents whose ids are derived
from the event itself, so flushing twice (after a crash in between) creates
nothing new. Deliveries are then sent by `delivery.attempt`, due ones picked
up by a periodic sweep: waits live in MongoDB, never in the broker.
"""

from __future__ import annotations

import secrets
import time

from worker.domain import events
from worker.domain.batches import public as batch_public
from worker.domain.documents import Delivery, Doc
from worker.domain.retention import expire_at
from worker.domain.retries import RetryPolicy
from worker.domain.units import job_public
from worker.queueing.routes import DELIVER
from worker.runtime import Runtime
from worker.store import batches, deliveries, endpoints, tenants, units

# Failed deliveries one recover call sends again at most.
RECOVER_LIMIT = 10_000


def _delivery(
    rt: Runtime, *, msg_id: str, tenant: str, event_type: str, url: str, data: Doc
) -> Delivery:
    now = time.time()
    return events.new_delivery(
        msg_id=msg_id,
        tenant=tenant,
        event_type=event_type,
        url=url,
        body=events.event_body(event_type, data),
        now=now,
        expire_at=expire_at(rt.settings, now),
    )


def flush_unit_events(rt: Runtime, unit_ids: list[str]) -> None:
    """Turn finished units' owed job events into deliveries, and send them."""
    if not unit_ids:
        return
    owing = units.owing_events(rt.store, unit_ids)
    if not owing:
        return
    urls = tenants.webhook_urls(rt.store, {unit["tenant"] for unit in owing})
    made = []
    for unit in owing:
        url = events.destination(unit.get("callback_url"), urls.get(unit["tenant"]))
        if not url or not unit.get("job_events", True):
            continue
        for index in range(len(unit["items"])):
            job = job_public(unit, index)
            event_type = events.job_event_type(job)
            made.append(
                _delivery(
                    rt,
                    msg_id=events.message_id(job["id"], event_type),
                    tenant=unit["tenant"],
                    event_type=event_type,
                    url=url,
                    data=job,
                )
            )
            if unit.get("batch_id"):
                made[-1]["batch_id"] = unit["batch_id"]
    created = deliveries.insert(rt.store, made)
    units.events_flushed(rt.store, [unit["_id"] for unit in owing])
    send(rt, created)


def flush_batch_event(rt: Runtime, tenant: str, batch_id: str) -> None:
    doc = batches.owing_event(rt.store, tenant, batch_id)
    if doc is None:
        return
    url = events.destination(doc.get("callback_url"), tenants.webhook_url(rt.store, doc["tenant"]))
    created: list[str] = []
    if url:
        event_type = doc["events_pending"]
        created = deliveries.insert(
            rt.store,
            [
                _delivery(
                    rt,
                    msg_id=events.message_id(batch_id, event_type),
                    tenant=doc["tenant"],
                    event_type=event_type,
                    url=url,
                    data=batch_public(doc),
                )
                | ({"after_jobs_of": batch_id} if doc.get("job_events") else {})
            ],
        )
    batches.event_flushed(rt.store, tenant, batch_id)
    send(rt, created)


def send(rt: Runtime, delivery_ids: list[str]) -> None:
    """Queue first attempts now; if the broker is down, the sweep sends them."""
    time_limit = RetryPolicy.from_settings(rt.settings).time_limit
    for delivery_id in delivery_ids:
        try:
            rt.sender.send(DELIVER, delivery_id, time_limit=time_limit)
        except Exception:  # the sweep finds it due and sends it
            return


def retry(rt: Runtime, tenant: str, delivery_id: str) -> tuple[Doc | None, bool]:
    """Send a failed delivery again, with the same webhook-id.

    Returns the delivery as it is now (None when the tenant has no such
    delivery) and whether this call queued it again.
    """
    now = time.time()
    resent = deliveries.restart(rt.store, tenant, delivery_id, now, expire_at(rt.settings, now))
    if resent:
        send(rt, [delivery_id])
    return deliveries.get(rt.store, tenant, delivery_id), resent


def send_test(rt: Runtime, tenant: str) -> Doc | None:
    """Send a `webhook.test` event to the tenant's endpoint at once, through the
    same path as every event; None when the tenant has no endpoint."""
    endpoint = endpoints.get(rt.store, tenant)
    if endpoint is None:
        return None
    now = time.time()
    url = endpoint["webhook_url"]
    made = _delivery(
        rt,
        # Every test is an event of its own.
        msg_id=events.message_id(tenant, events.TEST_EVENT, secrets.token_hex(16)),
        tenant=tenant,
        event_type=events.TEST_EVENT,
        url=url,
        data=events.test_event_data(tenant, url, now),
    )
    send(rt, deliveries.insert(rt.store, [made]))
    return deliveries.get(rt.store, tenant, made["_id"])


def recover(
    rt: Runtime, tenant: str, *, since: int, until: int | None, event_type: str | None
) -> tuple[int, bool]:
    """Send the tenant's failed deliveries of a window again, same webhook-ids, at
    `webhook_recover_per_second`: they come due one after another and the sweep
    sends each then. At most `RECOVER_LIMIT` a call; returns how many, and
    whether more are left (a later call with the same window takes them)."""
    now = time.time()
    return deliveries.recover(
        rt.store,
        tenant,
        since=since,
        until=until,
        event_type=event_type,
        now=now,
        per_second=rt.settings.webhook_recover_per_second,
        limit=RECOVER_LIMIT,
        expire_at=expire_at(rt.settings, now),
    )


def sweep(rt: Runtime) -> None:
    """Send the deliveries that are due (retries, and first attempts the broker lost)."""
    policy = RetryPolicy.from_settings(rt.settings)
    send(rt, deliveries.sweep_due(rt.store, time.time(), policy.resend_after))


def flush_stale(rt: Runtime, older_than: float, limit: int) -> None:
    """Flush events owed by units and batches a crash left unflushed."""
    flush_unit_events(rt, units.stale_outbox(rt.store, older_than, limit))
    for tenant, batch_id in batches.stale_outbox(rt.store, limit):
        flush_batch_event(rt, tenant, batch_id)
