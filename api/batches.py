"""`/v1/batches`: bulk provisioning, stored as it streams in, results streamed out."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from flask import Blueprint, Response, g, jsonify, request, url_for
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from api import inputs, ndjson, preconditions, queries
from api.batch_input import Reader, Request, Spool, TooLarge
from api.context import request_id, runtime, settings, store, tenant
from api.errors import ApiError, not_found, unprocessable
from api.jobs import listener
from api.waiting import parse_prefer
from worker.domain.batches import new_batch, public
from worker.domain.ids import new_id
from worker.domain.statuses import BatchStatus
from worker.runtime import Runtime
from worker.services import batches, intake, planning, turns
from worker.store import batches as batch_store
from worker.store import idempotency

bp = Blueprint("batches", __name__, url_prefix="/v1")

JSONL_TYPES = ("application/x-ndjson", "application/jsonl")


@bp.post("/batches")
@queries.own_query
def create_batch() -> Response:
    queries.allow_only(("job_events", "mode", "prune", "dry_run"))
    job_events = queries.choice("job_events", ("true", "false"), "false") == "true"
    mode = queries.choice("mode", ("apply", "create"), "create") or "create"
    prune = queries.choice("prune", ("true", "false"), "false") == "true"
    dry_run = queries.choice("dry_run", ("true", "false"), "false") == "true"
    if prune and mode != "apply":
        raise unprocessable(
            ["query", "prune"], "value_error", "Value error, prune needs mode=apply", input="true"
        )
    expected = preconditions.plan_etag(apply=mode == "apply", dry_run=dry_run)
    mimetype = inputs.require_content_type(*JSONL_TYPES, "application/json")
    limits = settings()
    if request.content_length is not None and request.content_length > limits.max_batch_bytes:
        raise ApiError(413, f"Request body is larger than {limits.max_batch_bytes} bytes")
    key = inputs.idempotency_key()
    callback = inputs.callback_url()
    return upload(
        request.stream,
        jsonl=mimetype in JSONL_TYPES,
        mode=mode,
        prune=prune,
        dry_run=dry_run,
        expected=expected,
        key=key,
        callback=callback,
        job_events=job_events,
    )


def upload(
    stream: IO[bytes],
    *,
    jsonl: bool,
    mode: str,
    prune: bool,
    dry_run: bool = False,
    expected: str | None = None,
    key: str | None = None,
    callback: str | None = None,
    job_events: bool = False,
) -> Response:
    """A batch upload read from `stream` (JSONL, else one JSON document), for the
    request's tenant: its dry run's plan (200, with the ETag of an apply's plan),
    or the batch stored (202); applied only as planned if `expected` names a plan.
    The console's provisioning page uploads its manifests through it (without an
    Idempotency-Key: a key's fingerprint reads `prune` from the request's query)."""
    limits = settings()
    rt = runtime()
    reader = Reader(
        max_bytes=limits.max_batch_bytes,
        max_body_bytes=limits.max_body_bytes,
        apply=mode == "apply",
    )
    requests = reader.jsonl(stream) if jsonl else reader.json_document(stream)
    if dry_run:
        return _dry_run(reader, requests, prune)
    _refuse_over_quota(rt)
    batch_id = new_id("batch_")
    scope = intake.batch_key_scope(tenant(), key) if key is not None else None
    stager = None
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
                mode=mode,
                prune=prune,
            ),
        )
        # The key is held before the upload is read, so a repeated upload is
        # never staged; its batch is stored first, so a held key always names
        # a batch while its request is alive.
        holder = intake.hold_batch_key(rt, scope, batch_id) if scope is not None else None
    except PyMongoError as exc:
        if stager is not None:
            _abort_quietly(stager)
        raise intake.Unavailable from exc
    if holder is not None and scope is not None:
        _abort_quietly(stager)
        return _replay(reader, requests, scope, callback)
    seen: list[str | None] | None = None
    if expected is not None:
        # Applied only as planned: the plan computed now must be the one shown.
        # Checked once the key is held, so a retry of an apply taken replays.
        try:
            requests, seen = _check_plan(reader, requests, prune, expected)
        except BaseException:
            _give_up(stager, scope)
            raise
    return _answer(_store(stager, reader, requests, scope, callback, seen), replayed=False)


# What a tenant over its quota of queued lines is told to wait: about the
# time bulk workers take to work through a few thousand lines.
QUOTA_RETRY_AFTER = 10


def _refuse_over_quota(rt: Runtime) -> None:
    """429 while the tenant's batches still waiting for a bulk worker hold
    `MAX_QUEUED_LINES_PER_TENANT` lines: open work is bounded per tenant, so no
    tenant can bury the service's bulk capacity under a backlog of its own."""
    quota = rt.settings.max_queued_lines_per_tenant
    if quota <= 0:
        return
    try:
        queued = turns.queued_lines(rt, tenant())
    except RedisError:  # no line to read; the batch is stored all the same
        return
    if queued >= quota:
        raise ApiError(
            429,
            f"This key's batches already hold {queued} lines waiting for a worker "
            f"(the quota is {quota}); submit more once they have run",
            {"Retry-After": str(QUOTA_RETRY_AFTER)},
        )


