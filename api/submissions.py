"""Accepting work: idempotency, one store write, one send.

Once the job is stored the answer is 202 even if the send to Redis fails:
the reconciler sends it. If it cannot be stored, nothing was accepted (503).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pymongo.errors import DuplicateKeyError, PyMongoError

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
    adopted = False
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
                job = jobs.get_job(rt.store, tenant, claim.target_id)
                if job is not None:
                    return Accepted(job=job, replayed=True)
                # The key's first request has not stored its job: not yet, or
                # never (the store failed it after the claim, or it died). Same
                # fingerprint, same request: store it under the id it claimed.
                # Whichever request stores it first, there is one job.
                job_id, adopted = claim.target_id, True
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
        try:
            jobs.insert_unit(rt.store, unit)
        except DuplicateKeyError:
            # Stored already: by the other request with this key, or by this
            # insert's own first try (a retried write whose answer was lost).
            stored = jobs.get_job(rt.store, tenant, job_id)
            if stored is None:
                raise UNAVAILABLE from None
            return Accepted(job=stored, replayed=adopted)
    except PyMongoError as exc:
        log.warning("could not store job: %s", exc)
        if scope is not None and not adopted:
            _release_quietly(rt, scope, job_id, tenant)
        raise UNAVAILABLE from exc
    try:
        tasks.send_single(job_id)
    except Exception:
        log.warning(
            "job %s stored but not sent; the reconciler will send it", job_id, exc_info=True
        )
    return Accepted(job=jobs.job_public(unit, 0), replayed=adopted)


def _release_quietly(rt: Runtime, scope: str, target: str, tenant: str) -> None:
    try:
        # A write that failed may still have been stored (its answer was lost):
        # then the key stays, and a retry with it finds that job.
        if jobs.get_job(rt.store, tenant, target) is None:
            idempotency.release(rt.store, scope, target)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")
