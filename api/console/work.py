"""The console's batches and jobs: read and changed through the same store and
service functions as `/v1/batches` and `/v1/jobs`, for the session's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from flask import Response, redirect, request, url_for

from api import batches as batch_routes
from api.console.blueprint import Refused, bp, page
from api.context import runtime, store, tenant
from api.errors import ApiError, not_found
from worker.domain.batches import public
from worker.domain.statuses import BatchStatus, JobStatus
from worker.services import batches
from worker.store import batches as batch_store
from worker.store import units

PAGE_SIZE = 20
FAILED_SHOWN = 100
RUNNING = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING)
NOTICES = {
    "retried": "Retry started: this batch holds the failed and cancelled lines of its parent.",
    "cancelled": "Cancelling: lines not yet started will not run.",
}


def view(doc: dict[str, Any]) -> dict[str, Any]:
    """The batch object with what a page shows of it: lines finished, running."""
    batch = public(doc)
    counts = batch["request_counts"]
    batch["done"] = counts["completed"] + counts["failed"] + counts["cancelled"]
    batch["running"] = batch["status"] in RUNNING
    return batch


def _cursor(name: str) -> str | None:
    value = request.args.get(name) or None
    if value is not None and len(value) > 255:
        raise Refused(422, f"{name} is too long")
    return value


def _batch_page() -> tuple[list[dict[str, Any]], bool, str | None]:
    after = _cursor("after")
    found = batch_store.list_page(store(), tenant(), limit=PAGE_SIZE, order="desc", after=after)
    if isinstance(found, str):
        raise Refused(404, "That page of batches no longer exists; start from the first page")
    docs, has_more = found
    return [view(doc) for doc in docs], has_more, after


@bp.get("/batches")
def batches_page() -> tuple[str, int]:
    shown, has_more, after = _batch_page()
    return page("batches.html", batches=shown, has_more=has_more, after=after)


# The page's live refresh (see static/console/console.js) swaps in this fragment.
@bp.get("/batches/rows")
def batches_live() -> Response:
    shown = _batch_page()[0]
    html, _ = page("_batch_rows.html", batches=shown)
    return _fragment(html, any(batch["running"] for batch in shown))


def _fragment(html: str, running: bool) -> Response:
    response = Response(html, mimetype="text/html")
    response.headers["X-Console-Running"] = "true" if running else "false"
    return response


def _batch(batch_id: str) -> dict[str, Any]:
    doc = batch_store.get(store(), tenant(), batch_id)
    if doc is None:
        raise not_found("No batch found")
    return view(doc)


def error_lines(body: Any) -> list[tuple[str, str]]:
    """A failed line's answer as (field path, message) pairs: a 422's detail
    entries by field, any other answer as its one message."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        shown = []
        for entry in detail:
            loc = list(entry.get("loc") or []) if isinstance(entry, dict) else []
            if loc and loc[0] == "body":
                loc = loc[1:]
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
            message = entry.get("msg") if isinstance(entry, dict) else entry
            shown.append((path.lstrip(".") or "(body)", str(message)))
        return shown
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return [("", str(body["error"].get("message")))]
    return [("", str(detail))]


def _failed_lines(batch_id: str) -> Iterator[dict[str, Any]]:
    for line in batches.iter_results(store(), tenant(), batch_id, JobStatus.FAILED):
        yield {**line, "errors": error_lines(line["body"])}


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str) -> tuple[str, int]:
    return _batch_html(batch_id, notice=NOTICES.get(request.args.get("notice", "")))


def _batch_html(
    batch_id: str, *, notice: str | None = None, error: str | None = None, code: int = 200
) -> tuple[str, int]:
    batch = _batch(batch_id)
    failed = list(islice(_failed_lines(batch_id), FAILED_SHOWN + 1))
    return page(
        "batch.html",
        code,
        batch=batch,
        failed=failed[:FAILED_SHOWN],
        more_failed=len(failed) > FAILED_SHOWN,
        notice=notice,
        error=error,
    )


@bp.get("/batches/<batch_id>/summary")
def batch_live(batch_id: str) -> Response:
    batch = _batch(batch_id)
    html, _ = page("_batch_summary.html", batch=batch)
    return _fragment(html, batch["running"])


@bp.get("/batches/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """The batch's results as the API streams them, as a download."""
    status = request.args.get("status") or None
    if status not in (None, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        raise Refused(422, "status should be succeeded, failed or cancelled")
    as_input = request.args.get("format") == "input"
    response = batch_routes.results(batch_id, status, as_input=as_input)
    kind = "input" if as_input else "results"
    name = f"{batch_id}-{status + '-' if status else ''}{kind}.jsonl"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@bp.post("/batches/<batch_id>/retry")
def retry_batch(batch_id: str) -> Response | tuple[str, int]:
    try:
        child = batch_routes.retry(batch_id, None)
    except ApiError as exc:
        if exc.status != 409:
            raise
        # Shown on the batch's own page, as the 409 says it.
        return _batch_html(batch_id, error=str(exc.detail), code=409)
    target = url_for("console.batch_page", batch_id=child["_id"], notice="retried")
    return redirect(target, 303)  # type: ignore[return-value]


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    if batches.cancel(runtime(), tenant(), batch_id) is None:
        raise not_found("No batch found")
    target = url_for("console.batch_page", batch_id=batch_id, notice="cancelled")
    return redirect(target, 303)  # type: ignore[return-value]


@bp.get("/jobs")
def jobs_page() -> tuple[str, int]:
    status = request.args.get("status") or None
    if status not in (None, *JobStatus):
        raise Refused(422, "status should be one of " + ", ".join(JobStatus))
    batch_id = _cursor("batch_id")
    after = _cursor("after")
    found = units.list_jobs(
        store(),
        tenant(),
        batch_id=batch_id,
        status=status,
        limit=PAGE_SIZE,
        after=after,
        order="asc" if batch_id else "desc",
    )
    if isinstance(found, str):
        raise Refused(404, "That page of jobs no longer exists; start from the first page")
    jobs, has_more = found
    return page(
        "jobs.html",
        jobs=jobs,
        has_more=has_more,
        status=status,
        batch_id=batch_id,
        statuses=list(JobStatus),
    )
