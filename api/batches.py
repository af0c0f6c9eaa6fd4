"""`/v1/batches`: bulk provisioning, stored as it streams in, results streamed out."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for
from pymongo.errors import PyMongoError

from api import inputs, queries
from api.batch_input import Reader, TooLarge
from api.context import request_id, runtime, settings, store, tenant
from api.errors import ApiError, not_found, unprocessable
from worker.domain.batches import new_batch, public
from worker.domain.ids import new_id
from worker.services import batches, intake
from worker.store import batches as batch_store
from worker.store import idempotency

bp = Blueprint("batches", __name__, url_prefix="/v1")

JSONL_TYPES = ("application/x-ndjson", "application/jsonl")


@bp.post("/batches")
def create_batch() -> Response:
    queries.allow_only(("job_events",))
    job_events = queries.choice("job_events", ("true", "false"), "false") == "true"
    mimetype = inputs.require_content_type(*JSONL_TYPES, "application/json")
    limits = settings()
    if request.content_length is not None and request.content_length > limits.max_batch_bytes:
        raise ApiError(413, f"Request body is larger than {limits.max_batch_bytes} bytes")
    key = inputs.idempotency_key()
    callback = inputs.callback_url()
    rt = runtime()
    reader = Reader(max_bytes=limits.max_batch_bytes, max_body_bytes=limits.max_body_bytes)
    batch_id = new_id("batch_")
    try:
        stager = batches.Stager(
            rt,
            new_batch(
                batch_id=batch_id,
                tenant=tenant(),
                total=0,
                now=int(time.time()),
                callback_url=callback,
                metadata={},
                job_events=job_events,
                request_id=request_id(),
            ),
        )
    except PyMongoError as exc:
        raise intake.Unavailable from exc
    try:
        requests = (
            reader.jsonl(request.stream)
            if mimetype in JSONL_TYPES
            else (reader.json_document(request.stream))
        )
        for item in requests:
            if reader.errors or reader.count > limits.max_batch_requests:
                continue  # keep reading only to report every offending line
            stager.add(item.custom_id, item.body_text, op=item.op, target=item.target)
        _refuse_if_invalid(reader, limits.max_batch_requests)
        if reader.metadata:
            batch_store.set_metadata_json(
                rt.store, batch_id, json.dumps(reader.metadata, ensure_ascii=False)
            )
        replay = None
        if key is not None:
            replay = intake.claim_batch_key(
                rt,
                tenant=tenant(),
                key=key,
                fingerprint=reader.digest.hexdigest() + idempotency.fingerprint(b"", callback),
                batch_id=batch_id,
            )
        if replay is not None:
            stager.abort()
            doc = batch_store.get(rt.store, tenant(), replay)
            if doc is None:
                raise intake.Unavailable
            return _answer(doc, replayed=True)
        doc = stager.commit(reader.count)
    except TooLarge:
        _abort_quietly(stager)
        raise ApiError(413, f"Request body is larger than {limits.max_batch_bytes} bytes") from None
    except PyMongoError as exc:
        _abort_quietly(stager)
        raise intake.Unavailable from exc
    except BaseException:
        _abort_quietly(stager)
        raise
    return _answer(doc, replayed=False)


def _refuse_if_invalid(reader: Reader, max_requests: int) -> None:
    if reader.count > max_requests:
        raise unprocessable(
            ["body"],
            "too_long",
            f"A batch should have at most {max_requests} requests, not {reader.count}",
            ctx={"max_length": max_requests, "actual_length": reader.count},
        )
    if reader.errors:
        raise ApiError(422, reader.errors)
    if reader.count == 0:
        raise unprocessable(
            ["body"],
            "too_short",
            "A batch should have at least 1 request",
            ctx={"min_length": 1, "actual_length": 0},
        )


def _abort_quietly(stager: batches.Stager) -> None:
    # If the store is down, the reconciler removes batches left `validating`.
    with contextlib.suppress(PyMongoError):
        stager.abort()


def _answer(doc: dict[str, object], *, replayed: bool) -> Response:
    response = jsonify(public(doc))
    response.status_code = 202
    response.headers["Location"] = url_for(".get_batch", batch_id=doc["_id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    doc = batch_store.get(store(), tenant(), batch_id)
    if doc is None:
        raise not_found("No batch found")
    return jsonify(public(doc))


@bp.get("/batches")
def list_batches() -> Response:
    queries.allow_only(("limit", "after"))
    limit, after = queries.limit(), queries.text("after")
    page = batch_store.list_page(store(), tenant(), limit=limit, after=after)
    if page is None:
        raise queries.unknown_cursor("after", after)
    docs, has_more = page
    return jsonify(queries.list_object([public(doc) for doc in docs], has_more))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    doc = batches.cancel(runtime(), tenant(), batch_id)
    if doc is None:
        raise not_found("No batch found")
    return jsonify(public(doc))


@bp.get("/batches/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    queries.allow_only(("status",))
    status = queries.choice("status", ("succeeded", "failed", "cancelled"))
    db = store()
    if batch_store.get(db, tenant(), batch_id) is None:
        raise not_found("No batch found")

    def lines() -> Iterator[str]:
        for result in batches.iter_results(db, batch_id, status):
            yield json.dumps(result, ensure_ascii=False) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")