def _store(
    stager: batches.Stager,
    reader: Reader,
    requests: Iterator[Request],
    scope: str | None,
    callback: str | None,
    seen: list[str | None] | None = None,
) -> dict[str, object]:
    """Stage the upload as it streams in, then commit it (after the key, if any,
    has its fingerprint); the batch, or on any failure nothing, is kept."""
    limits, rt = settings(), stager.rt
    with _upload_errors(lambda: _give_up(stager, scope), limits.max_batch_bytes):
        for index, item in enumerate(requests):
            if reader.errors or reader.count > limits.max_batch_requests:
                continue  # keep reading only to report every offending line
            stager.add(
                item.custom_id,
                item.body_text,
                op=item.op,
                target=item.target,
                # The version the checked plan saw ("" for none): the worker applies
                # the line only if the assistant is still at it.
                expect=None if seen is None else (seen[index] or ""),
            )
        _refuse_if_invalid(reader, limits.max_batch_requests)
        if reader.metadata:
            batch_store.set_metadata_json(
                rt.store,
                stager.batch["tenant"],
                stager.batch["_id"],
                json.dumps(reader.metadata, ensure_ascii=False),
            )
        if scope is not None:
            intake.settle_batch_key(rt, scope, stager.batch["_id"], _fingerprint(reader, callback))
        return stager.commit(reader.count)


def _replay(
    reader: Reader, requests: Iterator[Request], scope: str, callback: str | None
) -> Response:
    """An upload whose Idempotency-Key another request holds: read whole, checked
    and hashed but not stored, then answered with the key's batch once that is
    stored (a replay), or 409 if it is another upload."""
    limits = settings()
    try:
        for _ in requests:
            pass
    except TooLarge:
        raise ApiError(413, f"Request body is larger than {limits.max_batch_bytes} bytes") from None
    _refuse_if_invalid(reader, limits.max_batch_requests)
    try:
        doc = intake.await_batch_key(runtime(), tenant(), scope, _fingerprint(reader, callback))
    except intake.KeyInFlight:
        raise ApiError(
            409,
            "A request with this Idempotency-Key is still being stored; retry it later",
            {"Retry-After": "1"},
        ) from None
    except PyMongoError as exc:
        raise intake.Unavailable from exc
    return _answer(doc, replayed=True)


