"""Accepting work: idempotency, one store write, one send.

Once the job is stored the answer is 202 even if the send to Redis fails:
the reconciler sends it. If it cannot be stored, nothing was accepted (503).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pymongo.errors import PyMongoError

from api.errors import ApiError
from worker import idempotency, jobs, tasks
from worker.ids import new_id
from worker.runtime import Runtime
from worker.store import Doc

log = logging.getLogger(__name__)

UNAVAILABLE = ApiError(
    503, "The job could not be stored; nothing was accepted", {"Retry-After": "2"}
)


@dataclass(frozen=True)
class Accepted:
    job: Doc
    replayed: bool


def submit_single(
    rt: Runtime,
    *,
    tenant: str,
    body_text: str,
    raw: bytes,
    callback_url: str | None,
    idempotency_key: str | None,
    request_id: str | None,
) -> Accepted:
    job_id = new_id("job_")
    scope = None
    try:
        if idempotency_key is not None:
            scope = idempotency.scope_id(tenant, "POST", "/v1/assistants", idempotency_key)
            fp = idempotency.fingerprint(raw, callback_url)
            claim = idempotency.claim(
                rt.store, scope, fp, job_id, rt.settings.idempotency_window_seconds
            )
            if claim.conflict:
                raise ApiError(409, "Idempotency-Key was used with a different request body")
            if claim.replay:
                return Accepted(job=_replayed_job(rt, tenant, claim.target_id), replayed=True)
        now = int(time.time())
        unit = jobs.new_unit(
            unit_id=job_id,
            tenant=tenant,
            items=[{"id": job_id, "custom_id": None, "body": body_text}],
            now=now,
            callback_url=callback_url,
            request_id=request_id,
            resend_after=rt.settings.resend_after_seconds,
        )
        jobs.insert_unit(rt.store, unit)
    except PyMongoError as exc:
        log.warning("could not store job: %s", exc)
        if scope is not None:
            _release_quietly(rt, scope, job_id)
        raise UNAVAILABLE from exc
    try:
        tasks.send_single(job_id)
    except Exception:
        log.warning(
            "job %s stored but not sent; the reconciler will send it", job_id, exc_info=True
        )
    return Accepted(job=jobs.job_public(unit, 0), replayed=False)


def _replayed_job(rt: Runtime, tenant: str, job_id: str) -> Doc:
    # A concurrent first request may hold the key but not yet have stored its
    # job: give it a moment rather than create a second job.
    for _ in range(50):
        job = jobs.get_job(rt.store, tenant, job_id)
        if job is not None:
            return job
        time.sleep(0.1)
    raise UNAVAILABLE


def _release_quietly(rt: Runtime, scope: str, target: str) -> None:
    try:
        idempotency.release(rt.store, scope, target)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")
