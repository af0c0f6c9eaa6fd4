"""Accepting a change of an assistant (a modify, or a delete queued behind earlier
changes): as a create is accepted (`intake`), plus the assistant must exist for
the tenant, else nothing is accepted (404).

Idempotency comes first: a key replayed with the same body returns its job
even if the assistant was deleted since; a new key for a missing assistant
is released, since only accepted requests are recorded.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.runtime import Runtime
from worker.services.intake import Accepted, submit_single
from worker.store import assistants
from worker.telemetry.stages import Stages


class NoSuchAssistant(LookupError):
    """The assistant to change does not exist for this tenant."""


def _must_exist(rt: Runtime, tenant: str, assistant_id: str) -> Callable[[], None]:
    """The precondition of a change: the tenant has the assistant (else 404)."""

    def exists() -> None:
        if not assistants.exists(rt.store, tenant, assistant_id):
            raise NoSuchAssistant(assistant_id)

    return exists


def submit_delete(
    rt: Runtime, *, tenant: str, assistant_id: str, request_id: str | None
) -> Accepted:
    """A delete queued behind the assistant's open changes, as a modify is, so it
    applies after them in acceptance order (no body, no key, no callback)."""
    return submit_single(
        rt,
        tenant=tenant,
        body_text="{}",
        raw=b"{}",
        callback_url=None,
        idempotency_key=None,
        request_id=request_id,
        target=assistant_id,
        op="delete",
        precondition=_must_exist(rt, tenant, assistant_id),
    )


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
    stages: Stages | None = None,
) -> Accepted:
    return submit_single(
        rt,
        tenant=tenant,
        body_text=body_text,
        raw=raw,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
        request_id=request_id,
        stages=stages,
        target=assistant_id,
        precondition=_must_exist(rt, tenant, assistant_id),
    )
