"""Webhooks: the tenant's endpoint and signing secret, and the deliveries made."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, url_for
from flask.blueprints import BlueprintSetupState
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from werkzeug.routing import BaseConverter

from api import delivery_quota, inputs, queries
from api.context import runtime, settings, store, tenant
from api.errors import ApiError, not_found, unprocessable
from api.jsonbody import JsonInvalid, parse
from worker.domain.endpoints import endpoint_public
from worker.domain.events import delivery_public
from worker.domain.statuses import DeliveryStatus
from worker.services import outbox, urlguard
from worker.store import deliveries, endpoints, tenants

bp = Blueprint("webhooks", __name__, url_prefix="/v1")
Body = TypeVar("Body", bound=BaseModel)


class DeliveryId(BaseConverter):
    """A delivery id in a path: any segment but `recover`, which is the recovery's
    own path, so `GET /v1/webhook_deliveries/recover` is a 405, not a 404."""

    regex = r"(?!recover$)[^/]+"


@bp.record_once
def _add_converter(state: BlueprintSetupState) -> None:
    # Before the rules below are added, which name it.
    state.app.url_map.converters["delivery_id"] = DeliveryId


# The quota on pending deliveries guards every route that adds some, these and
# the creates' (after auth and the rate limit, which the app registers first).
bp.record_once(lambda state: delivery_quota.register(state.app))
bp.before_app_request(delivery_quota.check)


class WebhookEndpointUpdate(BaseModel):
    """The body of `PUT /v1/webhook_endpoint`."""

    model_config = ConfigDict(extra="forbid")

    url: str


class DeliveryRecovery(BaseModel):
    """The body of `POST /v1/webhook_deliveries/recover`: failed deliveries created
    from `since` to `until` (Unix seconds, both included; `until` defaults to
    now), of one event type if given."""

    model_config = ConfigDict(extra="forbid")

    since: StrictInt = Field(ge=0)
    until: StrictInt | None = Field(default=None, ge=0)
    event_type: str | None = Field(default=None, max_length=64)


@bp.get("/webhook_deliveries")
@queries.own_query
def list_deliveries() -> Response:
    queries.allow_only(("status", "limit", "order", "after", "before"))
    limit = queries.limit()
    status = queries.choice("status", tuple(DeliveryStatus))
    order = queries.choice("order", ("asc", "desc"), "asc") or "asc"
    after, before = queries.text("after"), queries.text("before")
    page = deliveries.list_page(
        store(), tenant(), status=status, limit=limit, order=order, after=after, before=before
    )
    if isinstance(page, str):
        raise queries.unknown_cursor(page, after if page == "after" else before)
    docs, has_more = page
    return jsonify(queries.list_object([delivery_public(doc) for doc in docs], has_more))


@bp.get("/webhook_deliveries/<delivery_id:delivery_id>")
def get_delivery(delivery_id: str) -> Response:
    doc = deliveries.get(store(), tenant(), delivery_id)
    if doc is None:
        raise not_found("No webhook delivery found")
    return jsonify(delivery_public(doc))


@bp.post("/webhook_deliveries/<delivery_id:delivery_id>/retry")
def retry_delivery(delivery_id: str) -> Response:
    return jsonify(delivery_public(retry(delivery_id)))


def retry(delivery_id: str) -> dict[str, Any]:
    """The request's tenant's delivery, sent again if it failed (also the console's
    retry button); 404, and 409 for one that was delivered, as ApiErrors."""
    doc, resent = outbox.retry(runtime(), tenant(), delivery_id)
    if doc is None:
        raise not_found("No webhook delivery found")
    if not resent and doc["status"] == DeliveryStatus.DELIVERED:
        raise ApiError(409, "Only a failed webhook delivery can be retried; this one was delivered")
    # A pending delivery is already on its way: answered unchanged, so a
    # client repeating its retry call does no harm.
    return doc


@bp.post("/webhook_deliveries/recover")
def recover_deliveries() -> Response:
    body = json_body(DeliveryRecovery)
    queued, more = outbox.recover(
        runtime(), tenant(), since=body.since, until=body.until, event_type=body.event_type
    )
    return jsonify({"object": "webhook_deliveries.recovery", "queued": queued, "has_more": more})


@bp.post("/webhook_endpoint/test")
def test_endpoint() -> tuple[Response, int, dict[str, str]]:
    doc = outbox.send_test(runtime(), tenant())
    if doc is None:
        raise not_found("No webhook endpoint is set")
    location = url_for(".get_delivery", delivery_id=doc["_id"])
    return jsonify(delivery_public(doc)), 202, {"Location": location}


@bp.get("/webhook_endpoint")
def get_endpoint() -> Response:
    return endpoint_answer(endpoints.get(store(), tenant()))


@bp.put("/webhook_endpoint")
def put_endpoint() -> Response:
    # A new URL, or the same one again, starts enabled and healthy.
    return endpoint_answer(endpoints.set_url(store(), tenant(), endpoint_url()))


@bp.post("/webhook_endpoint/enable")
def enable_endpoint() -> Response:
    return endpoint_answer(endpoints.enable(store(), tenant()))


@bp.delete("/webhook_endpoint")
def delete_endpoint() -> Response:
    if not endpoints.clear(store(), tenant()):
        raise not_found("No webhook endpoint is set")
    return jsonify({"object": "webhook_endpoint.deleted", "deleted": True})


@bp.post("/webhook_secret/rotate")
def rotate_secret() -> Response:
    rotated = tenants.rotate_secret(store(), tenant(), settings().webhook_secret_overlap_seconds)
    # The only time the new secret is shown.
    return jsonify(
        {
            "object": "webhook_secret",
            "secret": rotated.secret,
            "previous_expires_at": rotated.previous_expire_at,
        }
    )


def endpoint_answer(doc: dict[str, Any] | None) -> Response:
    if doc is None or not isinstance(doc.get("webhook_url"), str):
        raise not_found("No webhook endpoint is set")
    return jsonify(endpoint_public(doc))


def json_body(model: type[Body]) -> Body:
    """A JSON body read into `model`; 415, 413 and 422 as for every JSON body."""
    inputs.require_content_type("application/json")
    raw = inputs.read_body(settings().max_body_bytes)
    if not raw:
        raise unprocessable(["body"], "missing", "Field required", input=None)
    try:
        return model.model_validate(parse(raw), from_attributes=True)
    except JsonInvalid as exc:
        raise ApiError(422, [exc.detail]) from exc
    except ValidationError as exc:
        errors = [{**err, "loc": ["body", *err["loc"]]} for err in exc.errors(include_url=False)]
        raise ApiError(422, json.loads(json.dumps(errors, default=str))) from exc


def endpoint_url() -> str:
    """The `url` of a PUT body, checked like a `Callback-URL` header."""
    body = json_body(WebhookEndpointUpdate)
    try:
        urlguard.check_submitted(body.url, allow_private=settings().webhook_allow_private)
    except urlguard.UrlRefused as exc:
        raise unprocessable(["body", "url"], exc.kind, str(exc), input=body.url[:2048]) from exc
    return body.url