def _dry_run(reader: Reader, requests: Iterator[Request], prune: bool) -> Response:
    """Read and check the whole upload as a real one is (so structural errors
    answer the same), planning its lines in groups as they stream in and holding
    the plan in a spool that moves to disk as it grows; then stream the plan."""
    limits = settings()
    rt, owner = runtime(), tenant()

    def valid() -> Iterator[Request]:
        for item in requests:
            if reader.errors or reader.count > limits.max_batch_requests:
                continue  # refused below: read on only to report every offending line
            yield item

    # The prune's names are every custom_id, known once the lines are planned.
    names = reader.names if prune else None
    lines = (
        planning.Line(item.custom_id, item.body_text, item.op, item.target, item.body)
        for item in valid()
    )
    spool = ndjson.Spool()
    digests: list[bytes] = []

    def planned() -> Iterator[dict[str, Any]]:
        for line, seen in planning.plan_seen(rt, owner, lines, prune_except=names):
            digests.append(planning.line_digest(line, seen))
            yield line

    with _upload_errors(spool.close, limits.max_batch_bytes):
        spool.extend(planned())
        _refuse_if_invalid(reader, limits.max_batch_requests)
    response = spool.response()
    if reader.apply:
        digest = planning.plan_digest(digests)
        preconditions.remember_plan(rt, owner, digest, digests)
        response.headers["ETag"] = f'"{digest}"'
    return response


@contextlib.contextmanager
def _upload_errors(undo: Callable[[], None], max_bytes: int) -> Iterator[None]:
    """Work on an upload as it is read: on any failure `undo` what it made, then
    answer a body over the limit with 413 and a store failure with 503 (nothing
    was accepted)."""
    try:
        yield
    except TooLarge:
        undo()
        raise ApiError(413, f"Request body is larger than {max_bytes} bytes") from None
    except PyMongoError as exc:
        undo()
        raise intake.Unavailable from exc
    except BaseException:
        undo()
        raise


def _check_plan(
    reader: Reader, requests: Iterator[Request], prune: bool, expected: str
) -> tuple[Iterator[Request], list[str | None]]:
    """Plan the upload now, as its dry run did, holding its requests in a spool;
    412 unless the plan's digest is `expected`. Returns the held requests and
    the version of the assistant each line's plan saw."""
    limits = settings()
    rt, owner = runtime(), tenant()
    held = Spool()
    seen: list[str | None] = []
    digests: list[bytes] = []
    lines: list[tuple[str | None, str, int]] = []

    def valid() -> Iterator[planning.Line]:
        for item in requests:
            if reader.errors or reader.count > limits.max_batch_requests:
                continue  # refused below: read on only to report every offending line
            held.add(item)
            yield planning.Line(item.custom_id, item.body_text, item.op, item.target, item.body)

    names = reader.names if prune else None
    with _upload_errors(held.close, limits.max_batch_bytes):
        for line, version in planning.plan_seen(rt, owner, valid(), prune_except=names):
            seen.append(version)
            digests.append(planning.line_digest(line, version))
            lines.append((line["custom_id"], line["action"], line["status_code"]))
        _refuse_if_invalid(reader, limits.max_batch_requests)
        digest = planning.plan_digest(digests)
        if digest != expected:
            raise preconditions.plan_changed(rt, owner, expected, digests, lines)

    def replay() -> Iterator[Request]:
        with held:
            yield from held

    return replay(), seen


def _fingerprint(reader: Reader, callback: str | None) -> str:
    """The upload's SHA-256 and the Callback-URL, as for single creates; an
    apply batch's mode and prune are part of what was asked."""
    asked = ""
    if reader.apply:
        asked = "apply+prune" if request.args.get("prune") == "true" else "apply"
    return str(reader.digest.hexdigest()) + idempotency.fingerprint(b"", callback) + asked


