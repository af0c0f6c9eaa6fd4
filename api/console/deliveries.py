"""The console's webhook deliveries and endpoint: read and changed through the
same store and service functions as the /v1 webhook routes, for the session's
tenant."""

from __future__ import annotations

import time

from flask import Response, redirect, request, url_for

from api import webhooks
from api.console.blueprint import Refused, bp, page
from api.context import runtime, store, tenant
from api.errors import not_found
from worker.domain.endpoints import endpoint_public
from worker.domain.events import delivery_public
from worker.domain.statuses import DeliveryStatus
from worker.services import outbox
from worker.store import deliveries, endpoints

PAGE_SIZE = 25
NOTICES = {
    "retried": "Sent again, with the same webhook-id.",
    "test": "A webhook.test event is on its way to your endpoint.",
    "enabled": "Your endpoint is enabled again.",
}
MAX_RECOVER_HOURS = 24 * 90


def _endpoint() -> dict[str, object] | None:
    doc = endpoints.get(store(), tenant())
    if doc is None or not isinstance(doc.get("webhook_url"), str):
        return None
    return endpoint_public(doc)


@bp.get("/deliveries")
def deliveries_page() -> tuple[str, int]:
    status = request.args.get("status") or None
    if status not in (None, *DeliveryStatus):
        raise Refused(422, "status should be one of " + ", ".join(DeliveryStatus))
    after = request.args.get("after") or None
    found = deliveries.list_page(
        store(), tenant(), status=status, limit=PAGE_SIZE, order="desc", after=after
    )
    if isinstance(found, str):
        raise Refused(404, "That page of deliveries no longer exists; start from the first page")
    docs, has_more = found
    notice = NOTICES.get(request.args.get("notice", ""))
    if request.args.get("notice") == "recovered":
        queued = request.args.get("queued", "0")
        notice = f"{queued if queued.isdigit() else 0} failed deliveries will be sent again."
    return page(
        "deliveries.html",
        deliveries=[delivery_public(doc) for doc in docs],
        has_more=has_more,
        status=status,
        statuses=list(DeliveryStatus),
        endpoint=_endpoint(),
        notice=notice,
    )


@bp.get("/deliveries/<delivery_id>")
def delivery_page(delivery_id: str) -> tuple[str, int]:
    doc = deliveries.get(store(), tenant(), delivery_id)
    if doc is None:
        raise not_found("No webhook delivery found")
    return page(
        "delivery.html",
        delivery=delivery_public(doc),
        notice=NOTICES.get(request.args.get("notice", "")),
    )


@bp.post("/deliveries/<delivery_id>/retry")
def retry_delivery(delivery_id: str) -> Response:
    webhooks.retry(delivery_id)
    target = url_for("console.delivery_page", delivery_id=delivery_id, notice="retried")
    return redirect(target, 303)  # type: ignore[return-value]


@bp.post("/deliveries/recover")
def recover_deliveries() -> Response:
    """Failed deliveries of the last N hours (of one event type, if given) sent again."""
    hours = request.form.get("hours", "")
    if not hours.isdigit() or not 1 <= int(hours) <= MAX_RECOVER_HOURS:
        raise Refused(422, f"Hours should be a whole number from 1 to {MAX_RECOVER_HOURS}")
    event_type = request.form.get("event_type", "").strip() or None
    if event_type is not None and len(event_type) > 64:
        raise Refused(422, "The event type should have at most 64 characters")
    since = int(time.time()) - int(hours) * 3600
    queued, _ = outbox.recover(runtime(), tenant(), since=since, until=None, event_type=event_type)
    target = url_for("console.deliveries_page", notice="recovered", queued=queued)
    return redirect(target, 303)  # type: ignore[return-value]


@bp.post("/endpoint/test")
def test_endpoint() -> Response:
    doc = outbox.send_test(runtime(), tenant())
    if doc is None:
        raise not_found("No webhook endpoint is set")
    target = url_for("console.delivery_page", delivery_id=doc["_id"], notice="test")
    return redirect(target, 303)  # type: ignore[return-value]


@bp.post("/endpoint/enable")
def enable_endpoint() -> Response:
    if endpoints.enable(store(), tenant()) is None:
        raise not_found("No webhook endpoint is set")
    return redirect(url_for("console.deliveries_page", notice="enabled"), 303)  # type: ignore[return-value]
