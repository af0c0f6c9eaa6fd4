"""`/v1/jobs`: a job's state, read from MongoDB only; long-polled with `Prefer: wait`."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request

from api import queries
from api.context import runtime, settings, store, tenant
from api.errors import not_found
from api.responses import job_headers
from api.waiting import FinishedListener, parse_prefer
from worker.domain.statuses import JobStatus
from worker.domain.units import is_finished
from worker.store import units

bp = Blueprint("jobs", __name__, url_prefix="/v1")


def listener() -> FinishedListener:
    extensions = current_app.extensions
    existing: FinishedListener | None = extensions.get("assistant_ingest.listener")
    if existing is None:
        rt = runtime()
        # Its own connection, without a read timeout: a subscription is idle
        # for as long as no job finishes. Keepalive notices a dead peer.
        client = redis.Redis.from_url(
            rt.settings.redis_url, socket_connect_timeout=2, socket_keepalive=True
        )
        existing = FinishedListener(client, rt.finished_channel)
        extensions["assistant_ingest.listener"] = existing
    return existing


def wait_for_job(job_id: str, seconds: int) -> dict[str, Any] | None:
    owner, db = tenant(), store()
    return listener().wait(
        job_id, seconds, lambda: units.get_job(db, owner, job_id), is_finished, g.get("stages")
    )


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = parse_prefer(request.headers.getlist("Prefer"), settings().max_wait_seconds)
    job = wait_for_job(job_id, wait) if wait else units.get_job(store(), tenant(), job_id)
    if job is None:
        raise not_found("No job found")
    response = jsonify(job)
    response.headers.update(job_headers(job))
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


@bp.get("/jobs")
@queries.own_query
def list_jobs() -> Response:
    queries.allow_only(("batch_id", "status", "limit", "order", "after", "before"))
    limit = queries.limit()
    status = queries.choice("status", tuple(JobStatus))
    order = queries.choice("order", ("asc", "desc"), "asc") or "asc"
    batch_id = queries.text("batch_id")
    after, before = queries.text("after"), queries.text("before")
    page = units.list_jobs(
        store(),
        tenant(),
        batch_id=batch_id,
        status=status,
        limit=limit,
        order=order,
        after=after,
        before=before,
    )
    if isinstance(page, str):
        raise queries.unknown_cursor(page, after if page == "after" else before)
    data, has_more = page
    return jsonify(queries.list_object(data, has_more))
