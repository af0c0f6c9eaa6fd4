"""Answering with a job: 202 while it runs, or, after a wait, as the origin API would."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, url_for

from worker.domain.documents import Doc
from worker.domain.units import is_finished


def job_headers(job: Doc) -> dict[str, str]:
    headers = {"Location": url_for("jobs.get_job", job_id=job["id"])}
    if not is_finished(job):
        headers["Retry-After"] = "1"
    return headers


def accepted(job: Doc, *, replayed: bool, waited: int | None, preferred: bool = True) -> Response:
    """The answer to a create or modify: the result if the job finished in the wait,
    else 202. `preferred` is false for a default wait the client did not ask for."""
    body: Any = job
    status = 202
    if waited is not None and job["result"] is not None:
        body = job["result"]["body"]
        status = job["result"]["status_code"]
    response = jsonify(body)
    response.status_code = status
    response.headers.update(job_headers(job))
    if waited is not None and preferred:
        response.headers["Preference-Applied"] = f"wait={waited}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
