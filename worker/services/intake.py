"""Accepting work: idempotency keys, one journaled store write, one send.

Once a job is stored it is accepted, even if the send to Redis fails: the
reconciler sends it. If it cannot be stored, nothing was accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymongo.errors import DuplicateKeyError, PyMongoError

from worker.domain.documents import Doc, Item, Unit
from worker.domain.ids import new_id
from worker.domain.units import group_key, job_public, merged, new_unit
from worker.queueing.routes import PROCESS_SINGLE
from worker.runtime import Runtime
from worker.services import lanes
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
    target: str | None = None,
    op: str = "modify",
    precondition: Callable[[], None] | None = None,
) -> Accepted:
    """Store a create, or with a `target` a change of that assistant (`op`: a
    modify, or a delete), with the requests that arrive meanwhile, and send it.

    `job_id` may be chosen by the caller, who can then listen for its finish
    before it is stored; a replayed Idempotency-Key answers another job. The
    key is looked at first; then `precondition` may refuse the request (by
    raising), which releases a key this request claimed: nothing was accepted.
    """
    stages = stages or Stages()
    job_id = job_id or new_id("job_")
    path = "/v1/assistants" if target is None else f"/v1/assistants/{target}"
    scope = None
    adopted = False
    try:
        if idempotency_key is not None:
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
                # The key's first request has not stored its job: not yet, or
                # never (the store failed it after the claim, or it died). Same
                # fingerprint, same request: store it under the id it claimed.
                # Whichever request stores it first, there is one job.
                job_id, adopted = claim.target_id, True
        if precondition is not None:
            try:
                precondition()
            except Exception:
                if scope is not None and not adopted:
                    idempotency.release(rt.store, scope, job_id)
                raise
        stages.lap("idempotency")
        accepted_at = time.time()
        item: Item = {"id": job_id, "custom_id": None, "body": body_text}
        if target is not None:
            item["op"], item["target"] = op, target
        unit = new_unit(
            unit_id=job_id,
            tenant=tenant,
            items=[item],
            now=int(accepted_at),
            accepted_at=accepted_at,
            callback_url=callback_url,
            request_id=request_id,
            resend_after=rt.settings.resend_after_seconds,
        )
        try:
            # A request with an Idempotency-Key keeps a unit of its own, whose _id
            # (its job id) makes two requests with the key store one job; so
            # does a modify, whose unit names its target.
            _committer(rt).submit(Pending(unit, alone=scope is not None or target is not None))
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


@dataclass(frozen=True)
class Pending:
    """A request's unit waiting for its group's write; unless `alone`, it may be
    merged with others of its tenant into one unit (`units.merged`)."""

    unit: Unit
    alone: bool


def _committer(rt: Runtime) -> GroupCommit[Pending]:
    """The runtime's group commit: creates that arrive while a group is being
    stored share the next write and the next message."""
    return rt.shared("intake.group_commit", lambda: GroupCommit(lambda g: _store_and_send(rt, g)))


def _documents(group: list[Pending]) -> tuple[list[Unit], list[int]]:
    """The units to store for a group of requests, and which of them holds each
    request: the lone creates of one tenant (and callback) share one unit."""
    docs: list[Unit] = []
    holder: list[int] = [0] * len(group)
    shared: dict[tuple[str, str | None, bool], list[int]] = {}
    for i, pending in enumerate(group):
        if pending.alone:
            holder[i] = len(docs)
            docs.append(pending.unit)
        else:
            shared.setdefault(group_key(pending.unit), []).append(i)
    for members in shared.values():
        for i in members:
            holder[i] = len(docs)
        units_of = [group[i].unit for i in members]
        docs.append(units_of[0] if len(members) == 1 else merged(units_of))
    return docs, holder


def _store_and_send(rt: Runtime, group: list[Pending]) -> list[BaseException | None]:
    """One journaled insert of the group's units, then one message for those that
    are new. A unit stored already (a retried key's, or this write's own first
    try whose answer was lost) meets a DuplicateKeyError; a store error fails
    the whole group (nothing was accepted); once stored, a send that fails is
    left to the reconciler."""
    docs, holder = _documents(group)
    existing = units.insert_units(rt.store, docs)
    fresh = [unit for i, unit in enumerate(docs) if i not in existing]
    if fresh:
        # One message per lane: a tenant with many creates waiting goes behind
        # the others (lanes.py).
        for priority, ids in lanes.assign(rt, fresh).items():
            try:
                rt.sender.send(PROCESS_SINGLE, ids, priority=priority)
            except Exception:
                log.warning(
                    "%d units stored but not sent; the reconciler will send them",
                    len(ids),
                    exc_info=True,
                )
    return [DuplicateKeyError("stored already") if h in existing else None for h in holder]


def _release_quietly(rt: Runtime, scope: str, target: str, tenant: str) -> None:
    try:
        # A write that failed may still have been stored (its answer was lost):
        # then the key stays, and a retry with it finds that job.
        if units.get_job(rt.store, tenant, target) is None:
            idempotency.release(rt.store, scope, target)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")


_POLL_SECONDS = 0.1


class KeyInFlight(Exception):
    """The Idempotency-Key's first request is still being stored."""


def batch_key_scope(tenant: str, key: str) -> str:
    return idempotency.scope_id(tenant, "POST", "/v1/batches", key)


def hold_batch_key(rt: Runtime, scope: str, batch_id: str) -> str | None:
    """Hold an Idempotency-Key for the batch this request is about to stage,
    before it reads the upload; None when it holds it, else the batch that does.

    The batch is stored (`validating`) before its key is held, so a held key
    whose batch does not exist was given up: its request failed and removed
    it, or died and the reconciler removed it. That key is taken over by this
    request, whatever its upload, as nothing was accepted under it.
    """
    window = rt.settings.idempotency_window_seconds
    while True:
        holder = idempotency.hold(rt.store, scope, batch_id, window)
        if holder is None:
            return None
        if batches.exists(rt.store, holder["target"]):
            return str(holder["target"])
        if idempotency.take_over(rt.store, scope, holder["target"], batch_id, window):
            return None


def settle_batch_key(rt: Runtime, scope: str, batch_id: str, fingerprint: str) -> None:
    """Record the held key's fingerprint once the upload is read, before its batch
    is committed; Unavailable if the key was taken over in between."""
    if not idempotency.settle(rt.store, scope, batch_id, fingerprint):
        raise Unavailable


def await_batch_key(rt: Runtime, tenant: str, scope: str, fingerprint: str) -> Doc:
    """The batch to replay for a repeated upload, once the key's first request has
    stored it. KeyConflict for another upload; KeyInFlight if the first is still
    at it after MAX_WAIT_SECONDS (the longest any request waits on other work);
    Unavailable if the first gave up (nothing was accepted, a retry holds the key)."""
    deadline = time.monotonic() + rt.settings.max_wait_seconds
    while True:
        holder = idempotency.get(rt.store, scope)
        if holder is None:
            raise Unavailable
        held = holder["fingerprint"]
        if held is not None and held != fingerprint:
            raise KeyConflict
        if held == fingerprint:
            doc = batches.get(rt.store, tenant, holder["target"])
            if doc is not None:
                return doc
        if not batches.exists(rt.store, holder["target"]):
            raise Unavailable
        if time.monotonic() > deadline:
            raise KeyInFlight
        time.sleep(_POLL_SECONDS)


def release_batch_key(rt: Runtime, scope: str, batch_id: str) -> None:
    """Forget a key held for a batch that was not accepted after all."""
    try:
        idempotency.release(rt.store, scope, batch_id)
    except PyMongoError:
        log.warning("could not release idempotency key; it expires with its window")
