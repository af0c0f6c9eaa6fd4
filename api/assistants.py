"""`/v1/assistants`: accept creates and modifies as jobs; read what the workers stored."""

from __future__ import annotations

import contextlib
import functools

from flask import Blueprint, Response, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from api import inputs, ndjson, queries
from api.context import request_id, runtime, settings, store, tenant
from api.errors import ApiError, not_found, unprocessable
from api.jobs import listener, wait_for_job
from api.jsonbody import JsonInvalid, decode_text, parse
from api.responses import accepted
from api.waiting import parse_prefer
from worker.domain.assistants import apply_line, deleted, public
from worker.domain.ids import new_id
from worker.domain.units import is_finished
from worker.services import planning
from worker.services.change_intake import NoSuchAssistant, submit_delete, submit_modify
from worker.services.intake import Accepted, submit_single
from worker.store import assistants, units

bp = Blueprint("assistants", __name__, url_prefix="/v1")


class AssistantId(BaseConverter):
    """An assistant id in a path: any segment but `export`, which is the export's
    own path, so `POST` or `DELETE /v1/assistants/export` is a 405, not a 404."""

    regex = r"(?!export$)[^/]+"


@bp.record_once
def _add_converter(state: BlueprintSetupState) -> None:
    # Before the rules below are added, which name it.
    state.app.url_map.converters["assistant_id"] = AssistantId


NDJSON = ndjson.MIMETYPE


def _read_submission() -> tuple[bytes, str | None, str | None]:
    """The body, Idempotency-Key and Callback-URL, checked in API.md's order."""
    inputs.require_content_type("application/json")
    raw = inputs.read_body(settings().max_body_bytes)
    key = inputs.idempotency_key()
    callback = inputs.callback_url()
    if not raw:
        raise unprocessable(["body"], "missing", "Field required", input=None)
    try:
        parse(raw)
    except JsonInvalid as exc:
        raise ApiError(422, [exc.detail]) from exc
    g.stages.lap("parse")
    return raw, key, callback


def _wait() -> tuple[int | None, bool]:
    """The wait to apply: `Prefer: wait=N`, or DEFAULT_WAIT_SECONDS when no
    `Prefer` was sent; and whether it was the client's preference."""
    values = request.headers.getlist("Prefer")
    config = settings()
    preferred = bool(values) or config.default_wait_seconds <= 0
    if preferred:
        return parse_prefer(values, config.max_wait_seconds), preferred
    return min(config.default_wait_seconds, config.max_wait_seconds), preferred


def _plan(line: dict[str, object]) -> Response:
    """A dry run's answer: its plan line, encoded as a batch's plan lines are,
    so the two read the same."""
    return Response(ndjson.encode(line) + b"\n", 200, mimetype=NDJSON)


def _answer(done: Accepted) -> Response:
    """202 with the job, or the job's result when it finishes within the wait."""
    wait, preferred = _wait()
    job = done.job
    if wait is not None:
        job = wait_for_job(job["id"], wait) or job
    return accepted(job, replayed=done.replayed, waited=wait, preferred=preferred)


@bp.post("/assistants")
@queries.own_query
def create_assistant() -> Response:
    queries.allow_only(("dry_run",))
    dry_run = queries.choice("dry_run", ("true", "false"), "false") == "true"
    raw, key, callback = _read_submission()
    if dry_run:  # validated now by the workers' own code; nothing is stored or sent
        return _plan(planning.plan_create(runtime(), decode_text(raw)))
    wait, preferred = _wait()
    job_id = new_id("job_")
    with contextlib.ExitStack() as cleanup:
        # Listening from before the job is stored: its finish cannot be missed,
        # and the worker's message carries the job, so no read is needed.
        expected = cleanup.enter_context(listener().expect(job_id)) if wait else None
        done = submit_single(
            runtime(),
            tenant=tenant(),
            body_text=decode_text(raw),
            raw=raw,
            callback_url=callback,
            idempotency_key=key,
            request_id=request_id(),
            job_id=job_id,
            stages=g.stages,
        )
        job = done.job
        if wait and not is_finished(job):
            if expected is not None and job["id"] == job_id:
                owner, db = tenant(), store()
                read = functools.partial(units.get_job, db, owner, job_id)
                job = expected.until(wait, read, is_finished, g.stages) or job
            else:  # a replay of another job
                job = wait_for_job(job["id"], wait) or job
    return accepted(job, replayed=done.replayed, waited=wait, preferred=preferred)