def _give_up(stager: batches.Stager, scope: str | None) -> None:
    """This upload was not accepted: free its key (if it held one) and its batch."""
    if scope is not None:
        intake.release_batch_key(stager.rt, scope, stager.batch["_id"])
    _abort_quietly(stager)


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
    response.headers["Location"] = url_for("batches.get_batch", batch_id=doc["_id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _settled(doc: dict[str, Any]) -> bool:
    return doc["status"] not in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """The batch; with `Prefer: wait=N`, once it is no longer in progress (or
    cancelling) or N seconds passed. `Retry-After` while it still is."""
    wait = parse_prefer(request.headers.getlist("Prefer"), settings().max_wait_seconds)
    db, owner = store(), tenant()
    if wait:
        read = functools.partial(batch_store.get, db, owner, batch_id)
        doc = listener().wait(batch_id, wait, read, _settled, g.get("stages"))
    else:
        doc = batch_store.get(db, owner, batch_id)
    if doc is None:
        raise not_found("No batch found")
    response = jsonify(public(doc))
    if not _settled(doc):
        response.headers["Retry-After"] = "1"
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


@bp.get("/batches")
@queries.own_query
def list_batches() -> Response:
    queries.allow_only(("limit", "order", "after", "before"))
    limit = queries.limit()
    order = queries.choice("order", ("asc", "desc"), "desc") or "desc"
    after, before = queries.text("after"), queries.text("before")
    page = batch_store.list_page(
        store(), tenant(), limit=limit, order=order, after=after, before=before
    )
    if isinstance(page, str):
        raise queries.unknown_cursor(page, after if page == "after" else before)
    docs, has_more = page
    return jsonify(queries.list_object([public(doc) for doc in docs], has_more))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    doc = batches.cancel(runtime(), tenant(), batch_id)
    if doc is None:
        raise not_found("No batch found")
    return jsonify(public(doc))


@bp.post("/batches/<batch_id>/retry")
@queries.own_query
def retry_batch(batch_id: str) -> Response:
    """A new batch of the lines that failed or were cancelled (202), stored and
    put in line as an upload is; 409 while the batch runs or if none is left."""
    queries.allow_only(("only",))
    only = queries.choice("only", ("cancelled", "failed"))
    return _answer(retry(batch_id, only), replayed=False)


def retry(batch_id: str, only: str | None) -> dict[str, Any]:
    """The request's tenant's new batch of the batch's failed or cancelled lines
    (also the console's retry button); 404, 409 and 429 as ApiErrors."""
    rt = runtime()
    _refuse_over_quota(rt)
    try:
        doc = batches.retry(rt, tenant(), batch_id, only=only, request_id=request_id())
    except batches.RetryRefused as exc:
        raise ApiError(409, str(exc)) from None
    except PyMongoError as exc:
        raise intake.Unavailable from exc
    if doc is None:
        raise not_found("No batch found")
    return doc


@bp.get("/batches/<batch_id>/results")
@queries.own_query
def batch_results(batch_id: str) -> Response:
    queries.allow_only(("status", "format"))
    status = queries.choice("status", ("succeeded", "failed", "cancelled"))
    as_input = queries.choice("format", ("input", "result"), "result") == "input"
    return results(batch_id, status, as_input=as_input)


def results(batch_id: str, status: str | None, *, as_input: bool) -> Response:
    """The request's tenant's batch results (of `status`, if given) as a stream of
    NDJSON lines, or as input lines to submit again; 404 for no such batch."""
    db = store()
    if batch_store.get(db, tenant(), batch_id) is None:
        raise not_found("No batch found")
    if as_input:
        return ndjson.stream(batches.iter_input(db, tenant(), batch_id, status))

    return ndjson.stream(_first_read(batches.iter_results(db, tenant(), batch_id, status)))


def _first_read(docs: Iterator[Any]) -> Iterator[Any]:
    """`docs` with its first page read now, in the handler: a store that is
    down or slow is a 503 (with Retry-After) before the 200 is sent, not a
    stream that breaks off at its start."""
    first = next(docs, None)

    def all_of() -> Iterator[Any]:
        if first is not None:
            yield first
            yield from docs

    return all_of()
