"""The shapes of stored documents, for the type checker."""

from __future__ import annotations

from typing import Any, NamedTuple, NotRequired, TypedDict

# A document as pymongo reads and writes it.
Doc = dict[str, Any]


class Item(TypedDict):
    """One request of a unit: its job id, the batch line's custom_id, the raw body."""

    id: str
    custom_id: str | None
    body: str


class Unit(TypedDict):
    """A work unit: one single create, or up to a chunk of a batch's requests,
    with their results in parallel arrays."""

    _id: str
    tenant: str
    seq: int
    status: str
    created_at: int
    started_at: int | None
    completed_at: int | None
    due_at: NotRequired[float]
    attempts: int
    callback_url: str | None
    request_id: str | None
    job_events: bool
    items: list[Item]
    codes: list[int | None]
    results: list[str | None]
    job_statuses: list[str]
    batch_id: NotRequired[str]
    lease: NotRequired[str]


class Tally(NamedTuple):
    """What a finished chunk adds to its batch's request counts."""

    completed: int
    failed: int
    cancelled: int


class Delivery(TypedDict):
    _id: str
    tenant: str
    event_type: str
    url: str
    body: str
    status: str
    attempts: list[Doc]
    next_attempt_at: float
    swept_at: float
    created_at: int
    expire_at: Any
    retry_from: NotRequired[int]
    lease: NotRequired[str]
    lease_expires: NotRequired[float]