@bp.post("/assistants/<assistant_id:assistant_id>")
@queries.own_query
def modify_assistant(assistant_id: str) -> Response:
    queries.allow_only(("dry_run",))
    dry_run = queries.choice("dry_run", ("true", "false"), "false") == "true"
    raw, key, callback = _read_submission()
    if dry_run:
        text = decode_text(raw)
        return _plan(planning.plan_change(runtime(), tenant(), "modify", assistant_id, text))
    try:
        done = submit_modify(
            runtime(),
            tenant=tenant(),
            assistant_id=assistant_id,
            body_text=decode_text(raw),
            raw=raw,
            callback_url=callback,
            idempotency_key=key,
            request_id=request_id(),
            stages=g.stages,
        )
    except NoSuchAssistant:
        raise not_found("No assistant found") from None
    return _answer(done)


@bp.get("/assistants/export")
@queries.own_query
def export_assistants() -> Response:
    """Every assistant of the tenant as apply lines, in creation order, streamed."""
    queries.allow_only(())
    db, owner = store(), tenant()
    return ndjson.stream(apply_line(doc) for doc in assistants.iter_all(db, owner))


@bp.get("/assistants/<assistant_id:assistant_id>")
def get_assistant(assistant_id: str) -> Response:
    doc = assistants.get(store(), tenant(), assistant_id)
    if doc is None:
        raise not_found("No assistant found")
    return jsonify(public(doc))


@bp.delete("/assistants/<assistant_id:assistant_id>")
@queries.own_query
def delete_assistant(assistant_id: str) -> Response:
    """Deleted at once, unless changes of the assistant accepted earlier are still
    open: then the delete is queued behind them, as a modify would be, and
    answered when it is done (within MAX_WAIT_SECONDS; a 202 with its job if not),
    so changes of one assistant apply in the order they were accepted. With
    `?dry_run=true`, the plan line of the delete; nothing is deleted."""
    queries.allow_only(("dry_run",))
    dry_run = queries.choice("dry_run", ("true", "false"), "false") == "true"
    db, owner = store(), tenant()
    if dry_run:
        return _plan(planning.plan_change(runtime(), owner, "delete", assistant_id))
    if not units.changes_open(db, owner, assistant_id):
        if not assistants.delete(db, owner, assistant_id):
            raise not_found("No assistant found")
        return jsonify(deleted(assistant_id))
    try:
        done = submit_delete(
            runtime(), tenant=owner, assistant_id=assistant_id, request_id=request_id()
        )
    except NoSuchAssistant:
        raise not_found("No assistant found") from None
    wait = settings().max_wait_seconds
    job = wait_for_job(done.job["id"], wait) or done.job
    return accepted(job, replayed=False, waited=wait, preferred=False)


@bp.get("/assistants")
@queries.own_query
def list_assistants() -> Response:
    queries.allow_only(("limit", "order", "after", "before"))
    limit = queries.limit()
    order = queries.choice("order", ("asc", "desc"), "desc") or "desc"
    after, before = queries.text("after"), queries.text("before")
    try:
        docs, has_more = assistants.list_page(
            store(), tenant(), limit=limit, order=order, after=after, before=before
        )
    except assistants.UnknownCursor as exc:
        raise queries.unknown_cursor(exc.name, exc.value) from exc
    return jsonify(queries.list_object([public(doc) for doc in docs], has_more))
