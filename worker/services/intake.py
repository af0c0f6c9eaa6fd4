"""Accepting work: idempotency keys, one journaled store write, one send.

Once a job is stored it is accepted, even if the send to Redis fails: the
reconciler sends it. If it cannot be stored, nothing was accepted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pymongo.errors import DuplicateKeyError, PyMongoError

from worker.domain.documents import Doc, Unit
from worker.domain.ids import new_id
from worker.domain.units import job_public, new_unit
from worker.queueing.routes import PROCESS_SINGLE
from worker.runtime import Runtime
from worker.services.group_commit import GroupCommit
from worker.store import batches, idempotency, units
from worker.telemetry.stages import Stages

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The work could not be stored: nothing was accepted."""


class KeyConflict(Exception):
    """The Idempotency-Key was used with a different request."""


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
    job_id: str | None = None,
    stages: Stages | None = None,
) -> Accepted:
    """Store a create (with the creates that arrive meanwhile) and send it.

    `job_id` may be chosen by the caller, who can then listen for its finish
    before it is stored; a replayed Idempotency-Key answers another job.
    """
    stages = stages or Stages()
    job_id = job_id or new_id("job_")
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
                raise KeyConflict
            if claim.replay:
                job = units.get_job(rt.store, tenant, claim.target_id)
                if job is not None:
                    return Accepted(job=job, replayed=True)
                # The key's first request has not stored its job: not yet, or
                # never (the store failed it after the claim, or it died). Same
                # fingerprint, same request: store it under the id it claimed.
                # Whichever request stores it first, there is one job.
                job_id, adopted = claim.target_id, True
        stages.lap("idempotency")
        accepted_at = time.time()
        unit = new_unit(
            unit_id=job_id,
            tenant=tenant,
            items=[{"id": job_id, "custom_id": None, "body": body_text}],
            now=int(accepted_at),
            accepted_at=accepted_at,
            callback_url=callback_url,
            request_id=request_id,
            resend_after=rt.settings.resend_after_seconds,
        )
        try:
            _committer(rt).submit(unit)
            stages.lap("commit")
        except DuplicateKeyError:
            # Stored already: by the other request with this key, or by this
            # insert's own first try (a retried write whose answer was lost).
            stored = units.get_job(rt.store, tenant, job_id)
            if stored is None:
                raise Unavailable from None
            return Accepted(job=stored, replayed=adopted)
    except PyMongoError as exc:
        log.warning("could not store job: %s", exc)
        if scope is not None and not adopted:
            _release_quietly(rt, scope, job_id, tenant)
        raise Unavailable from exc
    return Accepted(job=job_public(unit, 0), replayed=adopted)


# One group commit per process runtime: creates that arrive while a group is
# being stored share the next write and the next message.
_committers: dict[int, GroupCommit[Unit]] = {}


def _committer(rt: Runtime) -> GroupCommit[Unit]:
    committer = _committers.get(id(rt))
    if committer is None:
        committer = _committers[id(rt)] = GroupCommit(lambda group: _store_and_send(rt, group))
    return committer


def _store_and_send(rt: Runtime, group: list[Unit]) -> list[BaseException | None]:
    """One journaled insert of the group's units, then one message for those that
    are new. A unit stored already (a retried key's) meets a DuplicateKeyError;
    a store error fails the whole group (nothing was accepted); once stored, a
    send that fails is left to the reconciler."""
    existing = units.insert_units(rt.store, group)
    fresh = [unit["_id"] for i, unit in enumerate(group) if i not in existing]
    if fresh:
        try:
            rt.sender.send(PROCESS_SINGLE, fresh)
        except Exception:
            log.warning(
                "%d jobs stored but not sent; the reconciler will send them",
                len(fresh),
                exc_info=True,
            )
    return [
        DuplicateKeyError("stored already") if i in existing else None for i in range(len(group))
    ]


def _release_quietly(rt: Runtime, scope: str, target: str, tenant: str) -> None:
    try:
        # A write that failed may still have been stored (its answer was lost):
        # then the key stays, and a retry with it finds that job.
        if units.get_job(rt.store, tenant, target) is None:
            idempotency.release(rt.store, scope, target)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")


def claim_batch_key(
    rt: Runtime, *, tenant: str, key: str, fingerprint: str, batch_id: str
) -> str | None:
    """Reserve an Idempotency-Key for a staged batch; returns the batch to replay
    instead, if the key already holds one. Raises KeyConflict for another upload."""
    scope = idempotency.scope_id(tenant, "POST", "/v1/batches", key)
    claim = idempotency.claim(
        rt.store, scope, fingerprint, batch_id, rt.settings.idempotency_window_seconds
    )
    if claim.conflict:
        raise KeyConflict
    if claim.replay and not _take_over(rt, scope, claim.target_id, batch_id):
        return claim.target_id
    return None


def _take_over(rt: Runtime, scope: str, claimed: str, batch_id: str) -> bool:
    """Whether this request takes over a key whose batch was never stored.

    A key's first request stages its whole batch before it claims the key, so
    a claimed batch that does not exist at all was given up: its request failed
    and removed it, or the reconciler removed it, half-stored. The key then
    belongs to this same request (the fingerprint matched). A batch still
    `validating` may yet be committed: that one is replayed (503 until then).
    """
    if batches.exists(rt.store, claimed):
        return False
    return idempotency.retarget(rt.store, scope, claimed, batch_id)
