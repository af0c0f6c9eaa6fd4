"""Accepting a modify of an assistant: as a create is accepted (`intake`), plus
the assistant must exist for the tenant, else nothing is accepted (404).

Idempotency comes first: a key replayed with the same body returns its job
even if the assistant was deleted since; a new key for a missing assistant
is released, since only accepted requests are recorded.
"""

from __future__ import annotations

import logging
import time

from pymongo.errors import DuplicateKeyError, PyMongoError

from worker.domain.ids import new_id
from worker.domain.units import job_public, new_unit
from worker.queueing.routes import PROCESS_SINGLE
from worker.runtime import Runtime
from worker.services.intake import Accepted, KeyConflict, Unavailable
from worker.store import assistants, idempotency, units

log = logging.getLogger(__name__)


class NoSuchAssistant(LookupError):
    """The assistant to change does not exist for this tenant."""


def submit_modify(
    rt: Runtime,
    *,
    tenant: str,
    assistant_id: str,
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
            path = f"/v1/assistants/{assistant_id}"
            scope = idempotency.scope_id(tenant, "POST", path, idempotency_key)
            fp = idempotency.fingerprint(raw, callback_url)
            claim = idempotency.claim(
                rt.store, scope, fp, job_id, rt.settings.idempotency_window_seconds
            )
            if claim.conflict:
                raise KeyConflict
            if claim.replay:
                job = units.get_job(rt.store, tenant, claim.target_id)
                if job is not None:
                    return Accepted(job=job, replayed=True)
                # Claimed by a request that has not stored its job (see intake).
                job_id, adopted = claim.target_id, True
        if not assistants.exists(rt.store, tenant, assistant_id):
            if scope is not None and not adopted:
                idempotency.release(rt.store, scope, job_id)
            raise NoSuchAssistant(assistant_id)
        accepted_at = time.time()
        unit = new_unit(
            unit_id=job_id,
            tenant=tenant,
            items=[
                {
                    "id": job_id,
                    "custom_id": None,
                    "body": body_text,
                    "op": "modify",
                    "target": assistant_id,
                }
            ],
            now=int(accepted_at),
            accepted_at=accepted_at,
            callback_url=callback_url,
            request_id=request_id,
            resend_after=rt.settings.resend_after_seconds,
        )
        try:
            units.insert_unit(rt.store, unit)
        except DuplicateKeyError:
            stored = units.get_job(rt.store, tenant, job_id)
            if stored is None:
                raise Unavailable from None
            return Accepted(job=stored, replayed=adopted)
    except PyMongoError as exc:
        log.warning("could not store job: %s", exc)
        if scope is not None and not adopted:
            _release_quietly(rt, scope, job_id, tenant)
        raise Unavailable from exc
    try:
        rt.sender.send(PROCESS_SINGLE, job_id)
    except Exception:
        log.warning(
            "job %s stored but not sent; the reconciler will send it", job_id, exc_info=True
        )
    return Accepted(job=job_public(unit, 0), replayed=adopted)


def _release_quietly(rt: Runtime, scope: str, target: str, tenant: str) -> None:
    try:
        # A write whose answer was lost may still have stored the job: keep the key.
        if units.get_job(rt.store, tenant, target) is None:
            idempotency.release(rt.store, scope, target)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")
